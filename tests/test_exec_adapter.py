"""``exec:PROGRAM``: the command-line contract, as qatmig implements it and as the suite
enforces it on programs that break it."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_qatmig import exec_adapter
from pytest_qatmig.adapters import ImplementationError, PairSpec, load_implementation
from pytest_qatmig.roles import RoleContext, RolePair

QATMIG = [sys.executable, "-m", "qatmig_engine.cli"]


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _guest(tmp_path: Path) -> Path:
    guest = tmp_path / "guest.img"
    guest.write_bytes((bytes(range(256)) * 16 + bytes(4096)) * 64)  # 512 KiB, half zero pages
    return guest


def test_qatmig_capabilities_follow_the_contract() -> None:
    cp = subprocess.run([*QATMIG, "capabilities", "--json"], capture_output=True, text=True,
                        check=True)
    info = json.loads(cp.stdout)
    assert info["contract"] == 1 and info["name"] == "qatmig"
    assert {"none", "zlib", "zstd", "dialect:qemu-7.2", "max-bandwidth"} <= set(
        info["capabilities"])


@pytest.mark.parametrize(("args", "message"), [
    (["--multifd-channels", "0"], "multifd_channels"),
    (["--multifd-compression", "zlib", "--multifd-zlib-level", "10"], "between 0 and 9"),
    (["--multifd-compression", "qatzip", "--dialect", "qemu-7.2"], "qemu-7.2"),
])
def test_qatmig_check_refuses_with_one_line_and_a_nonzero_status(args, message) -> None:  # type: ignore[no-untyped-def]
    cp = subprocess.run([*QATMIG, "check", *args, "--quiet"], capture_output=True, text=True)
    assert cp.returncode != 0
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in cp.stderr
    ok = subprocess.run([*QATMIG, "check", "--multifd-compression", "zstd", "--quiet"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and not ok.stderr


def test_exec_validate_raises_value_error_with_the_programs_text() -> None:
    impl = load_implementation("exec:qatmig")
    with pytest.raises(ValueError, match="between 0 and 20"):
        impl.validate(PairSpec(compression="zstd", level=21, dialect="qemu-9.2"))
    impl.validate(PairSpec(compression="zstd", level=20, dialect="qemu-9.2"))


def test_exec_of_a_missing_program_is_a_clear_error() -> None:
    with pytest.raises(ImplementationError, match="not an executable file or a program on PATH"):
        load_implementation("exec:/nonexistent/impl")


def test_exec_program_without_capabilities_json_is_refused(tmp_path: Path) -> None:
    prog = _script(tmp_path / "impl.sh", "echo 'I am a VMM'\n")
    with pytest.raises(ImplementationError, match="without one JSON object on stdout"):
        load_implementation(f"exec:{prog}")


def _wrapper(tmp_path: Path, body: str) -> Path:
    """qatmig through a script that changes one thing (``body`` runs after qatmig)."""
    return _script(tmp_path / "impl.sh",
                   f"{shlex_join(QATMIG)} \"$@\"\nrc=$?\n{body}exit $rc\n")


def shlex_join(argv: list[str]) -> str:
    import shlex

    return shlex.join(argv)


def test_a_source_that_exits_nonzero_after_completing_fails_the_migration(tmp_path) -> None:  # type: ignore[no-untyped-def]
    prog = _wrapper(tmp_path, 'if [ "$1" = send ]; then exit 3; fi\n')
    impl = load_implementation(f"exec:{prog}")
    ref = load_implementation("reference")
    work = tmp_path / "work"
    work.mkdir()
    pair = RolePair(impl, ref, PairSpec(channels=2), workdir=work, direction="impl-to-peer")
    result = pair.migrate(_guest(tmp_path), timeout=30)
    assert result.status == "failed"
    assert "source exited 3 with status 'completed'" in result.error
    # The RAM did arrive: the suite's digest says so, but the migration still failed.
    assert result.verified is False and result.destination_digest == result.source_digest
    assert not list(work.iterdir())


def test_exec_pair_migrates_and_the_verdict_is_the_suites(tmp_path) -> None:  # type: ignore[no-untyped-def]
    impl = load_implementation("exec:qatmig")
    work = tmp_path / "work"
    work.mkdir()
    pair = RolePair(impl, impl, PairSpec(channels=2, compression="zlib", level=9),
                    workdir=work)
    result = pair.migrate(_guest(tmp_path), timeout=30)
    assert result.status == "completed" and result.verified is True, result.get("error")
    assert result.wire_errors == [] and result.wire["totals"]["multifd_channels"] == 2
    assert result.source_result["exit_status"] == 0
    assert result.destination_result["exit_status"] == 0


def test_a_destination_that_never_announces_is_ended_with_its_children(  # type: ignore[no-untyped-def]
        tmp_path, monkeypatch) -> None:
    # A wrapper whose child would outlive it if only the wrapper were killed.
    marker = tmp_path / "child.pid"
    prog = _script(tmp_path / "impl.sh",
                   'case "$1" in\n'
                   '  capabilities) echo \'{"capabilities": ["none", "dialect:qemu-9.2"]}\';;\n'
                   f'  listen) sleep 300 & echo $! > {marker}; wait;;\n'
                   "esac\n")
    monkeypatch.setattr(exec_adapter, "START_TIMEOUT", 1.0)
    impl = load_implementation(f"exec:{prog}")
    ram = tmp_path / "dst.ram"
    ram.write_bytes(bytes(1 << 20))
    ctx = RoleContext(ram=ram, ram_size=1 << 20, uuid="1" * 32, workdir=tmp_path, timeout=5)
    with pytest.raises(RuntimeError, match="did not announce 'listening on HOST:PORT'"):
        impl.destination(PairSpec(dialect="qemu-9.2"), ctx)
    child = int(marker.read_text())
    assert _gone(child), f"the wrapper's child {child} outlived it"


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie its (killed) parent left to be reaped by init."""
    import time

    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_exec_spec_finds_programs_beside_this_python(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("qatmig", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("the qatmig console script is not installed beside this Python")
    monkeypatch.setenv("PATH", "/nonexistent")
    impl = load_implementation("exec:qatmig")
    assert "dialect:qemu-9.2" in impl.capabilities()
    assert impl.describe().startswith("exec:qatmig (qatmig ")


def test_exec_yaml_names_one_command_per_subcommand(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Separate programs for the two roles, as a VMM with a source and a destination binary.
    for role in ("dst", "src"):
        word = "listen" if role == "dst" else "send"
        _script(tmp_path / f"vmm-{role}", f"exec {shlex_join(QATMIG)} {word} \"$@\"\n")
    spec = tmp_path / "impl.yaml"
    spec.write_text(
        f"program: {shlex_join(QATMIG)}\n"
        "listen: ./vmm-dst\n"
        "send: [./vmm-src]\n")
    impl = load_implementation(f"exec:{spec}")
    assert impl.commands["listen"] == [str(tmp_path / "vmm-dst")]
    work = tmp_path / "work"
    work.mkdir()
    result = RolePair(impl, impl, PairSpec(channels=2, compression="zstd"),
                      workdir=work).migrate(_guest(tmp_path), timeout=30)
    assert result.status == "completed" and result.verified is True, result.get("error")


@pytest.mark.parametrize(("text", "message"), [
    ("listen: ./x\n", "no command for capabilities, check, send and no 'program'"),
    ("program: qatmig\nlisen: ./x\n", "unknown key(s) lisen"),
    ("[1, 2]\n", "expected a mapping"),
])
def test_a_bad_exec_yaml_is_a_clear_error(tmp_path, text, message) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "impl.yaml"
    spec.write_text(text)
    with pytest.raises(ImplementationError, match=re.escape(message)):
        load_implementation(f"exec:{spec}")
