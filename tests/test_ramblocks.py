"""Several RAM blocks: ``send/listen --add-ramblock NAME=FILE`` as processes, their error paths
as a user meets them, and the suite's pair judging each block on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qatmig_engine.errors import ParameterError
from qatmig_engine.guest import parse_ramblock_file

from pytest_qatmig.adapters import guest_path
from pytest_qatmig.edge_guests import QEMU_LIKE_RAMBLOCKS
from pytest_qatmig.roles import RAMBlockFile, Unsupported, guest_digest

CLI = [sys.executable, "-m", "qatmig_engine.cli"]
VRAM = "0000:00:02.0/vga.vram"


def _write(path: Path, size: int, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    # Half data, half zero pages: both kinds of page cross in every block.
    data = b"".join(rng.randbytes(4096) if i % 2 else bytes(4096) for i in range(size // 4096))
    path.write_bytes(data)
    return path


def _listen(argv: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([*CLI, "listen", "--listen", "127.0.0.1:0", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # announced once bound (or the error line)
    if "listening on" not in line:
        proc.wait(30)
        pytest.fail(f"listen did not start: {line}")
    return proc, int(line.rsplit(":", 1)[1])


def test_three_blocks_between_two_processes(tmp_path: Path) -> None:
    src = {"pc.ram": _write(tmp_path / "ram.img", 2 << 20, 1),
           VRAM: _write(tmp_path / "vram.img", 1 << 20, 2),
           "pc.bios": _write(tmp_path / "bios.img", 256 << 10, 3)}
    before = {n: p.read_bytes() for n, p in src.items()}
    dst = {n: tmp_path / f"dst-{i}.img" for i, n in enumerate(src)}
    for n, p in dst.items():
        p.write_bytes(b"\xa5" * len(before[n]))  # stale: every page must be written
    extra_dst = [a for n in (VRAM, "pc.bios") for a in ("--add-ramblock", f"{n}={dst[n]}")]
    extra_src = [a for n in (VRAM, "pc.bios") for a in ("--add-ramblock", f"{n}={src[n]}")]
    listener, port = _listen(["--guest-image", str(dst["pc.ram"]), "--guest-size", "2M",
                              *extra_dst, "--json", "--quiet", "--timeout", "30",
                              "--dialect", "qemu-7.2", "--multifd-compression", "zlib"])
    sender = subprocess.run([*CLI, "send", f"127.0.0.1:{port}", "--guest-image",
                             str(src["pc.ram"]), *extra_src, "--json", "--quiet", "--timeout",
                             "30", "--dialect", "qemu-7.2", "--multifd-compression", "zlib"],
                            capture_output=True, text=True, timeout=120)
    out, err = listener.communicate(timeout=120)
    assert sender.returncode == 0, sender.stderr
    assert listener.returncode == 0, err
    for n in src:
        assert dst[n].read_bytes() == before[n], f"block {n} differs at the destination"
        assert src[n].read_bytes() == before[n], f"the source's file of {n} was modified"
    s, d = json.loads(sender.stdout), json.loads(out)
    assert list(s["ramblock_digests"]) == ["pc.ram", VRAM, "pc.bios"]
    assert s["ramblock_digests"] == d["ramblock_digests"]
    pages = sum(len(b) for b in before.values()) // 4096
    assert s["normal_pages"] + s["zero_pages"] == pages


def _one_error_line(cp: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in cp.stderr, cp.stderr
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, cp.stderr
    return lines[0]


def test_a_destination_block_file_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    cp = subprocess.run([*CLI, "listen", "--listen", "127.0.0.1:0", "--guest-image",
                         str(tmp_path / "d.img"), "--guest-size", "1M", "--add-ramblock",
                         f"pc.bios={tmp_path / 'missing.img'}"],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1
    line = _one_error_line(cp)
    assert line.startswith("qatmig: error: --add-ramblock pc.bios=") and "truncate -s" in line


def test_an_empty_destination_block_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.img"
    empty.touch()
    cp = subprocess.run([*CLI, "listen", "--listen", "127.0.0.1:0", "--guest-image",
                         str(tmp_path / "d.img"), "--guest-size", "1M", "--add-ramblock",
                         f"pc.rom={empty}"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1
    assert "the file is empty; give it the block's size" in _one_error_line(cp)


@pytest.mark.parametrize("cmd", ["send", "listen"])
def test_a_duplicate_block_name_is_refused(tmp_path: Path, cmd: str) -> None:
    blk = _write(tmp_path / "b.img", 64 << 10, 4)
    where = ["127.0.0.1:9"] if cmd == "send" else ["--listen", "127.0.0.1:0"]
    cp = subprocess.run([*CLI, cmd, *where, "--guest-image", str(_write(tmp_path / "r.img",
                                                                        1 << 20, 5)),
                         "--guest-size", "1M", "--add-ramblock", f"pc.ram={blk}"],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1
    assert _one_error_line(cp) == "qatmig: error: duplicate RAM block name 'pc.ram'"


def test_an_add_ramblock_without_a_file_is_a_usage_error() -> None:
    cp = subprocess.run([*CLI, "send", "127.0.0.1:9", "--guest-size", "1M", "--add-ramblock",
                         "pc.bios"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2 and "Traceback" not in cp.stderr
    assert cp.stderr.strip().endswith(
        "argument --add-ramblock: expected NAME=FILE, e.g. pc.bios=/dev/shm/bios.img")


def test_names_are_split_at_the_first_equals_sign() -> None:
    assert parse_ramblock_file(f"{VRAM}=/tmp/a=b.img") == (VRAM, "/tmp/a=b.img")
    with pytest.raises(ParameterError, match="at most 255 bytes"):
        parse_ramblock_file("x" * 256 + "=f")
    with pytest.raises(ParameterError, match="expected NAME=FILE"):
        parse_ramblock_file("=f")


def test_a_destination_block_of_another_size_fails_the_migration(tmp_path: Path) -> None:
    ram = _write(tmp_path / "ram.img", 1 << 20, 6)
    bios = _write(tmp_path / "bios.img", 256 << 10, 7)
    small = tmp_path / "dst-bios.img"
    small.write_bytes(bytes(128 << 10))
    listener, port = _listen(["--guest-image", str(tmp_path / "d.img"), "--guest-size", "1M",
                              "--add-ramblock", f"pc.bios={small}", "--json", "--quiet",
                              "--timeout", "10"])
    t0 = time.monotonic()
    sender = subprocess.run([*CLI, "send", f"127.0.0.1:{port}", "--guest-image", str(ram),
                             "--add-ramblock", f"pc.bios={bios}", "--json", "--quiet",
                             "--timeout", "10"], capture_output=True, text=True, timeout=120)
    out, _err = listener.communicate(timeout=120)
    assert listener.returncode == 1 and sender.returncode == 1
    d = json.loads(out)
    assert d["status"] == "failed"
    assert "Length mismatch: pc.bios: 0x40000 in != 0x20000" in d["error"]
    assert time.monotonic() - t0 < 60
    assert small.stat().st_size == 128 << 10


def test_a_pair_without_roles_does_not_take_a_guest_of_several_blocks(tmp_path: Path) -> None:
    from pytest_qatmig.fixtures import GuestImage

    img = _write(tmp_path / "r.img", 1 << 20, 8)
    guest = GuestImage(path=img, size=1 << 20, corpus="test", extra_ramblocks=(
        RAMBlockFile("pc.bios", img, 1 << 20),))
    with pytest.raises(Unsupported, match="needs the destination/source roles with capability"):
        guest_path(guest)
    assert guest_path(guest, several_blocks=True) == img
    assert guest.pages == 512


def test_guest_digest_is_the_block_digest_for_one_block_and_ordered_for_several() -> None:
    assert guest_digest([("pc.ram", "ab")]) == "ab"
    two = guest_digest([("pc.ram", "ab"), ("pc.bios", "cd")])
    assert two not in (None, "ab", "cd")
    assert two != guest_digest([("pc.bios", "cd"), ("pc.ram", "ab")])
    assert guest_digest([("pc.ram", "ab"), ("pc.bios", None)]) is None


def test_the_qemu_like_guest_has_qemus_blocks(guest_qemu_like_ramblocks) -> None:  # type: ignore[no-untyped-def]
    g = guest_qemu_like_ramblocks
    assert [(b.name, b.size) for b in g.extra_ramblocks] == list(QEMU_LIKE_RAMBLOCKS)
    assert all(os.path.getsize(b.path) == b.size for b in g.extra_ramblocks)
    assert g.pages == (g.size + sum(s for _, s in QEMU_LIKE_RAMBLOCKS)) // 4096
    for b in g.extra_ramblocks:
        assert b.path.read_bytes().strip(b"\0"), f"{b.name} is all zero"


def test_the_suite_names_the_block_that_arrived_wrong(
    guest_qemu_like_ramblocks, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    # A destination that receives pc.bios somewhere else and leaves the suite's file of it
    # stale: the suite's verdict is false and names the block (the wire itself is fine).
    from dataclasses import replace

    from pytest_qatmig.adapters import PairSpec, ReferenceImplementation
    from pytest_qatmig.roles import RolePair

    ref = ReferenceImplementation()

    class ReceivesBiosElsewhere:
        name = "bios-elsewhere"

        def capabilities(self) -> frozenset[str]:
            return ref.capabilities()

        def destination(self, spec, ctx):  # type: ignore[no-untyped-def]
            spare = ctx.workdir / "bios-elsewhere.img"
            bios = next(b for b in ctx.extra_ramblocks if b.name == "pc.bios")
            spare.write_bytes(bytes(bios.size))
            moved = tuple(replace(b, path=spare) if b.name == "pc.bios" else b
                          for b in ctx.extra_ramblocks)
            return ref.destination(spec, replace(ctx, extra_ramblocks=moved))

        def source(self, spec, ctx, address):  # type: ignore[no-untyped-def]
            raise AssertionError("only a destination here")

    pair = RolePair(ref, ReceivesBiosElsewhere(), PairSpec(2, "none", None, 0, None, {}),
                    workdir=tmp_path, judge=False)
    result = pair.migrate(guest_qemu_like_ramblocks, destination_fill=0xA5)
    assert result.status == "completed", result.get("error")
    assert result.verified is False
    mismatch = result.get("ram_mismatch")
    assert mismatch["ramblock"] == "pc.bios" and set(mismatch["per_ramblock"]) == {"pc.bios"}
    assert mismatch["pages_differing"] == (256 << 10) // 4096
    blocks = result.get("ramblocks")
    assert blocks["pc.bios"]["destination_digest"] != blocks["pc.bios"]["source_digest"]
    assert all(b["destination_digest"] == b["source_digest"] and b["source_unchanged"]
               for n, b in blocks.items() if n != "pc.bios")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the pair left nothing behind
