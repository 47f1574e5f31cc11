"""Guest RAM: blocks, dirty bitmap, digests, read-only / copy-on-write images, workload."""

from __future__ import annotations

import hashlib
import time

import pytest
from qatmig_engine.errors import ParameterError
from qatmig_engine.guest import GuestMemory, RAMBlock, dirty_runs, fill_deterministic
from qatmig_engine.workload import Workload

MiB = 1 << 20


def _image(path, size=MiB):
    g = GuestMemory([RAMBlock.anonymous("pc.ram", size)])
    fill_deterministic(g.blocks[0], seed=3)
    path.write_bytes(g.blocks[0].view)
    g.close()
    return path


def test_anonymous_block_is_zero_and_page_addressed():
    b = RAMBlock.anonymous("pc.ram", 64 * 4096)
    assert b.pages == 64 and b.used_length == 64 * 4096
    assert bytes(b.page(5)) == bytes(4096)
    b.write_page(5 * 4096, b"\x07" * 4096)
    assert bytes(b.page(5)) == b"\x07" * 4096
    b.close()


@pytest.mark.parametrize("size", [0, 4095, 4097, -4096])
def test_bad_sizes_rejected(size):
    with pytest.raises(ParameterError, match=r"RAM block 'pc\.ram': size"):
        RAMBlock.anonymous("pc.ram", size)


def test_bad_names_rejected():
    with pytest.raises(ParameterError, match=r"RAM block name must be 1\.\.255 bytes, not ''"):
        RAMBlock.anonymous("", 4096)
    with pytest.raises(ParameterError, match=r"RAM block name must be 1\.\.255 bytes, not 'xxxxxx"):
        RAMBlock.anonymous("x" * 256, 4096)
    g = GuestMemory([RAMBlock.anonymous("a", 4096)])
    with pytest.raises(ParameterError, match="duplicate"):
        g.add(RAMBlock.anonymous("a", 4096))


def test_dirty_bitmap_sync_takes_and_clears():
    b = RAMBlock.anonymous("pc.ram", 32 * 4096)
    b.mark_dirty_many([1, 2, 3, 10, 31])
    assert b.dirty_count() == 5
    taken = b.sync_dirty()
    assert b.dirty_count() == 0
    assert list(dirty_runs(taken)) == [(1, 3), (10, 1), (31, 1)]
    b.mark_all_dirty()
    assert list(dirty_runs(b.sync_dirty())) == [(0, 32)]


def test_digest_is_deterministic_and_per_block(tmp_path):
    a = GuestMemory([RAMBlock.anonymous("pc.ram", MiB), RAMBlock.anonymous("pc.rom", 8192)])
    b = GuestMemory([RAMBlock.anonymous("pc.ram", MiB), RAMBlock.anonymous("pc.rom", 8192)])
    fill_deterministic(a.blocks[0], seed=9)
    fill_deterministic(b.blocks[0], seed=9)
    da, db = a.digest(), b.digest()
    assert da == db
    assert da.blocks["pc.ram"] == hashlib.sha256(bytes(a.blocks[0].view)).hexdigest()
    assert a.same_content(b)
    b.blocks[1].write_page(4096, b"\x01" * 4096)
    assert a.digest().whole != b.digest().whole
    assert a.digest().blocks["pc.ram"] == b.digest().blocks["pc.ram"]
    assert not a.same_content(b)


def test_filler_has_zero_and_distinct_pages():
    b = RAMBlock.anonymous("pc.ram", 4 * MiB)
    fill_deterministic(b)
    pages = [bytes(b.page(i)) for i in range(b.pages)]
    zero = sum(p == bytes(4096) for p in pages)
    assert 0.1 < zero / len(pages) < 0.3
    nonzero = [p for p in pages if p != bytes(4096)]
    assert len(set(nonzero)) == len(nonzero)


