"""Make x509 test credentials with the ``openssl`` command, laid out as QEMU's
``tls-creds-x509`` directory (what ``tls-creds`` points at).

The certificates carry what QEMU's own sanity checks (crypto/tlscredsx509.c) want: a CA with
``basicConstraints CA:TRUE`` and ``keyCertSign``; end certificates with ``CA:FALSE``,
``digitalSignature,keyEncipherment`` and the right extended key usage (``serverAuth`` /
``clientAuth``); the server's subjectAltName lists the names a source may check
(``tls-hostname``, or the host of the migration URI). Keys are EC P-256 (fast to make).
For tests and trials only: the keys are unencrypted and valid for ``days`` days.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ParameterError
from .tls import CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY

#: Default subjects, in openssl's ``-subj`` form (most general first).
CA_SUBJECT = "/O=qatmig test/CN=qatmig test CA"
SERVER_SUBJECT = "/O=qatmig test/CN=localhost"
CLIENT_SUBJECT = "/C=GB/O=qatmig test/CN=qatmig source"
#: Names the default server certificate is valid for.
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


def subject_to_dn(subject: str) -> str:
    """openssl's ``/C=GB/O=x/CN=y`` as the DN tls-authz matches (gnutls: ``C=GB,O=x,CN=y``)."""
    from .tls import distinguished_name

    short = {"CN": "commonName", "C": "countryName", "L": "localityName",
             "ST": "stateOrProvinceName", "O": "organizationName",
             "OU": "organizationalUnitName"}
    rdns = [((short.get(k, k), v),) for k, _, v in
            (part.partition("=") for part in subject.strip("/").split("/"))]
    return distinguished_name(rdns)


def _openssl(*args: str, cwd: str | os.PathLike[str] | None = None) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise ParameterError("the openssl command is needed to make TLS credentials "
                             "(apt-get install openssl)")
    r = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise ParameterError(f"openssl {args[0]} failed: {r.stderr.strip()[-500:]}")


def _directory(directory: str | os.PathLike[str]) -> Path:
    """``directory``, created if missing; a ParameterError naming it when it cannot be."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError(f"cannot create the credentials directory {d}: "
                             f"{exc.strerror or exc}") from None
    return d


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path))
    path.chmod(0o600)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA made by :func:`make_ca`: ``cert`` (what goes to ca-cert.pem) and its ``key``."""

    cert: Path
    key: Path


def make_ca(directory: str | os.PathLike[str], subject: str = CA_SUBJECT,
            days: int = 2) -> CertificateAuthority:
    """A self-signed CA in ``directory`` (ca-cert.pem, ca-key.pem)."""
    d = _directory(directory)
    key, cert = d / "ca-key.pem", d / CA_CERT
    _key(key)
    with tempfile.TemporaryDirectory() as tmp:
        ext = Path(tmp) / "ca.ext"
        ext.write_text("[req]\ndistinguished_name=dn\n[dn]\n[v3]\n"
                       "basicConstraints=critical,CA:TRUE\n"
                       "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n")
        _openssl("req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days",
                 str(days), "-subj", subject, "-config", str(ext), "-extensions", "v3",
                 "-sha256")
    return CertificateAuthority(cert, key)


def make_cert(ca: CertificateAuthority, cert: str | os.PathLike[str],
              key: str | os.PathLike[str], subject: str, *, server_names: Sequence[str] = (),
              client: bool = False, days: int = 2) -> None:
    """A certificate for ``subject`` signed by ``ca``: a server certificate valid for
    ``server_names`` (DNS names or IP addresses), or a client certificate (``client``)."""
    cert, key = Path(cert), Path(key)
    _key(key)
    lines = ["[v3]", "basicConstraints=critical,CA:FALSE",
             "keyUsage=digitalSignature,keyEncipherment",
             f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}",
             "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid"]
    if server_names:
        alt = []
        for name in server_names:
            is_ip = name.replace(".", "").isdigit() or ":" in name
            alt.append(f"{'IP' if is_ip else 'DNS'}:{name}")
        lines.append("subjectAltName=" + ",".join(alt))
    with tempfile.TemporaryDirectory() as tmp:
        ext = Path(tmp) / "cert.ext"
        ext.write_text("\n".join(lines) + "\n")
        csr = Path(tmp) / "cert.csr"
        _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", subject)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
                 "-CAcreateserial", "-CAserial", str(Path(tmp) / "ca.srl"), "-out", str(cert),
                 "-days", str(days), "-sha256", "-extfile", str(ext), "-extensions", "v3")


def make_creds(directory: str | os.PathLike[str], ca: CertificateAuthority, *,
               server: bool = True, client: bool = True,
               server_subject: str = SERVER_SUBJECT,
               server_names: Sequence[str] = SERVER_NAMES,
               client_subject: str = CLIENT_SUBJECT, days: int = 2) -> Path:
    """A ``tls-creds`` directory signed by ``ca``: ca-cert.pem plus server-cert/-key.pem
    (``server``) and client-cert/-key.pem (``client``). Returns the directory."""
    d = _directory(directory)
    try:
        shutil.copyfile(ca.cert, d / CA_CERT)
    except OSError as exc:
        raise ParameterError(f"cannot write {d / CA_CERT}: {exc.strerror or exc}") from None
    if server:
        make_cert(ca, d / SERVER_CERT, d / SERVER_KEY, server_subject,
                  server_names=server_names, days=days)
    if client:
        make_cert(ca, d / CLIENT_CERT, d / CLIENT_KEY, client_subject, client=True, days=days)
    return d


@dataclass(frozen=True)
class TLSTestCreds:
    """The credentials a TLS test needs, all made at once by :func:`make_test_creds`.

    ``good``: all five files, one CA (destination and source both use it); ``wrong_ca``: the
    same layout signed by another CA; ``no_client``: ``good``'s CA and server files, no client
    certificate; ``other_client``: ``good``'s CA with a client certificate of another DN.
    ``client_dn`` / ``other_dn``: the client DNs as tls-authz matches them.
    """

    good: Path
    wrong_ca: Path
    no_client: Path
    other_client: Path
    client_dn: str
    other_dn: str


OTHER_CLIENT_SUBJECT = "/C=GB/O=someone else/CN=other source"


def make_test_creds(root: str | os.PathLike[str]) -> TLSTestCreds:
    """Make :class:`TLSTestCreds` under ``root`` (about 10 openssl runs, well under a second)."""
    r = Path(root)
    ca = make_ca(r / "ca")
    other = make_ca(r / "other-ca", subject="/O=elsewhere/CN=another CA")
    return TLSTestCreds(
        good=make_creds(r / "good", ca),
        wrong_ca=make_creds(r / "wrong-ca", other),
        no_client=make_creds(r / "no-client", ca, client=False),
        other_client=make_creds(r / "other-client", ca, client_subject=OTHER_CLIENT_SUBJECT),
        client_dn=subject_to_dn(CLIENT_SUBJECT),
        other_dn=subject_to_dn(OTHER_CLIENT_SUBJECT),
    )


__all__ = [
    "CA_SUBJECT",
    "CLIENT_SUBJECT",
    "OTHER_CLIENT_SUBJECT",
    "SERVER_NAMES",
    "SERVER_SUBJECT",
    "CertificateAuthority",
    "TLSTestCreds",
    "make_ca",
    "make_cert",
    "make_creds",
    "make_test_creds",
    "subject_to_dn",
]
