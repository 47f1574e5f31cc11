"""The Silesia stand-in: names, sizes, determinism (sha256 pin) and the ratio targets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from qatmig_engine.errors import CorpusError
from qatmig_engine.silesia import standin
from qatmig_engine.silesia.manifest import (
    PUBLISHED_TOTALS,
    RATIO_CODECS,
    SILESIA_FILES,
    SILESIA_TOTAL_SIZE,
)
from qatmig_engine.silesia.ratios import compressed_size

PIN = Path(__file__).resolve().parent.parent / "fixtures" / "silesia" / "manifest.json"
SAMPLE = 2 << 20  # bytes of each file the ratio targets are checked on
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def pin() -> dict:
    return json.loads(PIN.read_text())


@pytest.fixture(scope="module")
def sample_sizes() -> dict[str, dict[str, int]]:
    """Compressed sizes of the first 2 MiB of every stand-in file, per codec."""
    out = {}
    for f in SILESIA_FILES:
        data = standin.generate_file(f.name, SAMPLE)
        out[f.name] = {"raw": len(data), **{c: compressed_size(data, c) for c in RATIO_CODECS}}
    return out


def test_names_and_sizes_are_silesias() -> None:
    assert [f.name for f in SILESIA_FILES] == list(standin.KNOBS)
    assert sum(standin.file_size(f.name) for f in SILESIA_FILES) == SILESIA_TOTAL_SIZE
    for f in SILESIA_FILES:
        assert standin.file_size(f.name) == f.size


def test_last_segment_has_the_exact_tail_length() -> None:
    f = SILESIA_FILES[0]
    last = (f.size - 1) // standin.SEGMENT
    assert len(standin.segment(f.name, last)) == f.size - last * standin.SEGMENT


def test_prefix_does_not_depend_on_the_limit() -> None:
    for name in ("dickens", "mozilla", "nci"):
        long = standin.generate_file(name, standin.SEGMENT + 5000)
        assert standin.generate_file(name, 1234) == long[:1234]
        assert b"".join(standin.iter_file(name, standin.SEGMENT + 5000)) == long


def test_segments_are_pinned_by_sha256(pin: dict) -> None:
    assert pin["generator"] == standin.CORPUS_NAME
    assert pin["knobs"] == standin.KNOBS, "KNOBS changed: re-run bench_standin.py --pin"
    for f in SILESIA_FILES:
        p = pin["files"][f.name]
        first = standin.segment(f.name, 0)
        assert hashlib.sha256(first).hexdigest() == p["first_segment_sha256"], f.name
        last = standin.segment(f.name, p["last_segment"])
        assert hashlib.sha256(last).hexdigest() == p["last_segment_sha256"], f.name


@pytest.mark.parametrize("name", ["xml", "ooffice"])
def test_whole_file_is_pinned_by_sha256(pin: dict, name: str) -> None:
    data = standin.generate_file(name)
    assert len(data) == pin["files"][name]["size"]
    assert hashlib.sha256(data).hexdigest() == pin["files"][name]["sha256"]


def test_a_different_knob_gives_different_bytes() -> None:
    assert standin.segment("dickens", 0, knob=0) != standin.segment("dickens", 0)


def test_bad_names_and_segments_are_corpus_errors() -> None:
    with pytest.raises(CorpusError, match="not a Silesia file"):
        standin.generate_file("bible.txt")
    with pytest.raises(CorpusError, match="outside"):
        standin.segment("xml", 99)


@pytest.mark.parametrize("f", SILESIA_FILES, ids=lambda f: f.name)
def test_zlib9_ratio_per_file_within_5_percent(f, sample_sizes) -> None:
    s = sample_sizes[f.name]
    ratio = s["raw"] / s["zlib-9"]
    assert abs(ratio / f.gzip_best - 1) <= TOLERANCE, (
        f"{f.name}: zlib-9 {ratio:.3f} vs published gzip --best {f.gzip_best}")


@pytest.mark.parametrize("codec", RATIO_CODECS)
def test_corpus_ratio_within_5_percent(codec, sample_sizes) -> None:
    # each file weighted by its real size, as in silesia.tar
    compressed = sum(f.size * sample_sizes[f.name][codec] / sample_sizes[f.name]["raw"]
                     for f in SILESIA_FILES)
    ratio = SILESIA_TOTAL_SIZE / compressed
    assert abs(ratio / PUBLISHED_TOTALS[codec] - 1) <= TOLERANCE, (
        f"{codec}: {ratio:.3f} vs published {PUBLISHED_TOTALS[codec]}")


def test_write_corpus(tmp_path: Path) -> None:
    paths = standin.write_corpus(tmp_path, limit=10000, names=("xml", "sao"))
    assert [p.name for p in paths] == ["xml", "sao"]
    assert paths[0].read_bytes() == standin.generate_file("xml", 10000)
