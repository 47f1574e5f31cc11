"""QEMU's return path (issue 13, item 3): with the ``return-path`` capability the source sends
MIG_CMD_OPEN_RETURN_PATH + MIG_CMD_PING(1) after the header, the destination answers PONG(1) and,
once it has loaded everything, MIG_RP_MSG_SHUT(0) on the main connection; the source completes
only then. A destination that fails says SHUT(1) (or dies) and the source fails too.
Real QEMU 7.2 and 10.0 as peers in both directions, capability on and off."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from qatmig_engine.api import send
from qatmig_engine.destination import Destination
from qatmig_engine.errors import StreamError
from qatmig_engine.guest import GuestMemory, RAMBlock, fill_deterministic
from qatmig_engine.mainstream import (
    ReturnPathDecoder,
    open_return_path_commands,
    rp_pong,
    rp_shut,
    vmdescription_ends,
)
from qatmig_engine.params import MigrationParameters
from qatmig_engine.qemu.image import write_image
from qatmig_engine.qemu.interop import engine_to_qemu, qemu_to_engine
from qemu_support import QEMU10_MARKS, QEMU_MARKS, qemu10

SIZE = 16 << 20


# ------------------------------------------------------------------ sans I/O

def test_wire_bytes_are_qemus():
    assert open_return_path_commands(1) == bytes.fromhex("08 0001 0000 08 0002 0004 00000001")
    assert rp_shut(False) == bytes.fromhex("0001 0004 00000000")
    assert rp_shut(True) == bytes.fromhex("0001 0004 00000001")
    assert rp_pong(1) == bytes.fromhex("0002 0004 00000001")


def test_return_path_decoder():
    rp = ReturnPathDecoder()
    data = rp_pong(1) + rp_shut(False)
    for b in data:  # byte by byte
        rp.feed(bytes([b]))
    assert rp.pongs == [1] and rp.shut == 0
    with pytest.raises(StreamError, match="MIG_RP_MSG_REQ_PAGES"):
        ReturnPathDecoder().feed(struct.pack(">HH", 4, 12) + bytes(12))


def test_vmdescription_end_detection():
    desc = b'{"page_size": 4096, "devices": [{"name": "timer", "instance_id": 0}]}'
    tail = b"\x00\x06" + struct.pack(">I", len(desc)) + desc
    assert vmdescription_ends(b"device bytes \x00\x06 noise" + tail)
    assert not vmdescription_ends(b"device bytes" + tail[:-1])
    assert not vmdescription_ends(b"device bytes")


# ------------------------------------------------------------------ engine <-> engine

def _guest(size: int = 4 << 20) -> GuestMemory:
    g = GuestMemory([RAMBlock.anonymous("pc.ram", size)])
    fill_deterministic(g.blocks[0])
    return g


def _pair(dst_guest: GuestMemory, return_path: bool, **kw):
    params = MigrationParameters(multifd_compression="zstd", return_path=return_path)
    dst = Destination(dst_guest, MigrationParameters(multifd_compression="zstd"),
                      ramblock="pc.ram", timeout=5)
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(st=dst.run()), daemon=True)
    t.start()
    src_guest = kw.pop("src_guest", None) or _guest()
    st = send(*dst.address, params=params, guest=src_guest, timeout=5, **kw)
    t.join(20)
    return st, box["st"]


def test_engine_pair_with_return_path_confirms():
    src_st, dst_st = _pair(_guest(), True)
    assert src_st.status == "completed" and dst_st.status == "completed", src_st.error
    assert src_st.return_path_shut == 0 and dst_st.return_path_shut == 0
    assert dst_st.vm_commands[:2] == ["MIG_CMD_OPEN_RETURN_PATH", "MIG_CMD_PING"]


def test_destination_failure_reaches_the_source():
    """The destination refuses the guest (its RAM block is smaller): SHUT(1), and the source
    fails naming it - without a return path only a reset could tell it."""
    src_st, dst_st = _pair(_guest(2 << 20), True)
    assert dst_st.status == "failed" and "Length mismatch" in dst_st.error
    assert src_st.status == "failed"
    assert "destination" in src_st.error, src_st.error


def test_destination_that_never_confirms_is_not_completed():
    """A destination that reads everything but closes without MIG_RP_MSG_SHUT (died, or a
    peer without a return path): not completed."""
    lsock = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def sink() -> None:
        lsock.settimeout(10)
        try:
            while len(conns) < 3:
                conns.append(lsock.accept()[0])
            for c in conns:
                c.settimeout(10)
            for c in conns:
                while c.recv(1 << 16):
                    pass
        except OSError:
            pass
        for c in conns:
            c.close()

    t = threading.Thread(target=sink, daemon=True)
    t.start()
    st = send(*lsock.getsockname()[:2], params=MigrationParameters(
        multifd_compression="none", return_path=True), guest=_guest(1 << 20), timeout=5)
    t.join(10)
    lsock.close()
    assert st.status == "failed", st.status
    assert "MIG_RP_MSG_SHUT" in st.error


# ------------------------------------------------------------------ real QEMU peers

def _check_qemu_to_engine(run, return_path: bool) -> None:
    assert run.source.get("status") == "completed", run.source
    assert run.destination.get("status") == "completed", run.log[-2000:]
    assert run.ram_equal
    cmds = run.destination["vm_commands"]
    assert ("MIG_CMD_OPEN_RETURN_PATH" in cmds) is return_path
    assert run.destination["return_path_shut"] == (0 if return_path else None)


def _check_engine_to_qemu(run, return_path: bool) -> None:
    assert run.source.get("status") == "completed", run.log[-2000:]
    assert run.destination.get("status") == "completed", run.destination
    assert run.ram_equal
    assert run.source["return_path_shut"] == (0 if return_path else None)


@pytest.mark.parametrize("return_path", [True, False], ids=["rp-on", "rp-off"])
class TestQemu72:
    pytestmark = QEMU_MARKS

    def test_qemu72_source_into_engine(self, shm, return_path):
        src, dst = f"{shm}/src.img", f"{shm}/dst.img"
        write_image(src, SIZE, seed=61)
        run = qemu_to_engine(src, dst, SIZE, "zstd", 2, workdir=shm, timeout=60,
                             return_path=return_path)
        _check_qemu_to_engine(run, return_path)

    def test_engine_into_qemu72(self, shm, return_path):
        src, dst = f"{shm}/src.img", f"{shm}/dst.img"
        write_image(src, SIZE, seed=62)
        run = engine_to_qemu(src, dst, SIZE, "zlib", 2, workdir=shm, timeout=60,
                             return_path=return_path)
        _check_engine_to_qemu(run, return_path)


@pytest.mark.parametrize("return_path", [True, False], ids=["rp-on", "rp-off"])
class TestQemu10:
    pytestmark = QEMU10_MARKS

    def test_qemu10_source_into_engine(self, shm, return_path):
        src, dst = f"{shm}/src.img", f"{shm}/dst.img"
        write_image(src, SIZE, seed=63)
        run = qemu_to_engine(src, dst, SIZE, "zstd", 2, workdir=shm, timeout=60,
                             binary=str(qemu10().wrapper), dialect="qemu-10.0",
                             return_path=return_path)
        _check_qemu_to_engine(run, return_path)

    def test_engine_into_qemu10(self, shm, return_path):
        src, dst = f"{shm}/src.img", f"{shm}/dst.img"
        write_image(src, SIZE, seed=64)
        run = engine_to_qemu(src, dst, SIZE, "zlib", 2, workdir=shm, timeout=60,
                             binary=str(qemu10().wrapper), dialect="qemu-10.0",
                             return_path=return_path)
        _check_engine_to_qemu(run, return_path)


def test_the_tap_judges_a_return_path_session():
    """Through the validating tap: OPEN_RETURN_PATH/PING are accepted commands and the PONG and
    SHUT going back on the main channel are allowed once the return path is open."""
    from qatmig_engine.tap import TapChecker, TapProxy, format_report

    dst_guest = GuestMemory([RAMBlock.anonymous("pc.ram", 1 << 20)])
    dst = Destination(dst_guest, MigrationParameters(multifd_compression="zstd",
                                                     dialect="qemu-9.2"),
                      ramblock="pc.ram", timeout=5)
    tap = TapProxy(("127.0.0.1", 0), dst.address,
                   TapChecker(channels=2, method="zstd", dialect="qemu-9.2"), timeout=10)
    port = tap.start()
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(st=dst.run()), daemon=True)
    t.start()
    st = send("127.0.0.1", port, params=MigrationParameters(
        multifd_compression="zstd", dialect="qemu-9.2", return_path=True),
        guest=_guest(1 << 20), timeout=5)
    t.join(20)
    report = tap.wait(20)
    dst_guest.close()
    assert st.status == "completed" and box["st"].status == "completed", st.error
    assert report.ok, format_report(report)
    assert report.commands[:2] == ["MIG_CMD_OPEN_RETURN_PATH", "MIG_CMD_PING"]