def test_image_read_only_cannot_be_written(tmp_path):
    path = _image(tmp_path / "g.img")
    g = GuestMemory.from_image(path)
    with pytest.raises(TypeError, match=r"cannot modify read-only memory"):
        g.blocks[0].view[0:1] = b"x"
    with pytest.raises(ParameterError, match="read-only"):
        Workload(g, 1000)
    g.close()


def test_copy_on_write_image_keeps_the_file(tmp_path):
    path = _image(tmp_path / "g.img")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    g = GuestMemory.from_image(path, mode="c")
    g.blocks[0].write_page(0, b"\xff" * 4096)
    assert bytes(g.blocks[0].page(0)) == b"\xff" * 4096
    g.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_destination_image_starts_zero(tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(b"\x55" * 8192)
    b = RAMBlock.from_file("pc.ram", path, 3 * 4096, mode="w")
    assert bytes(b.view) == bytes(3 * 4096)
    b.close()
    assert path.stat().st_size == 3 * 4096


def test_image_smaller_than_size_is_refused(tmp_path):
    path = tmp_path / "small.img"
    path.write_bytes(bytes(4096))
    with pytest.raises(ParameterError, match="fewer"):
        GuestMemory.from_image(path, 8192)
    with pytest.raises(ParameterError, match="cannot open"):
        GuestMemory.from_image(tmp_path / "missing.img")


@pytest.mark.parametrize("pattern", ["random", "sequential"])
def test_workload_dirties_at_about_the_rate_and_pauses(pattern):
    g = GuestMemory([RAMBlock.anonymous("pc.ram", 4 * MiB)])
    before = bytes(g.blocks[0].view)
    w = Workload(g, 5000, pattern=pattern, hot_pages=256)
    w.start()
    time.sleep(0.3)
    w.pause()
    written = w.pages_written
    time.sleep(0.1)
    assert w.pages_written == written  # paused: nothing more
    assert written > 0
    dirty = g.blocks[0].sync_dirty()
    assert max(i for i, v in enumerate(dirty) if v) < 256  # hot set only
    assert bytes(g.blocks[0].view) != before
    w.stop()
    assert w.error is None
    g.close()


def test_workload_arguments():
    g = GuestMemory.anonymous(MiB)
    with pytest.raises(ParameterError, match=r"--dirty-rate must be >= 0 pages/s"):
        Workload(g, -1)
    with pytest.raises(ParameterError, match=r"dirty pattern must be one of random, sequential"):
        Workload(g, 10, pattern="zigzag")
    with pytest.raises(ParameterError, match=r"no RAM block named 'nope'"):
        Workload(g, 10, block="nope")
    g.close()


def test_source_map_of_holes_only_for_files_with_holes(tmp_path) -> None:
    """A read-only source image with a block for every byte gets no map of holes (nothing to
    skip, one SEEK_DATA/SEEK_HOLE walk saved); a sparse one does; zero pages are found in both."""
    ps = 4096
    page = bytes(range(256)) * 16
    dense, sparse = tmp_path / "dense.img", tmp_path / "sparse.img"
    dense.write_bytes(page + bytes(ps) + page + bytes(ps))  # zero pages written as zeros
    with open(sparse, "wb") as f:
        f.truncate(4 * ps)
        f.write(page)
        f.seek(2 * ps)
        f.write(page)
    d = RAMBlock.from_file("pc.ram", dense, mode="r")
    s = RAMBlock.from_file("pc.ram", sparse, mode="r")
    try:
        assert d.data_map is None
        assert d.zero_pages_in_run(0, 4) == [ps, 3 * ps]
        if s.data_map is None or s.data_map.count(0) == 0:
            pytest.skip("this file system does not report holes (SEEK_HOLE)")
        assert s.data_map == bytearray([1, 0, 1, 0])
        assert s.zero_pages_in_run(0, 4) == [ps, 3 * ps]
    finally:
        d.close()
        s.close()
