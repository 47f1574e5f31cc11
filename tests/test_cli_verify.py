"""``qatmig verify SRC DST``: ``verified`` for a migration between two processes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

MiB = 1 << 20
PAGE = 4096
QATMIG = [sys.executable, "-m", "qatmig_engine.cli"]


def _qatmig(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QATMIG, *args], capture_output=True, text=True, timeout=timeout)


def _image(path: Path, size: int = MiB) -> Path:
    data = bytearray(hashlib.sha256(b"seed").digest() * (size // 32))
    data[5 * PAGE : 6 * PAGE] = bytes(PAGE)  # one zero page
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """src.img sent by `qatmig send` to `qatmig listen` (two processes) into dst.img, with
    both --json reports."""
    d = tmp_path_factory.mktemp("verify")
    src = _image(d / "src.img")
    listen = subprocess.Popen(
        [*QATMIG, "listen", "--listen", "127.0.0.1:0", "--guest-image", str(d / "dst.img"),
         "--guest-size", "1M", "--json", "--quiet", "--timeout", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert listen.stderr is not None
        line = listen.stderr.readline()
        port = line.rsplit(":", 1)[1].strip()
        sent = _qatmig("send", f"127.0.0.1:{port}", "--guest-image", str(src), "--json",
                       "--quiet", "--timeout", "20")
        out, err = listen.communicate(timeout=60)
    finally:
        if listen.poll() is None:
            listen.kill()
            listen.wait()
    assert sent.returncode == 0, sent.stderr
    assert listen.returncode == 0, err
    (d / "src.json").write_text(sent.stdout)
    (d / "dst.json").write_text(out)
    return d


def test_images_of_a_completed_migration_verify(migrated: Path) -> None:
    r = _qatmig("verify", str(migrated / "src.img"), str(migrated / "dst.img"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "verified: all 256 pages are equal"


def test_json_reports_of_both_ends_verify(migrated: Path) -> None:
    r = _qatmig("verify", str(migrated / "src.json"), str(migrated / "dst.json"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verified"] is True and out["reason"] == "sha256 digests are equal"
    expected = hashlib.sha256((migrated / "src.img").read_bytes()).hexdigest()
    assert out["source"]["sha256"] == expected


def test_a_destination_missing_a_page_is_not_verified(migrated: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.img"
    data = bytearray((migrated / "dst.img").read_bytes())
    data[9 * PAGE : 10 * PAGE] = bytes(PAGE)  # the page never arrived
    bad.write_bytes(bytes(data))
    r = _qatmig("verify", str(migrated / "src.img"), str(bad), "--json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["verified"] is False
    assert out["differing_pages"] == 1 and out["differing_offsets"] == [9 * PAGE]
    assert out["zeroed_pages"] == 1
    assert r.stderr == ("qatmig: error: destination differs from the source: 1 of 256 pages "
                        "differ (offsets 0x9000); 1 of them are zero at the destination\n")
    # The same destination against the source's reported digest.
    r = _qatmig("verify", str(migrated / "src.json"), str(bad))
    assert r.returncode == 1 and "NOT verified: sha256 digests differ" in r.stdout


def test_sizes_that_differ_are_not_verified(migrated: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.img"
    short.write_bytes((migrated / "dst.img").read_bytes()[: MiB // 2])
    r = _qatmig("verify", str(migrated / "src.img"), str(short))
    assert r.returncode == 1
    assert "sizes differ: source 1048576 bytes, destination 524288 bytes" in r.stdout


def test_a_digest_literal_and_bad_arguments(migrated: Path) -> None:
    digest = hashlib.sha256((migrated / "src.img").read_bytes()).hexdigest()
    assert _qatmig("verify", digest, str(migrated / "dst.img")).returncode == 0
    r = _qatmig("verify", str(migrated / "src.img"), "nonexistent.img")
    assert r.returncode == 2
    assert r.stderr.startswith("qatmig: error: destination 'nonexistent.img' is neither")
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
