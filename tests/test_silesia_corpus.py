"""Real-corpus loading: size + sha256 verification, zips, directories, the verified download
(from a local HTTP server on 127.0.0.1 only), and the Calgary/Canterbury control."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qatmig_engine.errors import CorpusError
from qatmig_engine.silesia import corpus as corpus_mod
from qatmig_engine.silesia.corpus import (
    REAL_NAME,
    STANDIN_NAME,
    download_silesia,
    extract_silesia,
    open_corpus,
    verify_directory,
    verify_zip,
)
from qatmig_engine.silesia.manifest import SilesiaFile
from qatmig_engine.silesia.ratios import compressed_size
from shared_data import shared_dir

REPO = Path(__file__).resolve().parent.parent


def _files() -> dict[str, bytes]:
    return {
        "alpha": b"the quick brown fox " * 300,
        "beta": bytes(range(256)) * 20,
        "gamma": b"\x00" * 5000 + b"end",
    }


def _manifest(files: dict[str, bytes]) -> tuple[SilesiaFile, ...]:
    """A test-only manifest in the real one's shape, so the same checks run on it."""
    return tuple(SilesiaFile(n, len(d), hashlib.sha256(d).hexdigest(), "test", "test", 1.0, 1.0)
                 for n, d in files.items())


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("QATMIG_CACHE_DIR", str(d))
    monkeypatch.delenv("QATMIG_SILESIA", raising=False)
    monkeypatch.delenv("QATMIG_SILESIA_URL", raising=False)
    return d


