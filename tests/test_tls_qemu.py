"""TLS with real QEMU peers (issue 13, item 4): QEMU 7.2 and 10.0 as source and as destination
with tls-creds (x509, verify-peer on), tls-hostname and tls-authz on both ends, RAM verified
identical; refusals (wrong CA, wrong host name, missing or unlisted client certificate) before
any RAM moves, each end saying why. Certificates: the plugin's ``tls_creds`` fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from qatmig_engine.qemu.image import write_image
from qatmig_engine.qemu.interop import TLSEnds, engine_to_qemu, qemu_to_engine
from qemu_support import QEMU10_MARKS, QEMU_MARKS, qemu10

SIZE = 16 << 20


def _qemus() -> list:
    return [
        pytest.param(None, "qemu-7.2", id="qemu-7.2", marks=QEMU_MARKS),
        pytest.param("10", "qemu-10.0", id="qemu-10.0", marks=QEMU10_MARKS),
    ]


def _binary(which: str | None) -> str | None:
    return str(qemu10().wrapper) if which == "10" else None


def _images(tmp_path: Path) -> tuple[str, str]:
    src, dst = str(tmp_path / "src.img"), str(tmp_path / "dst.img")
    write_image(src, SIZE)
    return src, dst


def _untouched(img: str) -> bool:
    """The destination's RAM file holds no byte of the guest (absent or all zero)."""
    p = Path(img)
    return not p.exists() or not any(p.read_bytes())


@pytest.mark.parametrize("which,dialect", _qemus())
@pytest.mark.parametrize("method", ["none", "zstd"])
def test_engine_to_qemu_over_tls(tls_creds, tmp_path, which, dialect, method):
    """The QEMU destination verifies our client certificate and admits its DN through an
    authz-list (so our DN form is gnutls'); we check its certificate and host name."""
    src, dst = _images(tmp_path)
    good = str(tls_creds.good)
    run = engine_to_qemu(src, dst, SIZE, method, 3, workdir=str(tmp_path),
                         binary=_binary(which), dialect=dialect, timeout=60,
                         tls=TLSEnds(good, good, hostname="localhost",
                                     authz=(tls_creds.client_dn,)))
    assert run.completed and run.ram_equal, (run.summary(), run.source.get("error"), run.log)
    assert run.source["tls"] is True


@pytest.mark.parametrize("which,dialect", _qemus())
@pytest.mark.parametrize("method", ["none", "zstd"])
def test_qemu_to_engine_over_tls(tls_creds, tmp_path, which, dialect, method):
    """QEMU's source does a handshake per channel (main first); we take the first as the main
    channel, check QEMU's client certificate and its DN against --tls-authz."""
    src, dst = _images(tmp_path)
    good = str(tls_creds.good)
    run = qemu_to_engine(src, dst, SIZE, method, 3, workdir=str(tmp_path),
                         binary=_binary(which), dialect=dialect, timeout=60,
                         tls=TLSEnds(good, good, hostname="localhost",
                                     authz=(tls_creds.client_dn,)))
    assert run.completed and run.ram_equal, (run.summary(), run.destination.get("error"),
                                             run.log)
    assert run.destination["tls"] is True
    assert run.destination["tls_peer_dn"] == tls_creds.client_dn


@pytest.mark.parametrize("which,dialect", _qemus())
def test_qemu_to_engine_over_tls_with_return_path(tls_creds, tmp_path, which, dialect):
    src, dst = _images(tmp_path)
    good = str(tls_creds.good)
    run = qemu_to_engine(src, dst, SIZE, "zstd", 2, workdir=str(tmp_path),
                         binary=_binary(which), dialect=dialect, timeout=60,
                         return_path=True, tls=TLSEnds(good, good))
    assert run.completed and run.ram_equal, (run.summary(), run.destination.get("error"))
    assert run.destination["return_path_shut"] == 0


@pytest.mark.parametrize("which,dialect", _qemus())
def test_engine_to_qemu_over_tls_with_return_path(tls_creds, tmp_path, which, dialect):
    """The source reads MIG_RP_MSG_SHUT on the TLS main channel while it writes to it (one
    SSL object, two threads: serialised)."""
    src, dst = _images(tmp_path)
    good = str(tls_creds.good)
    run = engine_to_qemu(src, dst, SIZE, "zstd", 2, workdir=str(tmp_path),
                         binary=_binary(which), dialect=dialect, timeout=60,
                         return_path=True, tls=TLSEnds(good, good))
    assert run.completed and run.ram_equal, (run.summary(), run.source.get("error"))
    assert run.source["return_path_shut"] == 0


