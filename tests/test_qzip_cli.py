"""``qatmig qzip``: files and pipes in gzip-ext, gzip(1) interop, vectors, failure hygiene."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import qz_vectors as qv
from qatmig_engine.cli import main
from qatmig_engine.codecs import qzformat

VECTORS = qv.VECTORS
needs_vectors = pytest.mark.skipif(
    not (VECTORS / "manifest.json").exists(),
    reason=f"QATzip vectors not found at {VECTORS} (set QATMIG_SHARED to the shared data dir; "
    "the recipe-based tests still cover byte identity)",
)
needs_gzip = pytest.mark.skipif(shutil.which("gzip") is None,
                                reason="gzip(1) not installed (apt-get install gzip)")


def _data(n: int = 300_000) -> bytes:
    line = b"qatmig qzip test line %06d with some text to compress\n"
    out = b"".join(line % k for k in range(n // len(line) + 1))[:n]
    return out + os.urandom(4096)


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "qatmig"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "qatmig_engine.cli"]


def test_compress_replaces_file_and_gzip_reads_it(tmp_path: Path) -> None:
    src = tmp_path / "guest.ram"
    data = _data()
    src.write_bytes(data)
    assert main(["qzip", "-q", str(src)]) == 0
    out = tmp_path / "guest.ram.gz"
    assert not src.exists() and out.exists()
    buf = out.read_bytes()
    assert buf[:4] == b"\x1f\x8b\x08\x04" and buf[12:14] == b"QZ"
    assert qzformat.decompress(buf) == data
    if shutil.which("gzip"):
        res = subprocess.run(["gzip", "-dc", str(out)], capture_output=True, timeout=60,
                             check=True)
        assert res.stdout == data
    assert main(["qzip", "-q", "-d", str(out)]) == 0
    assert src.read_bytes() == data and not out.exists()
    assert list(tmp_path.iterdir()) == [src]  # no temporary files left


def test_keep_level_output_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "a.bin"
    data = _data()
    src.write_bytes(data)
    out = tmp_path / "custom.qz"
    assert main(["qzip", "-k", "-L", "9", "-o", str(out), "--json", str(src)]) == 0
    report = json.loads(capsys.readouterr().out)
    (r,) = report["files"]
    assert report["failed"] == 0
    assert r["input_bytes"] == len(data) and r["output_bytes"] == out.stat().st_size
    assert r["level"] == 9 and r["members"] == 1
    assert src.exists()
    assert out.read_bytes()[8] == 2  # XFL of level 9
    assert qzformat.decompress(out.read_bytes()) == data
    if zlib.ZLIB_RUNTIME_VERSION == "1.2.13":
        assert out.read_bytes() == qzformat.compress(data, 9)


def test_big_input_is_several_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qatmig_engine.cli import qzip

    monkeypatch.setattr(qzip, "BLOCK_SIZE", 100_000)
    src = tmp_path / "x"
    data = _data(350_000)
    src.write_bytes(data)
    assert main(["qzip", "-q", "-k", str(src)]) == 0
    infos = qzformat.inspect_members((tmp_path / "x.gz").read_bytes())
    assert [i.header.qz_src_sz for i in infos] == [100_000, 100_000, 100_000, len(data) - 300_000]


@pytest.mark.parametrize("file", sorted(qv.OUTPUTS))
def test_decompress_restores_every_vector(tmp_path: Path, file: str) -> None:
    """``qatmig qzip -d`` restores each libqatzip vector (the shared file, or our byte-identical
    reproduction when the shared data is absent) to its input."""
    gold = qv.library_output(file)
    if gold is None:
        pytest.skip("no shared vectors and this zlib build does not reproduce libqatzip's "
                    "bytes (needs zlib 1.2.13)")
    want = qv.input_bytes(qv.OUTPUTS[file][0])
    # work on a copy: the shared vectors must never be touched
    src = tmp_path / file
    src.write_bytes(gold)
    out = tmp_path / (file + ".out")
    assert main(["qzip", "-q", "-d", "-o", str(out), str(src)]) == 0
    assert out.read_bytes() == want
    assert src.exists()  # -o keeps the input
    # default naming: X.gz -> X, input removed
    assert main(["qzip", "-q", "-d", str(src)]) == 0
    assert not src.exists()
    assert (tmp_path / file[:-3]).read_bytes() == want
    if (VECTORS / "outputs" / file).exists():
        assert (VECTORS / "outputs" / file).read_bytes() == gold  # untouched


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "trailing"])
def test_corrupt_input_fails_cleanly(tmp_path: Path, damage: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = _data()
    good = qzformat.compress(data, 1)
    bad = {
        "truncate": good[: len(good) // 2],
        "flip": good[:500] + bytes([good[500] ^ 0x55]) + good[501:],
        "garbage": b"this is not gzip at all",
        "trailing": good + b"\x00junk",
    }[damage]
    src = tmp_path / "in.gz"
    src.write_bytes(bad)
    assert main(["qzip", "-q", "-d", str(src)]) == 1
    err = capsys.readouterr().err
    assert "in.gz: corrupt input:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gz"]  # input kept, no partial file


def test_refuses_to_overwrite_and_bad_names(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    (tmp_path / "f.gz").write_bytes(b"keep me")
    assert main(["qzip", "-q", str(src)]) == 1
    assert "already exists (use -f to overwrite)" in capsys.readouterr().err
    assert (tmp_path / "f.gz").read_bytes() == b"keep me" and src.exists()
    assert main(["qzip", "-q", "-f", str(src)]) == 0
    assert qzformat.decompress((tmp_path / "f.gz").read_bytes()) == b"abc"
    other = tmp_path / "g.txt"
    other.write_bytes(b"x")
    assert main(["qzip", "-q", "-d", str(other)]) == 1
    assert "unknown suffix" in capsys.readouterr().err
    assert main(["qzip", "-q", str(tmp_path / "missing")]) == 1
    assert "No such file or directory" in capsys.readouterr().err
    assert main(["qzip", "-L", "0", str(other)]) == 1
    assert "between 1 and 9" in capsys.readouterr().err


def test_several_files_continue_after_a_failure(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b.gz"
    a.write_bytes(b"alpha" * 100)
    b.write_bytes(b"broken")
    assert main(["qzip", "-q", str(a), str(tmp_path / "nope")]) == 1
    assert (tmp_path / "a.gz").exists()


def test_stdin_to_stdout_in_a_real_process(tmp_path: Path) -> None:
    data = _data()
    comp = subprocess.run([*_cli(), "qzip"], input=data, capture_output=True, timeout=60)
    assert comp.returncode == 0, comp.stderr
    assert qzformat.decompress(comp.stdout) == data
    back = subprocess.run([*_cli(), "qzip", "-d", "-"], input=comp.stdout, capture_output=True,
                          timeout=60)
    assert back.returncode == 0 and back.stdout == data
    bad = subprocess.run([*_cli(), "qzip", "-d"], input=comp.stdout[:-3], capture_output=True,
                         timeout=60)
    assert bad.returncode == 1 and b"corrupt input" in bad.stderr and b"truncated" in bad.stderr


@needs_gzip
def test_reads_what_gzip_writes(tmp_path: Path) -> None:
    src = tmp_path / "plain"
    data = _data()
    src.write_bytes(data)
    subprocess.run(["gzip", "-k", "-9", str(src)], check=True, timeout=60)  # FNAME set
    out = tmp_path / "back"
    assert main(["qzip", "-q", "-d", "-o", str(out), str(tmp_path / "plain.gz")]) == 0
    assert out.read_bytes() == data


def test_help_teaches() -> None:
    res = subprocess.run([*_cli(), "qzip", "--help"], capture_output=True, timeout=60, text=True)
    assert res.returncode == 0
    assert "examples:" in res.stdout and "gzip -d" in res.stdout


def test_empty_file_is_one_34_byte_member(tmp_path: Path) -> None:
    """libqatzip writes QZ_COMPRESSED_SZ_OF_EMPTY_FILE (34) bytes for no input, not nothing."""
    src = tmp_path / "empty"
    src.write_bytes(b"")
    assert main(["qzip", "-q", "-k", str(src)]) == 0
    out = (tmp_path / "empty.gz").read_bytes()
    assert len(out) == qzformat.QZ_COMPRESSED_SZ_OF_EMPTY_FILE
    assert out == qzformat.compress(b"")
    assert zlib.decompress(out, 31) == b""
    src.unlink()
    assert main(["qzip", "-q", "-d", str(tmp_path / "empty.gz")]) == 0
    assert src.read_bytes() == b""