def _write_dir(d: Path, files: dict[str, bytes]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for n, data in files.items():
        (d / n).write_bytes(data)
    return d


def _write_zip(p: Path, files: dict[str, bytes], prefix: str = "silesia/") -> Path:
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in files.items():
            z.writestr(prefix + n, data)
    return p


# --- directories ---------------------------------------------------------------------------


def test_directory_verifies(tmp_path: Path) -> None:
    files = _files()
    d = _write_dir(tmp_path / "s", files)
    verify_directory(d, _manifest(files))
    c = open_corpus(d, manifest=_manifest(files))
    assert c.name == REAL_NAME
    assert c.files() == list(files)
    assert c.read("beta") == files["beta"]
    assert c.read("alpha", 10) == files["alpha"][:10]


def test_corrupted_file_is_named(tmp_path: Path) -> None:
    files = _files()
    m = _manifest(files)
    bad = dict(files, beta=files["beta"][:-1] + b"X")  # same size, other content
    d = _write_dir(tmp_path / "s", bad)
    with pytest.raises(CorpusError, match="'beta'.*sha256"):
        verify_directory(d, m)
    with pytest.raises(CorpusError, match="'beta'"):
        open_corpus(d, manifest=m)


def test_wrong_size_and_missing_file_are_named(tmp_path: Path) -> None:
    files = _files()
    m = _manifest(files)
    d = _write_dir(tmp_path / "s", dict(files, gamma=b"short"))
    with pytest.raises(CorpusError, match="'gamma'.*5 bytes"):
        verify_directory(d, m)
    (d / "alpha").unlink()
    with pytest.raises(CorpusError, match="'alpha' is missing"):
        verify_directory(d, m)


def test_directory_with_a_silesia_name_is_checked_against_the_real_table(tmp_path) -> None:
    d = _write_dir(tmp_path / "fake", {"dickens": b"not dickens"})
    with pytest.raises(CorpusError, match="'dickens'"):
        open_corpus(d)


def test_any_other_directory_is_a_dir_corpus(tmp_path: Path) -> None:
    d = _write_dir(tmp_path / "mine", {"b.txt": b"bb", "a.txt": b"aaa", "empty": b""})
    c = open_corpus(d)
    assert c.name == f"dir:{d.resolve()}"
    assert c.files() == ["a.txt", "b.txt"]
    with pytest.raises(CorpusError, match="no non-empty files"):
        open_corpus(_write_dir(tmp_path / "none", {"e": b""}))


def test_unknown_spec(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="neither"):
        open_corpus(tmp_path / "nope")


# --- zips and the cache --------------------------------------------------------------------


def test_zip_verifies_and_reads_without_extracting(tmp_path: Path) -> None:
    files = _files()
    m = _manifest(files)
    z = _write_zip(tmp_path / "silesia.zip", files)
    assert verify_zip(z, m) == {n: "silesia/" + n for n in files}
    c = open_corpus(z, manifest=m)
    assert c.name == REAL_NAME
    assert c.read("gamma") == files["gamma"]
    assert b"".join(c.iter_chunks("alpha", 100)) == files["alpha"][100:]
    out = extract_silesia(z, tmp_path / "x", manifest=m)
    verify_directory(out, m)


def test_corrupted_zip_member_is_named(tmp_path: Path) -> None:
    files = _files()
    z = _write_zip(tmp_path / "s.zip", dict(files, alpha=files["alpha"].upper()))
    with pytest.raises(CorpusError, match="'alpha'.*sha256"):
        verify_zip(z, _manifest(files))
    (tmp_path / "junk.zip").write_bytes(b"PK not a zip")
    with pytest.raises(CorpusError, match="cannot read"):
        verify_zip(tmp_path / "junk.zip", _manifest(files))


def test_silesia_absent_says_what_to_do(cache: Path) -> None:
    with pytest.raises(CorpusError, match="QATMIG_SILESIA"):
        open_corpus("silesia")
    assert open_corpus("auto").name == STANDIN_NAME
    assert open_corpus("stand-in").name == STANDIN_NAME


def test_env_points_at_the_corpus(cache: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QATMIG_SILESIA", str(tmp_path / "missing"))
    with pytest.raises(CorpusError, match="does not exist"):
        open_corpus("silesia")
    files = _files()
    z = _write_zip(tmp_path / "s.zip", files)
    monkeypatch.setenv("QATMIG_SILESIA", str(z))
    assert open_corpus("silesia", manifest=_manifest(files)).name == REAL_NAME
    assert open_corpus("auto", manifest=_manifest(files)).name == REAL_NAME


# --- download from 127.0.0.1 ---------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        t.join(timeout=5)


def test_download_verifies_and_caches(http_root, cache: Path) -> None:
    url, root = http_root
    files = _files()
    m = _manifest(files)
    _write_zip(root / "silesia.zip", files)
    got = download_silesia(f"{url}/silesia.zip", manifest=m, timeout=10, quiet=True)
    assert got == cache / "silesia.zip"
    assert verify_zip(got, m)
    # the cached copy is what "silesia" finds from now on
    assert corpus_mod.find_silesia() == got
    assert open_corpus("silesia", manifest=m).read("beta") == files["beta"]


def test_download_url_from_env(http_root, cache: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = http_root
    files = _files()
    _write_zip(root / "mirror.zip", files)
    monkeypatch.setenv("QATMIG_SILESIA_URL", f"{url}/mirror.zip")
    dest = tmp_path / "elsewhere" / "s.zip"
    assert download_silesia(dest=dest, manifest=_manifest(files), timeout=10) == dest


def test_download_of_a_bad_zip_keeps_nothing(http_root, cache: Path) -> None:
    url, root = http_root
    files = _files()
    _write_zip(root / "silesia.zip", dict(files, gamma=b"\x01" * len(files["gamma"])))
    with pytest.raises(CorpusError, match="'gamma'"):
        download_silesia(f"{url}/silesia.zip", manifest=_manifest(files), timeout=10)
    assert not (cache / "silesia.zip").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_download_errors_are_corpus_errors(http_root, cache: Path) -> None:
    url, _ = http_root
    with pytest.raises(CorpusError, match="cannot download"):
        download_silesia(f"{url}/absent.zip", manifest=_manifest(_files()), timeout=10)
    with pytest.raises(CorpusError, match="cannot download"):
        download_silesia("notaurl", manifest=_manifest(_files()), timeout=10)


# --- Calgary / Canterbury control ----------------------------------------------------------


def _shared() -> Path | None:
    return shared_dir("corpora/README.md")


@pytest.fixture(scope="module")
def control() -> Path:
    shared = _shared()
    if shared is None:
        pytest.skip("Calgary/Canterbury control not found: set QATMIG_SHARED to the shared "
                    "directory holding corpora/ (or place it at ../shared next to the repo)")
    return shared / "corpora"


def test_control_corpora_match_their_published_sha256(control: Path) -> None:
    table = re.findall(r"\| `((?:calgary|canterbury)/[^`]+)` \| ([\d,]+) \| `([0-9a-f]{64})`",
                       (control / "README.md").read_text())
    assert len(table) == 29
    for rel, size, digest in table:
        data = (control / rel).read_bytes()
        assert len(data) == int(size.replace(",", "")), rel
        assert hashlib.sha256(data).hexdigest() == digest, rel


def test_control_ratios_match_the_published_measurement(control: Path) -> None:
    """performance-anchors.md §2: Calgary+Canterbury in 512 KiB chunks, zlib-1 2.84 and
    zstd-1 3.18 — the ratio code measures real data the way the anchors did."""
    data = b"".join(open_corpus(control / d).read(n)
                    for d in ("calgary", "canterbury")
                    for n in open_corpus(control / d).files())
    chunks = [data[i:i + (512 << 10)] for i in range(0, len(data), 512 << 10)]
    for codec, published in (("zlib-1", 2.84), ("zstd-1", 3.18)):
        ratio = len(data) / sum(compressed_size(c, codec) for c in chunks)
        assert abs(ratio / published - 1) < 0.03, (codec, ratio)


def test_a_file_changed_after_verification_is_caught(tmp_path: Path) -> None:
    files = _files()
    m = _manifest(files)
    d = _write_dir(tmp_path / "s", files)
    assert open_corpus(d, manifest=m).name == REAL_NAME
    assert open_corpus(d, manifest=m).name == REAL_NAME  # remembered, not re-hashed
    (d / "alpha").write_bytes(files["alpha"].replace(b"fox", b"cat"))
    with pytest.raises(CorpusError, match="'alpha'"):
        open_corpus(d, manifest=m)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_zip_is_only_ever_a_corpus_error(data) -> None:
    """A download can arrive damaged anywhere: verification fails cleanly, never otherwise."""
    import io
    import tempfile

    files = _files()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items():
            z.writestr(n, d)
    raw = bytearray(buf.getvalue())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    if data.draw(st.booleans()):
        raw = raw[:cut]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.zip"
        p.write_bytes(bytes(raw))
        try:
            verify_zip(p, _manifest(files))
        except CorpusError:
            pass
