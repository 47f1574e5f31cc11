"""Real QEMU 10.0 (Debian bookworm-backports, fetched by ``qatmig_engine.qemu.fetch``) against
the engine in the ``qemu-10.0`` dialect: both directions for none/zlib/zstd x zero-page-detection
none/legacy/multifd x 1/2/4 channels with byte-identical RAM, and QEMU 10.0 -> tap -> QEMU 10.0.

QEMU runs with its default machine type (``pc`` = ``pc-i440fx-10.0``), so every stream carries
MIG_CMD_SWITCHOVER_START on the main channel. Skips unless QEMU 10.0 was fetched
(``make system-deps`` or ``python -m qatmig_engine.qemu.fetch``).
"""

from __future__ import annotations

import pytest
from qatmig_engine.qemu.image import write_image
from qatmig_engine.qemu.interop import engine_to_qemu, qemu_to_engine, qemu_to_qemu
from qatmig_engine.tap import format_report
from qemu_support import QEMU10_MARKS, qemu10

pytestmark = QEMU10_MARKS

SIZE = 16 << 20
DIALECT = "qemu-10.0"
SWITCHOVER = ["MIG_CMD_SWITCHOVER_START"]
MATRIX = [(m, z, c) for m in ("none", "zlib", "zstd") for z in ("none", "legacy", "multifd")
          for c in (1, 2, 4)]
IDS = [f"{m}-zpd_{z}-{c}ch" for m, z, c in MATRIX]


@pytest.mark.parametrize(("method", "zpd", "channels"), MATRIX, ids=IDS)
def test_qemu10_source_into_engine(shm, method, zpd, channels):
    src, dst = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, SIZE, seed=40 + channels)
    run = qemu_to_engine(src, dst, SIZE, method, channels, workdir=shm, timeout=60,
                         binary=str(qemu10().wrapper), dialect=DIALECT,
                         zero_page_detection=zpd)
    assert run.source.get("status") == "completed", run.source
    assert run.destination.get("status") == "completed", run.log[-2000:]
    assert run.ram_equal, "engine RAM file differs from QEMU 10.0's source RAM file"
    assert run.destination["machine_type"] == "pc-i440fx-10.0"
    assert run.destination["vm_commands"] == SWITCHOVER
    assert run.destination["zero_page_detection"] == zpd
    # the engine counted the zero pages QEMU says it sent (none: every page travels whole)
    assert run.destination["zero_pages"] == run.source["ram"]["duplicate"]
    if zpd == "none":
        assert run.destination["zero_pages"] == 0


@pytest.mark.parametrize(("method", "zpd", "channels"), MATRIX, ids=IDS)
def test_engine_send_into_qemu10(shm, method, zpd, channels):
    src, dst = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, SIZE, seed=50 + channels)
    run = engine_to_qemu(src, dst, SIZE, method, channels, workdir=shm, timeout=60,
                         binary=str(qemu10().wrapper), dialect=DIALECT,
                         zero_page_detection=zpd)
    assert run.source.get("status") == "completed", run.log[-2000:]
    assert run.destination.get("status") == "completed", run.destination
    assert run.ram_equal, "QEMU 10.0's RAM file differs from the engine's image"
    assert run.source["machine_type"] == "pc-i440fx-10.0"
    assert run.destination["runstate"] == "paused"  # RAM only: QEMU ends paused


@pytest.mark.parametrize("zpd", ["legacy", "multifd"])
@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
def test_qemu10_through_the_tap_into_qemu10(shm, method, zpd):
    src, dst = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, SIZE, seed=60)
    run = qemu_to_qemu(src, dst, SIZE, method, 2, workdir=shm, tap=True, timeout=60,
                       binary=str(qemu10().wrapper), dialect=DIALECT,
                       zero_page_detection=zpd)
    assert run.completed and run.ram_equal, run.summary()
    assert run.tap is not None and run.tap.ok, format_report(run.tap)
    assert run.tap.commands == SWITCHOVER
    assert run.tap.machine_type == "pc-i440fx-10.0"
    assert run.tap.method == method


def test_engine_through_the_tap_into_qemu10(shm):
    src, dst = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, SIZE, seed=61)
    run = engine_to_qemu(src, dst, SIZE, "zstd", 2, workdir=shm, tap=True, timeout=60,
                         binary=str(qemu10().wrapper), dialect=DIALECT,
                         zero_page_detection="multifd")
    assert run.completed and run.ram_equal, run.log[-2000:]
    assert run.tap is not None and run.tap.ok, format_report(run.tap)
    assert run.tap.commands == SWITCHOVER


def test_qemu10_with_a_92_machine_type_sends_no_command(shm):
    """``-machine pc-i440fx-9.2`` turns send-switchover-start off (hw_compat_9_2)."""
    src, dst = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, SIZE, seed=62)
    run = qemu_to_engine(src, dst, SIZE, "zstd", 2, workdir=shm, timeout=60,
                         binary=str(qemu10().wrapper), dialect=DIALECT,
                         machine="pc-i440fx-9.2")
    assert run.completed and run.ram_equal, run.log[-2000:]
    assert run.destination["machine_type"] == "pc-i440fx-9.2"
    assert run.destination["vm_commands"] == []


def test_qemu10_into_an_older_dialect_names_the_command(shm):
    """What the issue saw (``unknown section type 0x08``) now says what and which dialect."""
    src, dst = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src, SIZE, seed=63)
    run = qemu_to_engine(src, dst, SIZE, "none", 2, workdir=shm, timeout=60,
                         binary=str(qemu10().wrapper), dialect="qemu-9.2")
    assert run.destination.get("status") == "failed"
    assert "MIG_CMD_SWITCHOVER_START" in run.destination["error"]
    assert "qemu-10.0" in run.destination["error"]
    assert "unknown section type" not in run.log


def test_qemu10_keeps_the_multifd_levels(shm):
    # Unlike 7.2 (tests/test_qemu_process.py), QEMU 10.0 applies the levels it accepts.
    from qatmig_engine.qemu.process import QemuProcess

    with QemuProcess(ram_file=f"{shm}/ram.img", ram_size=SIZE,
                     binary=str(qemu10().wrapper)) as q:
        q.execute("migrate-set-parameters", {"multifd-zlib-level": 9, "multifd-zstd-level": 7})
        p = q.execute("query-migrate-parameters")
    assert (p["multifd-zlib-level"], p["multifd-zstd-level"]) == (9, 7)