# ------------------------------------------------------------------ refusals

def _engine_source_cases(c) -> dict:
    """case -> (TLSEnds for engine -> QEMU, engine's message, QEMU destination's stderr)."""
    good = str(c.good)
    return {
        "wrong-ca": (TLSEnds(str(c.wrong_ca), good), "certificate failed verification",
                     "TLS handshake failed"),
        "wrong-hostname": (TLSEnds(good, good, hostname="wrong.example"),
                           "does not match the host name 'wrong.example'",
                           "TLS handshake failed"),
        "no-client-cert": (TLSEnds(str(c.no_client), good),
                           "this source has no client certificate",
                           "No certificate was found"),
        "dn-not-in-authz": (TLSEnds(str(c.other_client), good, authz=(c.client_dn,)),
                            "refused this source",
                            f"TLS x509 authz check for {c.other_dn} is denied"),
    }


@pytest.mark.parametrize("return_path", [False, True], ids=["", "return-path"])
@pytest.mark.parametrize("which,dialect", _qemus())
@pytest.mark.parametrize("case", ["wrong-ca", "wrong-hostname", "no-client-cert",
                                  "dn-not-in-authz"])
def test_qemu_destination_refuses_engine_source(tls_creds, tmp_path, which, dialect, case,
                                                return_path):
    """A refused engine source fails with its reason; QEMU says why on stderr (it reports the
    refusal and keeps waiting for another source: its query-migrate never says failed), and
    its RAM holds nothing of the guest. With the return path the source's reader thread is
    the one that sees the refusal on the main channel."""
    tls, ours, theirs = _engine_source_cases(tls_creds)[case]
    src, dst = _images(tmp_path)
    run = engine_to_qemu(src, dst, SIZE, "zstd", 2, workdir=str(tmp_path),
                         binary=_binary(which), dialect=dialect, timeout=20, tls=tls,
                         destination_wait=1, return_path=return_path)
    assert run.source["status"] == "failed" and run.source["error_type"] == "TLSError"
    assert ours in run.source["error"], run.source["error"]
    assert theirs in run.log, run.log
    assert run.source["normal_pages"] == 0 and run.destination.get("status") != "completed"
    assert _untouched(dst)


def _qemu_source_cases(c) -> dict:
    """case -> (TLSEnds for QEMU -> engine, engine's message, QEMU source's error)."""
    good = str(c.good)
    return {
        "wrong-ca": (TLSEnds(good, str(c.wrong_ca)), "failed verification",
                     "The certificate hasn't got a known issuer"),
        "wrong-hostname": (TLSEnds(good, good, hostname="wrong.example"),
                           "it may have refused this destination's certificate",
                           "does not match the hostname wrong.example"),
        "no-client-cert": (TLSEnds(good, str(c.no_client)), "presented no client certificate",
                           ""),
        "dn-not-in-authz": (TLSEnds(good, str(c.other_client), authz=(c.client_dn,)),
                            f"TLS x509 authz check for {c.other_dn} is denied", ""),
    }


@pytest.mark.parametrize("which,dialect", _qemus())
@pytest.mark.parametrize("case", ["wrong-ca", "wrong-hostname", "no-client-cert",
                                  "dn-not-in-authz"])
def test_engine_destination_refuses_qemu_source(tls_creds, tmp_path, which, dialect, case):
    tls, ours, theirs = _qemu_source_cases(tls_creds)[case]
    src, dst = _images(tmp_path)
    run = qemu_to_engine(src, dst, SIZE, "zstd", 2, workdir=str(tmp_path),
                         binary=_binary(which), dialect=dialect, timeout=20, tls=tls)
    d = run.destination
    assert d["status"] == "failed" and d["error_type"] == "TLSError", d
    assert ours in d["error"], d["error"]
    assert d["normal_pages"] == 0 and d["zero_pages"] == 0
    assert run.source["status"] == "failed" and theirs in run.source["error"]
    assert _untouched(dst)
