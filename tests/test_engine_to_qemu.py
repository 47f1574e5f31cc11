"""``qatmig send --dialect qemu-7.2`` -> real QEMU 7.2 destination: byte-identical RAM.

The engine sends the RAM-only main stream (header, configuration with the machine type, the
RAM section, EOF) and multifd packets; QEMU must report ``completed``.
Needs qemu-system-x86_64 (``apt-get install qemu-system-x86``); skips with that hint otherwise.
"""

from __future__ import annotations

import filecmp
import threading

import pytest
from qatmig_engine.api import send
from qatmig_engine.guest import GuestMemory, RAMBlock
from qatmig_engine.params import MigrationParameters
from qatmig_engine.qemu.image import write_image
from qatmig_engine.qemu.interop import engine_to_qemu
from qatmig_engine.qemu.process import QemuProcess
from qatmig_engine.tap import TapChecker, TapProxy, format_report
from qemu_support import QEMU_MARKS

pytestmark = QEMU_MARKS

SIZE = 64 << 20
CASES = [(m, c) for c in (2, 4) for m in ("none", "zlib", "zstd")] + [("none", 1), ("zlib", 8)]



@pytest.mark.parametrize(("method", "channels"), CASES, ids=[f"{m}-{c}ch" for m, c in CASES])
def test_engine_send_into_qemu(shm, method, channels):
    src, dst = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, SIZE, seed=30 + channels)
    run = engine_to_qemu(src, dst, SIZE, method, channels, workdir=shm, timeout=60)
    assert run.source.get("status") == "completed", run.log[-2000:]
    assert run.destination.get("status") == "completed", run.destination
    assert run.ram_equal, "QEMU's RAM file differs from the engine's image"
    # RAM only, no device state: QEMU ends paused (spec §5.1)
    assert run.destination["runstate"] == "paused"


def test_engine_stream_is_validated_by_the_tap(shm):
    src, dst = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, SIZE, seed=40)
    run = engine_to_qemu(src, dst, SIZE, "zstd", 4, workdir=shm, tap=True, timeout=60)
    assert run.completed and run.ram_equal
    assert run.tap is not None and run.tap.ok, format_report(run.tap)
    assert run.tap.machine_type == "pc-i440fx-7.2"


def test_full_qemu_block_list_and_machine_type(shm):
    """The engine declares every RAMBlock of the destination (names, used lengths, in QEMU's
    order, from `info ramblock`) as a real 7.2 source does; QEMU accepts and completes."""
    src, dst_img = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, SIZE, seed=41)
    with QemuProcess(ram_file=dst_img, ram_size=SIZE, incoming=True, name="dst",
                     workdir=f"{shm}/d") as dst:
        blocks = dst.ram_blocks()
        machine = dst.machine_type()
        dst.setup_migration(channels=2, compression="zlib")
        port = dst.migrate_incoming()
        guest = GuestMemory([RAMBlock.from_file("pc.ram", src, SIZE)] + [
            RAMBlock.anonymous(b.name, b.used_length) for b in blocks if b.name != "pc.ram"
        ])
        tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", port),
                       TapChecker(method="zlib", channels=2), timeout=30)
        tport = tap.start()
        params = MigrationParameters(multifd_channels=2, multifd_compression="zlib",
                                     dialect="qemu-7.2")
        try:
            st = send("127.0.0.1", tport, params=params, guest=guest, machine_type=machine,
                      timeout=30)
        finally:
            guest.close()
        assert st.status == "completed", st.error
        assert dst.wait_migration(30)["status"] == "completed"
        report = tap.wait(30)
    assert report.ok, format_report(report)
    assert list(report.ramblocks.items()) == [(b.name, b.used_length) for b in blocks]
    assert filecmp.cmp(src, dst_img, shallow=False)


def test_wrong_machine_type_fails_cleanly(shm):
    """QEMU rejects a CONFIGURATION for another machine; the engine reports failed, no hang."""
    src, dst = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, 16 << 20, seed=42)
    run = engine_to_qemu(src, dst, 16 << 20, "none", 2, workdir=shm, timeout=20,
                         extra_args=("--machine-type", "pc-q35-7.2"))
    assert not run.completed
    assert run.source.get("status") == "failed"
    assert run.destination.get("status") != "completed"
    assert "Machine type received is 'pc-q35-7.2' and local is 'pc-i440fx-7.2'" in run.log


def test_destination_hang_does_not_hang_send(shm):
    """A 7.2 destination with another -uuid rejects the channels and hangs in inmigrate;
    the engine's send must end (failed or timed out) within its timeout."""
    src, dst_img = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, 16 << 20, seed=43)
    with QemuProcess(ram_file=dst_img, ram_size=16 << 20, incoming=True, name="dst",
                     uuid="12345678-1234-1234-1234-123456789abc", workdir=f"{shm}/d") as dst:
        dst.setup_migration(channels=2, compression="none")
        port = dst.migrate_incoming()
        params = MigrationParameters(multifd_channels=2, dialect="qemu-7.2")
        result: dict[str, object] = {}

        def run() -> None:
            result["st"] = send("127.0.0.1", port, src, params=params, timeout=5)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "qatmig send did not end within 60 s"
        assert getattr(result.get("st"), "status", None) != "completed"
        assert "received uuid" in dst.stderr_text()
