"""Real QEMU 7.2 source -> ``qatmig listen --dialect qemu-7.2``: byte-identical RAM.

Needs qemu-system-x86_64 (``apt-get install qemu-system-x86``); skips with that hint otherwise.
"""

from __future__ import annotations

import pytest
from qatmig_engine.qemu.image import write_image
from qatmig_engine.qemu.interop import qemu_to_engine
from qatmig_engine.tap import format_report
from qemu_support import QEMU_MARKS

pytestmark = QEMU_MARKS

SIZE = 64 << 20
CASES = [(m, c) for c in (2, 4) for m in ("none", "zlib", "zstd")] + [("zstd", 1), ("none", 8)]



@pytest.mark.parametrize(("method", "channels"), CASES, ids=[f"{m}-{c}ch" for m, c in CASES])
def test_qemu_source_into_engine_listen(shm, method, channels):
    src, dst = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, SIZE, seed=10 + channels)
    run = qemu_to_engine(src, dst, SIZE, method, channels, workdir=shm, timeout=60)
    assert run.source.get("status") == "completed", run.source
    assert run.destination.get("status") == "completed", run.log[-2000:]
    assert run.ram_equal, "engine RAM file differs from QEMU's source RAM file"
    # the engine saw what QEMU says it sent
    assert run.destination["zero_pages"] == run.source["ram"]["duplicate"]
    assert run.destination["multifd_channels"] == channels
    assert run.destination["machine_type"] == "pc-i440fx-7.2"


def test_qemu_source_into_engine_through_the_tap(shm):
    src, dst = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, SIZE, seed=21)
    run = qemu_to_engine(src, dst, SIZE, "zlib", 2, workdir=shm, tap=True, timeout=60)
    assert run.completed and run.ram_equal
    assert run.tap is not None and run.tap.ok, format_report(run.tap)


def test_running_qemu_guest_into_engine(shm):
    """The source guest runs (SeaBIOS dirties RAM): pages are re-sent in later rounds and the
    engine must apply them in round order (EOS/SYNC barrier) to end equal to the source."""
    from qatmig_engine.qemu.image import build_image

    src, dst = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, SIZE, seed=22)
    run = qemu_to_engine(src, dst, SIZE, "zstd", 2, workdir=shm, tap=True, live=True,
                         timeout=60)
    assert run.completed, run.log[-2000:]
    assert run.tap is not None and run.tap.ok, format_report(run.tap)
    with open(src, "rb") as f:
        assert f.read() != build_image(SIZE, seed=22), "the guest did not run"
    assert run.ram_equal
