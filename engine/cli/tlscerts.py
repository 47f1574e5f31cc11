"""``qatmig tls-certs DIR``: test x509 credentials for --tls-creds, made with openssl."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._common import add_json_flag, print_json

EPILOG = """\
examples:
  qatmig tls-certs creds                     # CA + server + client files in creds/
  qatmig tls-certs other --ca creds-ca        # another directory signed by the same CA
  qatmig tls-certs creds --server-name dst.example --client-subject '/O=Example/CN=src'

DIR is laid out as QEMU's `-object tls-creds-x509,dir=DIR`: ca-cert.pem, server-cert.pem,
server-key.pem, client-cert.pem, client-key.pem; usable as --tls-creds DIR by `qatmig listen`
and `qatmig send` and as dir= of a real QEMU's tls-creds-x509 object (endpoint=server on the
destination, endpoint=client on the source). The CA's own key stays in DIR-ca/ (or --ca),
never in DIR. For tests and trials: unencrypted EC keys, valid for --days days. The client
certificate's DN as --tls-authz matches it is printed (JSON: client_dn).
"""


def _cmd(args: argparse.Namespace) -> int:
    from ..tlscerts import CertificateAuthority, make_ca, make_creds, subject_to_dn

    ca_dir = Path(args.ca) if args.ca else Path(str(args.dir).rstrip("/") + "-ca")
    if (ca_dir / "ca-key.pem").is_file() and (ca_dir / "ca-cert.pem").is_file():
        ca = CertificateAuthority(ca_dir / "ca-cert.pem", ca_dir / "ca-key.pem")
    else:
        ca = make_ca(ca_dir, days=args.days)
    names = tuple(args.server_name) if args.server_name else ("localhost", "127.0.0.1", "::1")
    d = make_creds(args.dir, ca, server_names=names, client_subject=args.client_subject,
                   client=not args.no_client, days=args.days)
    dn = None if args.no_client else subject_to_dn(args.client_subject)
    if args.json:
        print_json({"dir": str(d), "ca_dir": str(ca_dir), "server_names": list(names),
                    "client_dn": dn})
    else:
        print(f"{d}: ca-cert.pem, server-cert.pem/-key.pem for {', '.join(names)}"
              + ("" if dn is None else f", client-cert.pem/-key.pem for {dn}")
              + f" (CA key in {ca_dir})", file=sys.stdout)
    return 0


def register(subparsers: Any) -> None:
    from ..tlscerts import CLIENT_SUBJECT

    p = subparsers.add_parser(
        "tls-certs", help="make test x509 credentials for --tls-creds (openssl)",
        description="Make a CA and server/client certificates in DIR, laid out as QEMU's "
        "tls-creds-x509 directory.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="the credentials directory to create")
    p.add_argument("--ca", metavar="CADIR", default=None,
                   help="sign with the CA in CADIR (ca-cert.pem, ca-key.pem; made there if "
                   "missing; default DIR-ca)")
    p.add_argument("--server-name", action="append", metavar="NAME", default=None,
                   help="a DNS name or IP address the server certificate is valid for "
                   "(repeat; default localhost, 127.0.0.1, ::1)")
    p.add_argument("--client-subject", default=CLIENT_SUBJECT, metavar="SUBJ",
                   help=f"the client certificate's subject, openssl -subj form (default "
                   f"'{CLIENT_SUBJECT}')")
    p.add_argument("--no-client", action="store_true", help="no client certificate")
    p.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    add_json_flag(p)
    p.set_defaults(func=_cmd)
