"""TLS (issue 13, item 4): QEMU's tls-creds (x509) on the main and every multifd channel,
tls-hostname and tls-authz, engine <-> engine; refusals before any RAM moves, with a clear
message at both ends. Certificates come from the plugin's ``tls_creds`` fixture (openssl, at
test time). Real QEMU peers: tests/test_tls_qemu.py."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from qatmig_engine.api import send
from qatmig_engine.destination import Destination
from qatmig_engine.errors import ParameterError
from qatmig_engine.guest import GuestMemory, RAMBlock, fill_deterministic
from qatmig_engine.params import MigrationParameters
from qatmig_engine.qemu.interop import QATMIG, free_port
from qatmig_engine.stats import MigrationStats
from qatmig_engine.tls import distinguished_name

SIZE = 4 << 20


def _guest(size: int = SIZE, fill: bool = True) -> GuestMemory:
    g = GuestMemory([RAMBlock.anonymous("pc.ram", size)])
    if fill:
        fill_deterministic(g.blocks[0])
    return g


def _migrate(src: dict, dst: dict, *, method: str = "zstd", channels: int = 3,
             dialect: str = "qemu-10.0", return_path: bool = False,
             timeout: float = 20) -> tuple[MigrationStats, MigrationStats, GuestMemory,
                                           GuestMemory]:
    """One in-process migration: ``src``/``dst`` are the TLS parameters of each end."""
    common = dict(multifd_compression=method, multifd_channels=channels, dialect=dialect)
    dst_guest = _guest(fill=False)
    d = Destination(dst_guest, MigrationParameters(**common, **dst), ramblock="pc.ram",
                    timeout=timeout, fresh_ram=True)
    box: dict = {}
    address = d.address
    t = threading.Thread(target=lambda: box.update(st=d.run()), daemon=True)
    t.start()
    src_guest = _guest()
    st = send(*address, params=MigrationParameters(**common, return_path=return_path, **src),
              guest=src_guest, timeout=timeout)
    t.join(timeout + 10)
    assert not t.is_alive(), "destination did not finish"
    return st, box["st"], src_guest, dst_guest


# ------------------------------------------------------------------ pieces

def test_dn_is_printed_as_openssl_rfc2253_prints_it(tls_creds):
    """tls-authz matches the DN as gnutls prints it (certificate order, RFC 4514 escaping);
    openssl's -nameopt RFC2253,-dn_rev prints the same (QEMU's own check: test_tls_qemu.py)."""
    import ssl

    cert = ssl._ssl._test_decode_cert(str(tls_creds.good / "client-cert.pem"))  # type: ignore
    ours = distinguished_name(cert["subject"])
    theirs = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253,-dn_rev", "-in",
         str(tls_creds.good / "client-cert.pem")], capture_output=True, text=True, check=True,
    ).stdout.strip().removeprefix("subject=")
    assert ours == theirs == tls_creds.client_dn == "C=GB,O=qatmig test,CN=qatmig source"


def test_dn_escaping():
    subject = ((("countryName", "GB"),), (("organizationName", "A, B+C"),),
               (("commonName", " x#"),), (("organizationalUnitName", "u"), ("userId", "7")))
    assert distinguished_name(subject) == r"C=GB,O=A\, B\+C,CN=\ x#,OU=u+UID=7"


def test_tls_parameters_are_checked():
    p = MigrationParameters(tls_creds="/x", tls_authz="CN=a")  # type: ignore[arg-type]
    assert p.tls_authz == ("CN=a",)
    with pytest.raises(ParameterError, match="tls-authz is set but tls-creds is not"):
        MigrationParameters(tls_authz=("CN=a",))
    with pytest.raises(ParameterError, match="tls-hostname is set but tls-creds is not"):
        MigrationParameters(tls_hostname="h")
    with pytest.raises(ParameterError, match="distinguished names"):
        MigrationParameters(tls_creds="/x", tls_authz=("",))
    assert MigrationParameters(tls_creds="").tls_creds is None


def test_missing_creds_file_fails_before_connecting(tls_creds, tmp_path):
    (tmp_path / "ca-cert.pem").write_bytes((tls_creds.good / "ca-cert.pem").read_bytes())
    # A source needs only ca-cert.pem (a client certificate is optional, as in QEMU) ...
    (tmp_path / "client-cert.pem").write_bytes(b"")
    st, _d, _s, _g = _migrate({"tls_creds": str(tmp_path)},
                              {"tls_creds": str(tls_creds.good)}, timeout=3)
    assert st.status == "failed" and st.error_type == "ParameterError"
    assert "client-key.pem is missing" in st.error and "tls-creds-x509" in st.error
    # ... a destination its certificate and key.
    _st, dst, _s, _g = _migrate({"tls_creds": str(tls_creds.good)},
                                {"tls_creds": str(tmp_path)}, timeout=3)
    assert dst.status == "failed" and "server-cert.pem is missing" in dst.error


# ------------------------------------------------------------------ engine <-> engine

@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
@pytest.mark.parametrize("dialect", ["qemu-7.2", "qemu-10.0"])
def test_engine_to_engine_over_tls(tls_creds, method, dialect):
    creds = {"tls_creds": str(tls_creds.good)}
    st, dst, src_guest, dst_guest = _migrate(
        creds, {**creds, "tls_authz": (tls_creds.client_dn,)}, method=method, dialect=dialect)
    assert (st.status, dst.status) == ("completed", "completed"), (st.error, dst.error)
    assert bytes(dst_guest.blocks[0].view) == bytes(src_guest.blocks[0].view)
    assert st.tls and dst.tls and dst.tls_peer_dn == tls_creds.client_dn
    assert dst.destination.normal_pages > 0


def test_engine_to_engine_qatzip_over_tls(tls_creds):
    creds = {"tls_creds": str(tls_creds.good)}
    st, dst, src_guest, dst_guest = _migrate(creds, creds, method="qatzip", channels=2)
    assert (st.status, dst.status) == ("completed", "completed"), (st.error, dst.error)
    assert bytes(dst_guest.blocks[0].view) == bytes(src_guest.blocks[0].view)


def test_return_path_over_tls(tls_creds):
    creds = {"tls_creds": str(tls_creds.good)}
    st, dst, src_guest, dst_guest = _migrate(creds, creds, return_path=True)
    assert (st.status, dst.status) == ("completed", "completed"), (st.error, dst.error)
    assert st.return_path_shut == 0 and dst.return_path_shut == 0
    assert bytes(dst_guest.blocks[0].view) == bytes(src_guest.blocks[0].view)


class _TLSEndRecorder:
    """A TLS destination that reads every connection to its end and records how it ended:
    ``close_notify`` (the peer's alert), ``no close_notify`` (TCP closed without it),
    ``reset`` or ``timeout``; and each connection's first four plaintext bytes."""

    def __init__(self, creds: str, timeout: float) -> None:
        import socket

        from qatmig_engine.tls import TLSSettings

        self.ctx = TLSSettings(creds).server_context()
        self.timeout = timeout
        self.ends: list[dict] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.address = self.server.getsockname()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            end: dict = {"start": b"", "end": None}
            self.ends.append(end)
            t = threading.Thread(target=self._read, args=(conn, end), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, conn, end: dict) -> None:  # type: ignore[no-untyped-def]
        import ssl

        conn.settimeout(self.timeout)
        try:
            # suppress_ragged_eofs=False: a TCP end without close_notify raises SSLEOFError
            # instead of reading as b"" (what a clean close_notify reads as)
            with self.ctx.wrap_socket(conn, server_side=True,
                                      suppress_ragged_eofs=False) as sock:
                while True:
                    data = sock.recv(1 << 20)
                    if not data:
                        end["end"] = "close_notify"
                        try:
                            sock.unwrap()  # answer it, as a QEMU destination does
                        except (OSError, ValueError):
                            pass  # the source may be gone already: the alert was seen
                        return
                    if len(end["start"]) < 4:
                        end["start"] += data[: 4 - len(end["start"])]
        except ssl.SSLEOFError:
            end["end"] = "no close_notify"
        except ConnectionResetError:
            end["end"] = "reset"
        except TimeoutError:
            end["end"] = "timeout"
        except (OSError, ValueError) as exc:
            end["end"] = end["end"] or f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        for t in self._threads:
            t.join(self.timeout + 5)
        self.server.close()


@pytest.mark.parametrize("dialect", ["qemu-7.2", "qemu-10.0"])
def test_every_multifd_channel_ends_with_close_notify(tls_creds, dialect):
    """QEMU 10.0 destinations treat a multifd channel's TLS end without close_notify as an
    error (multifd-clean-tls-termination): the source must send the alert on each channel,
    seen here by a destination that tells the alert from a bare TCP close."""
    import struct

    from qatmig_engine.constants import MULTIFD_MAGIC

    peer = _TLSEndRecorder(str(tls_creds.good), timeout=10)
    try:
        st = send(*peer.address, params=MigrationParameters(
            multifd_compression="zstd", multifd_channels=3, dialect=dialect,
            tls_creds=str(tls_creds.good)), guest=_guest(), timeout=10)
    finally:
        peer.close()
    assert st.status == "completed", st.error
    magic = struct.pack(">I", MULTIFD_MAGIC)
    multifd = [e for e in peer.ends if e["start"] == magic]
    assert len(multifd) == 3 and len(peer.ends) == 4, peer.ends
    assert [e["end"] for e in multifd] == ["close_notify"] * 3, peer.ends


def test_tls_hostname_names_the_certificate(tls_creds):
    """The source checks tls-hostname (here 'localhost', in the certificate) instead of the
    address it connects to."""
    creds = {"tls_creds": str(tls_creds.good)}
    st, dst, _s, _d = _migrate({**creds, "tls_hostname": "localhost"}, creds)
    assert (st.status, dst.status) == ("completed", "completed"), (st.error, dst.error)


def test_tls_source_plain_destination_say_so(tls_creds):
    st, dst, _s, _g = _migrate({"tls_creds": str(tls_creds.good)}, {}, timeout=5)
    assert st.status == dst.status == "failed"
    assert "TLS handshake record" in dst.error and "tls-creds" in dst.error
    assert "does the destination use TLS" in st.error
    st, dst, _s, _g = _migrate({}, {"tls_creds": str(tls_creds.good)}, timeout=5)
    assert dst.status == "failed" and "the source does not use TLS" in dst.error


# ------------------------------------------------------------------ refusals

#: case -> (source TLS params, destination TLS params, source message, destination message)
def _cases(c) -> dict:
    good = str(c.good)
    return {
        "wrong-ca": ({"tls_creds": str(c.wrong_ca)}, {"tls_creds": good},
                     "certificate failed verification", "alert: unknown CA"),
        "wrong-hostname": ({"tls_creds": good, "tls_hostname": "wrong.example"},
                           {"tls_creds": good},
                           "does not match the host name 'wrong.example'",
                           "alert: bad certificate"),
        "no-client-cert": ({"tls_creds": str(c.no_client)}, {"tls_creds": good},
                           "requires a client certificate and this source has none",
                           "presented no client certificate"),
        "dn-not-in-authz": ({"tls_creds": str(c.other_client)},
                            {"tls_creds": good, "tls_authz": (c.client_dn,)},
                            "refused this source",
                            f"authz check for {c.other_dn} is denied"),
    }


CASES = ["wrong-ca", "wrong-hostname", "no-client-cert", "dn-not-in-authz"]


@pytest.mark.parametrize("return_path", [False, True], ids=["", "return-path"])
@pytest.mark.parametrize("case", CASES)
def test_refused_before_any_ram_moves(tls_creds, case, return_path):
    src, dst_p, src_msg, dst_msg = _cases(tls_creds)[case]
    st, dst, _s, dst_guest = _migrate(src, dst_p, timeout=20, return_path=return_path)
    assert st.status == dst.status == "failed"
    assert src_msg in st.error and dst_msg in dst.error, (st.error, dst.error)
    assert st.error_type == dst.error_type == "TLSError"  # refused, not timed out
    # Nothing of the guest reached the destination; the source sent no page either.
    assert dst.destination.normal_pages == dst.destination.zero_pages == 0
    assert dst.destination.multifd_bytes <= 0 or dst.destination.payload_bytes == 0
    assert not any(dst_guest.blocks[0].view)
    assert st.source.normal_pages == 0 and st.source.payload_bytes == 0


def _cli_pair(tmp_path: Path, listen_args: list[str], send_args: list[str],
              timeout: float = 20) -> tuple[subprocess.CompletedProcess, subprocess.Popen,
                                            str, Path]:
    src_img, dst_img = tmp_path / "src.img", tmp_path / "dst.img"
    src_img.write_bytes(bytes(range(256)) * (SIZE // 256))
    port = free_port()
    listen = subprocess.Popen(
        [*QATMIG, "listen", "--listen", f"127.0.0.1:{port}", "--guest-image", str(dst_img),
         "--guest-size", str(SIZE), "--timeout", str(timeout), "--quiet", *listen_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert listen.stderr is not None
    first = listen.stderr.readline()  # "qatmig: listening on ..." once it listens
    assert "listening on" in first, first
    sent = subprocess.run(
        [*QATMIG, "send", f"127.0.0.1:{port}", "--guest-image", str(src_img), "--timeout",
         str(timeout), "--quiet", *send_args], capture_output=True, text=True,
        timeout=timeout + 30)
    _out, lerr = listen.communicate(timeout=timeout + 30)
    return sent, listen, lerr, dst_img


def _args(p: dict) -> list[str]:
    out = []
    for key, value in p.items():
        for v in (value if isinstance(value, tuple) else (value,)):
            out += [f"--{key.replace('_', '-')}", v]
    return out


@pytest.mark.parametrize("case", CASES)
def test_cli_refusal_one_clear_line_each_end(tls_creds, tmp_path, case):
    src, dst_p, src_msg, dst_msg = _cases(tls_creds)[case]
    sent, listen, lerr, dst_img = _cli_pair(tmp_path, _args(dst_p), _args(src))
    assert sent.returncode == 1 and listen.returncode == 1
    for err, msg in ((sent.stderr, src_msg), (lerr, dst_msg)):
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("qatmig: error: migration failed: ")
        assert msg in lines[0] and "TLS" in lines[0]
    assert not dst_img.exists() or not any(dst_img.read_bytes())


def test_cli_over_tls_completes(tls_creds, tmp_path):
    good = str(tls_creds.good)
    sent, listen, lerr, dst_img = _cli_pair(
        tmp_path, ["--tls-creds", good, "--tls-authz", tls_creds.client_dn],
        ["--tls-creds", good])
    assert sent.returncode == 0 and listen.returncode == 0, (sent.stderr, lerr)
    assert dst_img.read_bytes() == (tmp_path / "src.img").read_bytes()


def test_help_says_how_dir_maps_to_qemu():
    out = subprocess.run([*QATMIG, "listen", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--tls-creds DIR" in out and "tls-creds-x509" in out and "--tls-authz DN" in out
    assert sys.executable  # the CLI ran with this interpreter


def test_tls_certs_command_makes_a_usable_dir(tmp_path):
    """`qatmig tls-certs DIR` (docs' first step) makes QEMU's layout; `qatmig migrate
    --tls-creds DIR` runs over TLS with it."""
    import json

    out = subprocess.run([*QATMIG, "tls-certs", str(tmp_path / "creds"), "--json"],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    assert info["client_dn"] == "C=GB,O=qatmig test,CN=qatmig source"
    names = sorted(p.name for p in (tmp_path / "creds").iterdir())
    assert names == ["ca-cert.pem", "client-cert.pem", "client-key.pem", "server-cert.pem",
                     "server-key.pem"]  # the CA's key is not among them
    r = subprocess.run([*QATMIG, "migrate", "--guest-size", "8M", "--corpus", "filler",
                        "--tls-creds", str(tmp_path / "creds"), "--tls-authz",
                        info["client_dn"], "--json", "--quiet"], capture_output=True, text=True)
    st = json.loads(r.stdout)
    assert r.returncode == 0 and st["tls"] and st["tls_peer_dn"] == info["client_dn"], r.stderr


@pytest.mark.parametrize("where", ["/dev/null/creds", "/proc/qatmig-creds"])
def test_tls_certs_command_where_it_cannot_write_says_so_in_one_line(where):
    r = subprocess.run([*QATMIG, "tls-certs", where], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"qatmig: error: cannot create the credentials directory {where}-ca: "
        + ("Not a directory" if where.startswith("/dev/null") else "No such file or directory")]


def test_plugin_pair_says_the_judge_cannot_read_tls(multifd_pair, tls_creds):
    """The suite's pairs put the wire judge between the ends: over TLS it would read only
    ciphertext, so a pair with tls_creds is refused with the reason, not judged wrongly."""
    with pytest.raises(ValueError, match="cannot read TLS channels"):
        multifd_pair(compression="zstd", tls_creds=str(tls_creds.good))


# ------------------------------------------------------------------ nothing hangs

def test_silent_peer_during_the_handshake_times_out(tls_creds):
    """A connection that never speaks TLS: both handshakes end at the idle timeout, with the
    channel named, instead of waiting forever."""
    import socket

    from qatmig_engine.errors import PeerTimeout

    good = str(tls_creds.good)
    # Destination side: a client connects and says nothing.
    d = Destination(_guest(fill=False), MigrationParameters(tls_creds=good), timeout=1)
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(st=d.run()), daemon=True)
    addr = d.address
    t.start()
    with socket.create_connection(addr):
        t.join(15)
    assert not t.is_alive()
    st = box["st"]
    assert st.status == "failed" and st.error_type == "PeerTimeout"
    assert "TLS handshake" in st.error and "main channel" in st.error
    # Source side: a listener accepts and never answers the ClientHello.
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        st = send(*ls.getsockname(), params=MigrationParameters(tls_creds=good),
                  guest=_guest(), timeout=1)
    assert st.status == "failed" and st.error_type == PeerTimeout.__name__
    assert "TLS handshake" in st.error
