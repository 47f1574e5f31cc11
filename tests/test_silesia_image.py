"""Guest images: page-aligned tiling, determinism, zero ratio, sparse files, the cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from qatmig_engine.errors import CorpusError, ParameterError
from qatmig_engine.silesia import standin
from qatmig_engine.silesia.image import (
    PAGE_SIZE,
    build_guest_image,
    cached_guest_image,
    count_zero_pages,
    guest_image_bytes,
    map_guest_image,
    read_image_info,
    sample_ratios,
)

MIB = 1 << 20


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("QATMIG_CACHE_DIR", str(d))
    return d


@pytest.fixture()
def small_dir(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a").write_bytes(b"A" * 5000)  # 2 pages, the second padded with zeros
    (d / "b").write_bytes(b"B" * 3000)  # 1 page
    (d / "c").write_bytes(b"C" * 4096)  # 1 page
    return d


def _pages(buf: bytes | bytearray) -> list[bytes]:
    return [bytes(buf[i:i + PAGE_SIZE]) for i in range(0, len(buf), PAGE_SIZE)]


def test_files_are_tiled_page_aligned_and_repeated(small_dir: Path) -> None:
    img = guest_image_bytes(10 * PAGE_SIZE, small_dir)
    a1, a2 = b"A" * 4096, b"A" * 904 + bytes(4096 - 904)
    b1, c1 = b"B" * 3000 + bytes(1096), b"C" * 4096
    assert _pages(img) == [a1, a2, b1, c1] * 2 + [a1, a2]


def test_seed_rotates_the_start_page(small_dir: Path) -> None:
    base = _pages(guest_image_bytes(8 * PAGE_SIZE, small_dir))[:4]
    for seed in (1, 2, 3, 5):
        got = _pages(guest_image_bytes(8 * PAGE_SIZE, small_dir, seed=seed))[:4]
        k = base.index(got[0])
        assert got == base[k:] + base[:k]


def test_zero_pages_do_not_consume_corpus_pages(small_dir: Path) -> None:
    img = _pages(guest_image_bytes(64 * PAGE_SIZE, small_dir, zero_ratio=0.5, seed=9))
    zero = bytes(PAGE_SIZE)
    data = [p for p in img if p != zero]
    full = _pages(guest_image_bytes(64 * PAGE_SIZE, small_dir, seed=9))
    # a2 has a zero tail but is not a zero page; the data pages are the corpus in order
    assert data == full[: len(data)]
    assert len(img) - len(data) == 32


def test_same_parameters_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = build_guest_image(tmp_path / "a.img", 4 * MIB, "stand-in", 0.2, seed=0, sha256=True)
    b = build_guest_image(tmp_path / "b.img", 4 * MIB, "stand-in", 0.2, seed=0, sha256=True)
    c = build_guest_image(tmp_path / "c.img", 4 * MIB, "stand-in", 0.2, seed=1, sha256=True)
    assert a.sha256 == b.sha256 != c.sha256
    mem = guest_image_bytes(4 * MIB, "stand-in", 0.2, seed=0)
    assert hashlib.sha256(mem).hexdigest() == a.sha256
    assert (tmp_path / "a.img").read_bytes() == mem


def test_image_starts_with_the_first_corpus_file() -> None:
    img = guest_image_bytes(2 * MIB, "stand-in")
    assert bytes(img) == standin.generate_file("dickens", 2 * MIB)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.75, 1.0])
def test_zero_ratio_is_honoured_everywhere(tmp_path: Path, ratio: float) -> None:
    size = 8 * MIB
    pages = size // PAGE_SIZE
    info = build_guest_image(tmp_path / "g.img", size, "stand-in", ratio, seed=4)
    assert info.pages == pages
    # the stand-in's first pages hold no natural zero page, so the count is exact
    assert info.zero_pages == int(ratio * pages)
    assert count_zero_pages(tmp_path / "g.img") == info.zero_pages
    arr = np.fromfile(tmp_path / "g.img", dtype=np.uint64).reshape(pages, -1)
    zero = ~np.any(arr != 0, axis=1)
    for run in range(0, pages, 256):  # and locally: within one page of the share per run
        assert abs(int(zero[run:run + 256].sum()) - ratio * 256) <= 1


def test_file_is_sparse_where_zero(tmp_path: Path) -> None:
    p = tmp_path / "sparse.img"
    info = build_guest_image(p, 8 * MIB, "stand-in", zero_ratio=0.5, seed=2)
    st = os.stat(p)
    assert st.st_size == 8 * MIB
    allocated = st.st_blocks * 512
    if allocated >= st.st_size:
        pytest.skip(f"{tmp_path} does not keep holes (filesystem without sparse files)")
    data_bytes = (info.pages - info.zero_pages) * PAGE_SIZE
    assert allocated <= data_bytes + 64 * 1024  # zero pages were never written
    all_zero = build_guest_image(tmp_path / "z.img", 4 * MIB, "stand-in", zero_ratio=1.0)
    assert all_zero.zero_pages == all_zero.pages
    assert os.stat(tmp_path / "z.img").st_blocks == 0


def test_sidecar_describes_the_image(tmp_path: Path) -> None:
    p = tmp_path / "g.img"
    built = build_guest_image(p, 1 * MIB, "stand-in", 0.25, seed=3)
    info = read_image_info(p)
    assert info == built
    assert info.corpus == "stand-in (silesia-standin v1)"
    Path(str(p) + ".json").unlink()
    bare = read_image_info(p)
    assert bare.corpus.startswith("unknown")
    assert bare.zero_pages == built.zero_pages
    with pytest.raises(CorpusError, match="does not exist"):
        read_image_info(tmp_path / "absent.img")


def test_cache_builds_once_per_parameter_set(cache: Path) -> None:
    p1 = cached_guest_image(2 * MIB, "stand-in", 0.1, seed=0)
    mtime = p1.stat().st_mtime_ns
    assert p1.is_relative_to(cache)
    assert cached_guest_image(2 * MIB, "stand-in", 0.1, seed=0) == p1
    assert p1.stat().st_mtime_ns == mtime
    others = {cached_guest_image(2 * MIB, "stand-in", 0.1, seed=1),
              cached_guest_image(2 * MIB, "stand-in", 0.2, seed=0),
              cached_guest_image(3 * MIB, "stand-in", 0.1, seed=0)}
    assert p1 not in others and len(others) == 3
    with map_guest_image(2 * MIB, "stand-in", 0.1, seed=0) as m:
        assert m[:] == p1.read_bytes()


def test_dir_corpus_key_follows_its_content(cache: Path, small_dir: Path) -> None:
    p1 = cached_guest_image(64 * 1024, small_dir)
    (small_dir / "b").write_bytes(b"b" * 3001)
    p2 = cached_guest_image(64 * 1024, small_dir)
    assert p1 != p2
    assert read_image_info(p2).corpus == f"dir:{small_dir.resolve()}"


@pytest.mark.parametrize("size, ratio, seed, match", [
    (1000, 0.0, 0, "multiple of 4096"), (0, 0.0, 0, "multiple"), (4096, 1.5, 0, "zero ratio"),
    (4096, -0.1, 0, "zero ratio"), (4096, 0.0, -1, "seed")])
def test_bad_parameters_are_parameter_errors(size, ratio, seed, match) -> None:
    with pytest.raises(ParameterError, match=match):
        guest_image_bytes(size, "stand-in", ratio, seed)


def test_build_failure_leaves_no_partial_file(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"is neither stand-in"):
        build_guest_image(tmp_path / "g.img", 4096, tmp_path / "absent-corpus")
    assert list(tmp_path.iterdir()) == []


def test_sample_ratios_leave_zero_pages_out(tmp_path: Path) -> None:
    dense = guest_image_bytes(4 * MIB, "stand-in", 0.0)
    sparse = guest_image_bytes(4 * MIB, "stand-in", 0.5)
    rd = sample_ratios(dense, packets=4)
    rs = sample_ratios(sparse, packets=4)
    assert rd["normal_bytes"] == 4 * 128 * PAGE_SIZE
    pages = np.frombuffer(sparse, dtype=np.uint64).reshape(-1, PAGE_SIZE // 8)
    nonzero = np.any(pages != 0, axis=1)
    windows = [0, 298, 597, 896]  # 4 windows of 128 pages spread evenly over 1024
    assert rs["normal_bytes"] == sum(int(nonzero[w:w + 128].sum()) for w in windows) * PAGE_SIZE
    assert abs(rs["normal_bytes"] / rd["normal_bytes"] - 0.5) < 0.05
    for codec in ("zlib-1", "zlib-9", "zstd-1"):
        assert 1.5 < rd["ratios"][codec] < 4  # dickens-like text
    assert sample_ratios(bytes(2 * MIB), packets=2)["ratios"]["zlib-1"] is None
