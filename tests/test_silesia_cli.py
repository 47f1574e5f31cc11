"""``qatmig guest``: build, info, corpus (as a user runs them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from qatmig_engine.cli import main


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QATMIG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("QATMIG_SILESIA", raising=False)


def test_build_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "g.img"
    assert main(["guest", "build", "--size", "2M", "--zero-ratio", "0.25", "--seed", "3",
                 "--sha256", "-o", str(img)]) == 0
    out = capsys.readouterr().out
    assert "128 zero pages" in out and "stand-in (silesia-standin v1)" in out
    assert img.stat().st_size == 2 << 20
    assert main(["guest", "info", str(img), "--json", "--packets", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["zero_pages"] == info["zero_pages_scanned"] == 128
    assert info["corpus"] == "stand-in (silesia-standin v1)"
    assert set(info["sample"]["ratios"]) == {"zlib-1", "zlib-9", "zstd-1"}
    assert main(["guest", "info", str(img)]) == 0
    text = capsys.readouterr().out
    assert "ratio zstd-1" in text and "zero pages" in text


def test_build_json_and_cached(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guest", "build", "--size", "1M", "--cached", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["guest", "build", "--size", "1M", "--cached"]) == 0
    assert capsys.readouterr().out.strip() == first["path"]


def test_build_from_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "c"
    d.mkdir()
    (d / "x").write_bytes(b"hello world\n" * 1000)
    assert main(["guest", "build", "--size", "64K", "--corpus", str(d), "-o",
                 str(tmp_path / "d.img"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["corpus"] == f"dir:{d.resolve()}"


def test_errors_say_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guest", "build", "--size", "1M", "--corpus", "silesia", "-o",
                 str(tmp_path / "x.img")]) == 1
    assert "QATMIG_SILESIA" in capsys.readouterr().err
    assert main(["guest", "build", "--size", "1000", "-o", str(tmp_path / "y.img")]) == 1
    assert "multiple of 4096" in capsys.readouterr().err
    assert main(["guest", "info", str(tmp_path / "absent.img")]) == 1
    assert not list(tmp_path.glob("*.img"))


def test_corpus_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guest", "corpus", "--sample", "64K", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [f["file"] for f in res["files"]][:3] == ["dickens", "mozilla", "mr"]
    assert res["real_corpus"] is None
    assert all(set(f["standin"]) == {"zlib-1", "zlib-9", "zstd-1"} for f in res["files"])
    assert main(["guest", "corpus", "--sample", "0"]) == 0
    assert "gzip --best" in capsys.readouterr().out


def test_info_without_sidecar_is_valid_json(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "bare.img"
    img.write_bytes(bytes(8192) + b"x" * 4096)
    assert main(["guest", "info", str(img), "--json", "--no-ratios"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["zero_pages"] == 2 and info["seed"] is None and info["zero_ratio"] is None
    assert main(["guest", "info", str(img), "--no-ratios"]) == 0
    assert "unknown" in capsys.readouterr().out


def _qatmig(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI as a user meets it: a separate process, its exit status and its stderr."""
    return subprocess.run([sys.executable, "-m", "qatmig_engine.cli", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("content", [b"hello\n", b"", b"\0" * 4097],
                         ids=["text", "empty", "partial-page"])
def test_info_on_a_file_that_is_not_an_image(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "f").write_bytes(content)
    r = _qatmig("guest", "info", "f", cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"qatmig: error: f is not a guest RAM image: {len(content)} bytes is "
                        "not a whole number of 4096-byte pages (and it has no f.json sidecar)\n")


def test_info_on_a_raw_ram_dump_without_sidecar(tmp_path: Path) -> None:
    (tmp_path / "ram.img").write_bytes(b"\0" * 4096 + b"\1" * 4096)
    r = _qatmig("guest", "info", "ram.img", "--json", "--no-ratios", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["pages"] == 2 and info["zero_pages_scanned"] == 1


def test_build_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    env_args = ("guest", "build", "--size", "64K", "-q", "-o", "g.img")
    (tmp_path / "g.img").write_bytes(b"keep me")
    r = _qatmig(*env_args, cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == ("qatmig: error: g.img exists: pass --force to overwrite it, or choose "
                        "another -o FILE\n")
    assert (tmp_path / "g.img").read_bytes() == b"keep me"
    r = _qatmig(*env_args, "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g.img").stat().st_size == 64 << 10
