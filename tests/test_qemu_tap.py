"""QEMU 7.2 -> qatmig tap -> QEMU 7.2: the tap checks a real migration byte by byte.

Needs qemu-system-x86_64 (``apt-get install qemu-system-x86``); skips with that hint otherwise.
"""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys

import pytest
from qatmig_engine.qemu.image import write_image
from qatmig_engine.qemu.process import QemuProcess
from qatmig_engine.tap import TapChecker, TapProxy, format_report
from qemu_support import QEMU_MARKS

pytestmark = QEMU_MARKS

SIZE = 64 << 20
QATMIG = [sys.executable, "-c", "import sys; from qatmig_engine.cli import main; "
          "sys.exit(main(sys.argv[1:]))"]



@pytest.mark.parametrize("channels", [2, 4])
@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
def test_qemu_to_qemu_through_the_tap(shm, method, channels):
    src_img, dst_img = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src_img, SIZE, seed=channels)
    with QemuProcess(ram_file=src_img, ram_size=SIZE, name="src", workdir=f"{shm}/s") as src, \
         QemuProcess(ram_file=dst_img, ram_size=SIZE, incoming=True, name="dst",
                     workdir=f"{shm}/d") as dst:
        for q in (src, dst):
            q.setup_migration(channels=channels, compression=method)
        port = dst.migrate_incoming()
        with open(src_img, "rb") as f:
            image = f.read()
        tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", port),
                       TapChecker(method=method, channels=channels,
                                  expect={"pc.ram": image}), timeout=30)
        tport = tap.start()
        src.migrate(f"tcp:127.0.0.1:{tport}")
        info = src.wait_migration(timeout=120)
        assert dst.wait_migration(timeout=60)["status"] == "completed"
        report = tap.wait(60)
    assert report.ok, format_report(report)
    assert info["status"] == "completed"
    assert filecmp.cmp(src_img, dst_img, shallow=False)
    mf = [c for c in report.channels if c.role == "multifd"]
    assert sorted(c.channel for c in mf) == list(range(channels))
    assert all(c.sync_packets == report.eos for c in mf)
    notes = {n.kind: n.count for n in report.notes}
    assert report.totals()["pages"] - notes.get("page-sent-twice", 0) == info["ram"]["normal"]
    assert report.channels[0].zero_pages == info["ram"]["duplicate"]
    if method != "none":
        assert report.totals()["ratio"] > 1.25  # guest bytes / payload bytes, as the engine


def test_tap_cli_between_two_qemus(shm):
    """`qatmig tap --listen --forward --json` as a process, as a user would run it."""
    src_img, dst_img = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src_img, SIZE, seed=5)
    with QemuProcess(ram_file=src_img, ram_size=SIZE, name="src", workdir=f"{shm}/s") as src, \
         QemuProcess(ram_file=dst_img, ram_size=SIZE, incoming=True, name="dst",
                     workdir=f"{shm}/d") as dst:
        for q in (src, dst):
            q.setup_migration(channels=2, compression="zstd")
        port = dst.migrate_incoming()
        proc = subprocess.Popen(
            [*QATMIG, "tap", "--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{port}",
             "--json", "--timeout", "30", "--verify-image", src_img, "--dialect", "qemu-7.2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stderr.readline()
            tport = int(line.split("listening on 127.0.0.1:")[1].split(",")[0])
            src.migrate(f"tcp:127.0.0.1:{tport}")
            src.wait_migration(timeout=120)
            dst.wait_migration(timeout=60)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert proc.returncode == 0, err + out
    js = json.loads(out)
    assert js["ok"] and js["multifd_compression"] == "zstd"
    assert js["machine_type"] == "pc-i440fx-7.2"
    assert filecmp.cmp(src_img, dst_img, shallow=False)


def test_running_guest_through_the_tap(shm):
    """SeaBIOS runs (no -S after `cont`) and dirties RAM during the migration: the tap checks
    every round and the destination still equals the source once it stops."""
    from qatmig_engine.qemu.image import build_image

    src_img, dst_img = f"{shm}/src.img", f"{shm}/dst.img"
    write_image(src_img, SIZE, seed=9)
    with QemuProcess(ram_file=src_img, ram_size=SIZE, name="src", workdir=f"{shm}/s") as src, \
         QemuProcess(ram_file=dst_img, ram_size=SIZE, incoming=True, name="dst",
                     workdir=f"{shm}/d") as dst:
        for q in (src, dst):
            q.setup_migration(channels=2, compression="zstd")
        port = dst.migrate_incoming()
        src.execute("cont")
        assert src.status() == "running"
        tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", port),
                       TapChecker(method="zstd", channels=2), timeout=30)
        tport = tap.start()
        src.migrate(f"tcp:127.0.0.1:{tport}")
        src.wait_migration(timeout=120)
        dst.wait_migration(timeout=60)
        assert src.status() == "postmigrate"
        report = tap.wait(60)
    assert report.ok, format_report(report)
    with open(src_img, "rb") as f:
        assert f.read() != build_image(SIZE, seed=9), "the guest did not run"
    assert filecmp.cmp(src_img, dst_img, shallow=False)
