"""The QEMU 10.0 fetch helper: cache lookup, the wrapper it writes, skip reasons; and the real
fetched QEMU 10.0 when present."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from qatmig_engine.qemu import fetch
from qatmig_engine.qemu.fetch import QemuUnavailable, ensure_qemu10, find_qemu10, qemu10_at
from qatmig_engine.qemu.process import find_qemu, qemu_version
from qemu_support import QEMU10_MARKS, qemu10

FAKE_QEMU = """#!/bin/sh
for a in "$@"; do
  if [ "$a" = --version ]; then echo "QEMU emulator version {version} (fake)"; exit 0; fi
done
echo "modules=$QEMU_MODULE_DIR"
for a in "$@"; do echo "arg=$a"; done
"""


def _fake_root(cache: Path, version: str = "10.0.2") -> Path:
    root = cache / "root"
    binary = root / "usr/bin/qemu-system-x86_64"
    binary.parent.mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu/qemu").mkdir(parents=True)
    binary.write_text(FAKE_QEMU.format(version=version))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return root


def test_nothing_fetched_is_none(tmp_path):
    assert find_qemu10(tmp_path) is None
    assert qemu10_at(tmp_path) is None


def test_a_fetched_root_gives_command_env_and_wrapper(tmp_path):
    root = _fake_root(tmp_path)
    q = find_qemu10(tmp_path)
    assert q is not None and q.version == "QEMU emulator version 10.0.2 (fake)"
    assert q.command("-S") == [str(q.binary), "-L", str(root / "usr/share/qemu"),
                               "-L", str(root / "usr/share/seabios"), "-S"]
    assert q.env({})["QEMU_MODULE_DIR"] == str(root / "usr/lib/x86_64-linux-gnu/qemu")
    # the wrapper runs the binary with QEMU_MODULE_DIR and both -L before the caller's args
    out = subprocess.run([str(q.wrapper), "-machine", "pc"], capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"]}, check=True).stdout.splitlines()
    assert out == [f"modules={q.module_dir}", "arg=-L", f"arg={root}/usr/share/qemu", "arg=-L",
                   f"arg={root}/usr/share/seabios", "arg=-machine", "arg=pc"]
    # a folder works wherever a qemu path goes (the adapter's qemu:PATH, QemuProcess)
    for where in (tmp_path, root):
        assert qemu10_at(where) == q
        assert find_qemu(str(where)) == str(q.wrapper)
    assert "10.0.2" in qemu_version(str(tmp_path))


def test_another_version_is_not_taken(tmp_path):
    _fake_root(tmp_path, version="7.2.22")
    assert find_qemu10(tmp_path) is None
    assert find_qemu(str(tmp_path)) is None


def test_without_apt_it_says_why_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(QemuUnavailable) as info:
        ensure_qemu10(tmp_path / "cache")
    assert "apt-get not found" in str(info.value)
    assert "python -m qatmig_engine.qemu.fetch" in str(info.value)
    assert not (tmp_path / "cache" / "root").exists()


def test_cli_check_reports_a_missing_fetch(tmp_path, capsys):
    assert fetch.main(["--cache", str(tmp_path), "--check"]) == 1
    assert "not fetched" in capsys.readouterr().err


def test_source_uri_comes_from_the_machines_sources(tmp_path, monkeypatch):
    src = tmp_path / "debian.sources"
    src.write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm "
                   "bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\nTypes: deb\n"
                   "URIs: http://mirror.example/debian-security\nSuites: bookworm-security\n")
    monkeypatch.setattr(fetch, "SYSTEM_SOURCES", src)
    assert fetch._system_source() == ("http://mirror.example/debian", "/k.gpg")
    monkeypatch.setattr(fetch, "SYSTEM_SOURCES", tmp_path / "absent")
    assert fetch._system_source() == (fetch.DEFAULT_MIRROR, fetch.DEFAULT_KEYRING)


@pytest.mark.parametrize("_", [pytest.param(0, marks=QEMU10_MARKS)])
def test_the_fetched_qemu_10_runs(_):
    q = qemu10()
    assert q.version.startswith("QEMU emulator version 10.0.")
    assert qemu_version(str(q.wrapper)) == q.version
    out = subprocess.run([str(q.wrapper), "-machine", "help"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert "pc-i440fx-10.0" in out
