"""``--qatmig-impl exec:PROGRAM``: an implementation that is a program, in any language.

The program is driven through the command-line contract of docs/conformance.md ("The exec:
contract"), the one ``qatmig`` itself follows: ``PROGRAM capabilities --json``, ``PROGRAM
check PARAMS``, ``PROGRAM listen --listen 127.0.0.1:0 ... --json`` (announces ``listening on
HOST:PORT`` on stderr) and ``PROGRAM send HOST:PORT ... --json``; one JSON object on stdout,
exit status 0 only when the migration completed. ``PROGRAM`` may carry arguments
(``exec:python3 -m qatmig_engine.cli``) and may be a wrapper script; ``exec:FILE.yaml`` names
one command line per subcommand instead. Nothing of the program is imported: the suite only
runs it.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .adapters import ImplementationError, PairSpec
from .roles import MEASURE_KEY

#: The announcement a destination prints on stderr once it listens.
LISTENING_RE = re.compile(r"listening on \[?([0-9A-Za-z.:-]+?)\]?:(\d+)\s*$")
#: Seconds a program may take to answer ``capabilities``/``check`` or to start listening.
START_TIMEOUT = 30.0
#: Extra seconds beyond the idle timeout a finished end may take to exit.
EXIT_GRACE = 30.0


def _parse_json(out: str) -> dict[str, Any] | None:
    """The one JSON object on stdout (pretty-printed or on one line), else None."""
    text = out.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


class _Proc:
    """A child in its own session (so a wrapper script's children end with it), its output
    collected by threads (no pipe can fill up), ended by process group on close."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=cwd, start_new_session=True,
        )
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        #: set by wait(): CPU seconds of the whole life (rusage) and when it exited
        self.cpu_total: float | None = None
        self.t_exit: float | None = None
        self.err_event = threading.Event()
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.out, None),
                             name="qatmig-exec-stdout", daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err,
                                                      self.err_event),
                             name="qatmig-exec-stderr", daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream: Any, sink: list[bytes], event: threading.Event | None) -> None:
        fd = stream.fileno()
        while True:
            r, _w, _x = select.select([fd], [], [], 0.2)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            sink.append(chunk)
            if event is not None:
                event.set()
        stream.close()

    @property
    def stdout(self) -> str:
        return b"".join(self.out).decode(errors="replace")

    @property
    def stderr(self) -> str:
        return b"".join(self.err).decode(errors="replace")

    def wait(self, timeout: float) -> int | None:
        """The exit status (None: still running after ``timeout``). Reaped with ``wait4`` so
        that :attr:`cpu_total` (utime+stime of the process and the children it waited for)
        and :attr:`t_exit` are known."""
        deadline = time.monotonic() + timeout
        while self.popen.returncode is None:
            try:
                pid, status, ru = os.wait4(self.popen.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (poll()): no rusage
                self.popen.wait()
                break
            if pid:
                self.t_exit = time.monotonic()
                self.cpu_total = ru.ru_utime + ru.ru_stime
                self.popen.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                return None
            time.sleep(0.005)
        for t in self._readers:
            t.join(5)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.popen.kill()
        self.popen.wait(10)
        for t in self._readers:
            t.join(5)


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime (+ children already reaped) of ``pid`` and every live descendant, from
    /proc: what ``wait4`` will count for the same processes once they exit."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    stack, seen = [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        # fields[0] is stat field 3: utime, stime, cutime, cstime are fields 14-17.
        total += sum(int(x) for x in fields[11:15])
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack += [int(c) for c in f.read().split()]
            except OSError:
                continue
    return total / tick


_TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
#: ESTABLISHED, SYN_SENT, SYN_RECV (include/net/tcp_states.h)
_CONNECTING = {"01", "02", "03"}


def connection_to(port: int) -> bool:
    """Whether a TCP connection to or from local ``port`` exists (not the listener): the
    moment a source connected to its destination, seen from outside both."""
    want = f":{port:04X}"
    for table in _TCP_TABLES:
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[3] in _CONNECTING and (
                            parts[1].endswith(want) or parts[2].endswith(want)):
                        return True
        except OSError:
            continue
    return False


def _result(proc: _Proc, rc: int | None, role: str, timeout: float) -> dict[str, Any]:
    """The end's JSON, with the contract checked: exit 0 exactly when status is completed."""
    err = _last_line(proc.stderr)
    if rc is None:
        return {"status": "failed", "error": f"{role} did not exit within {timeout:g} s "
                f"(killed); stderr: {err}", "exit_status": None}
    data = _parse_json(proc.stdout)
    if data is None:
        return {"status": "failed", "exit_status": rc,
                "error": f"{role} exited {rc} without one JSON object on stdout; stderr: {err}"}
    data = dict(data)
    data["exit_status"] = rc
    status = data.get("status")
    if (rc == 0) != (status == "completed"):
        data["contract_error"] = (f"{role} exited {rc} with status {status!r} (the contract: "
                                  "exit 0 exactly when the migration completed)")
        data["status"] = "failed"
        data["error"] = data["contract_error"]
    elif rc != 0 and not data.get("error"):
        data["error"] = err or f"{role} exited {rc}"
    return data


def _connected(proc: _Proc, port: int, timeout: float) -> tuple[float, float] | None:
    """Wait until the source connects to ``port``; then its CPU so far and the time (None
    if it exited or the wait timed out first). Start-up before the connection is excluded,
    as QEMU's is (its CPU counts from ``migrate``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.popen.returncode is None:
        if connection_to(port):
            return tree_cpu_seconds(proc.popen.pid), time.monotonic()
        try:
            pid, status, ru = os.wait4(proc.popen.pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid:
            proc.t_exit = time.monotonic()
            proc.cpu_total = ru.ru_utime + ru.ru_stime
            proc.popen.returncode = os.waitstatus_to_exitcode(status)
            return None
        time.sleep(0.002)
    return None


class ExecIncoming:
    """``PROGRAM listen``: started, listening (its announced address), waited for."""

    def __init__(self, argv: list[str], cwd: Path, timeout: float,
                 measure: bool = False) -> None:
        self.timeout = timeout
        self.machine_type: str | None = None
        self.measure = measure
        self._cpu0: float | None = None
        self._t0: float | None = None
        self.proc = _Proc(argv, cwd)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            m = None
            for line in self.proc.stderr.splitlines():
                m = LISTENING_RE.search(line.strip())
                if m:
                    break
            if m:
                self.address = (m.group(1), int(m.group(2)))
                if measure:  # from here on its CPU counts: start-up is excluded
                    self._cpu0 = tree_cpu_seconds(self.proc.popen.pid)
                    self._t0 = time.monotonic()
                return
            if self.proc.popen.poll() is not None:
                self.proc.wait(5)
                rc = self.proc.popen.returncode
                self.proc.kill()
                raise RuntimeError(
                    f"{shlex.join(argv[:2])} exited {rc} before announcing "
                    f"'listening on HOST:PORT' on stderr: {_last_line(self.proc.stderr)}"
                )
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(
                    f"{shlex.join(argv[:2])} did not announce 'listening on HOST:PORT' on "
                    f"stderr within {START_TIMEOUT:g} s"
                )
            self.proc.err_event.wait(0.05)
            self.proc.err_event.clear()

    def wait(self, timeout: float) -> dict[str, Any]:
        rc = self.proc.wait(timeout)
        if rc is None:
            self.proc.kill()
        out = _result(self.proc, rc, "destination", timeout)
        if self._cpu0 is not None and self.proc.cpu_total is not None:
            out[MEASURE_KEY] = {
                "cpu_s": max(0.0, self.proc.cpu_total - self._cpu0), "t_start": self._t0,
                "t_end": self.proc.t_exit,
                "how": "the program's process tree from 'listening on' to its exit",
            }
        return out

    def close(self) -> None:
        self.proc.kill()


class ExecImplementation:
    """An implementation run as a program through the exec: contract (see module docstring)."""

    def __init__(self, command: str) -> None:
        #: subcommand -> argv prefix the suite appends that subcommand's arguments to
        self.commands: dict[str, list[str]] = {}
        if command.endswith((".yaml", ".yml")) and os.path.isfile(command):
            self.commands = _commands_from_yaml(command)
            self.argv = self.commands.get("program", [])
        else:
            self.argv = _resolve(shlex.split(command), command)
        self.command = command
        self.name = f"exec:{command}"
        info = self._query()
        caps = info.get("capabilities")
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ImplementationError(
                f"--qatmig-impl=exec:{command}: 'capabilities --json' must print a JSON object "
                f"with a list of strings under \"capabilities\", not {info!r}"
            )
        self._caps = frozenset(caps)
        self.info = info

    def _argv(self, word: str) -> list[str]:
        """The command line up to the subcommand's own arguments."""
        if word in self.commands:
            return self.commands[word]
        return [*self.argv, word]

    def _query(self) -> dict[str, Any]:
        try:
            cp = subprocess.run([*self._argv("capabilities"), "--json"], capture_output=True,
                                text=True, timeout=START_TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ImplementationError(f"--qatmig-impl=exec:{self.command}: {exc}") from None
        data = _parse_json(cp.stdout)
        if cp.returncode != 0 or data is None:
            raise ImplementationError(
                f"--qatmig-impl=exec:{self.command}: 'capabilities --json' exited "
                f"{cp.returncode} without one JSON object on stdout: {_last_line(cp.stderr)}"
            )
        return data

    def capabilities(self) -> frozenset[str]:
        return self._caps

    def describe(self) -> str:
        version = self.info.get("version")
        named = self.info.get("name")
        label = f"{named} {version}" if named and version else (named or "")
        return f"{self.name}" + (f" ({label})" if label else "")

    # ---- parameters as QEMU's names on the command line
    @staticmethod
    def parameter_args(spec: PairSpec) -> list[str]:
        args = ["--multifd-channels", str(spec.channels),
                "--multifd-compression", spec.compression]
        if spec.dialect is not None:
            args += ["--dialect", spec.dialect]
        if spec.level is not None:
            if spec.compression not in ("zlib", "zstd", "qatzip"):
                raise ValueError(
                    f"level={spec.level} given but multifd-compression {spec.compression!r} "
                    "has no level (zlib, zstd and qatzip do)"
                )
            args += [f"--multifd-{spec.compression}-level", str(spec.level)]
        if spec.max_bandwidth:
            args += ["--max-bandwidth", str(spec.max_bandwidth)]
        for key, value in spec.options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value is not False and value is not None:
                args += [flag, str(value)]
        return args

    def validate(self, spec: PairSpec) -> None:
        argv = [*self._argv("check"), *self.parameter_args(spec), "--quiet"]
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT,
                                stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{shlex.join(argv)} did not answer in {START_TIMEOUT:g} s"
                               ) from None
        if cp.returncode != 0:
            raise ValueError(_last_line(cp.stderr) or f"'check' exited {cp.returncode}")

    def _common(self, spec: PairSpec, ctx: Any) -> list[str]:
        blocks = [a for b in getattr(ctx, "extra_ramblocks", ())
                  for a in ("--add-ramblock", f"{b.name}={os.fspath(b.path)}")]
        return [
            "--guest-image", os.fspath(ctx.ram), "--guest-size", str(ctx.ram_size),
            "--ramblock", ctx.ramblock, *blocks, "--uuid", ctx.uuid,
            "--timeout", f"{ctx.timeout:g}", *self.parameter_args(spec), "--json", "--quiet",
        ]

    def destination(self, spec: PairSpec, ctx: Any) -> ExecIncoming:
        argv = [*self._argv("listen"), "--listen", "127.0.0.1:0", *self._common(spec, ctx)]
        return ExecIncoming(argv, ctx.workdir, ctx.timeout,
                            measure=bool(getattr(ctx, "measure", False)))

    def source(self, spec: PairSpec, ctx: Any, address: tuple[str, int]) -> Mapping[str, Any]:
        argv = [*self._argv("send"), f"{address[0]}:{address[1]}", *self._common(spec, ctx)]
        if ctx.machine_type:
            argv += ["--machine-type", ctx.machine_type]
        if getattr(ctx, "dirty_rate", 0):
            argv += ["--dirty-rate", str(ctx.dirty_rate),
                     "--final-image", os.fspath(ctx.final_image)]
        proc = _Proc(argv, ctx.workdir)
        try:
            start = _connected(proc, int(address[1]), ctx.timeout) if getattr(
                ctx, "measure", False) else None
            rc = proc.wait(ctx.timeout + EXIT_GRACE)
            out = _result(proc, rc, "source", ctx.timeout + EXIT_GRACE)
            if start is not None and proc.cpu_total is not None:
                out[MEASURE_KEY] = {
                    "cpu_s": max(0.0, proc.cpu_total - start[0]), "t_start": start[1],
                    "t_end": proc.t_exit,
                    "how": "the program's process tree from its first connection to its exit",
                }
            return out
        finally:
            proc.kill()

    def pair(self, spec: PairSpec, *, device: Any, workdir: Path) -> Any:
        from .roles import RolePair

        return RolePair(self, self, spec, workdir=workdir, device=device)


def _resolve(argv: list[str], spec: str) -> list[str]:
    """``argv`` with its program found: PATH first, then beside this Python (a virtualenv's
    bin/ that is not activated); a path is made absolute."""
    if not argv:
        raise ImplementationError("--qatmig-impl=exec: names no program (exec:PROGRAM)")
    exe = shutil.which(argv[0]) or shutil.which(argv[0], path=os.path.dirname(sys.executable))
    if exe is None:
        raise ImplementationError(
            f"--qatmig-impl=exec:{spec}: {argv[0]!r} is not an executable file or a program "
            "on PATH"
        )
    return [os.path.abspath(exe) if os.sep in argv[0] else exe, *argv[1:]]


#: Keys of an exec: YAML file: ``program`` (the default: ``program <subcommand> ...``) and one
#: command line per subcommand that is not ``program <subcommand>``.
YAML_KEYS = ("program", "capabilities", "check", "listen", "send")


def _commands_from_yaml(path: str) -> dict[str, list[str]]:
    """``exec:impl.yaml``: command lines per subcommand (relative programs: from the file's
    folder), e.g. ``{program: ./myvmm, listen: ./myvmm-dst, send: ./myvmm-src}``."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise ImplementationError(f"--qatmig-impl=exec:{path}: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ImplementationError(
            f"--qatmig-impl=exec:{path}: expected a mapping with keys {', '.join(YAML_KEYS)}")
    unknown = sorted(set(data) - set(YAML_KEYS))
    if unknown:
        raise ImplementationError(
            f"--qatmig-impl=exec:{path}: unknown key(s) {', '.join(unknown)} (known: "
            f"{', '.join(YAML_KEYS)})")
    missing = [k for k in YAML_KEYS[1:] if k not in data and "program" not in data]
    if missing:
        raise ImplementationError(
            f"--qatmig-impl=exec:{path}: no command for {', '.join(missing)} and no 'program'")
    base = os.path.dirname(os.path.abspath(path))
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        argv = value if isinstance(value, list) else shlex.split(str(value))
        argv = [str(a) for a in argv]
        if argv and argv[0].startswith(("./", "../")):
            argv[0] = os.path.join(base, argv[0])
        out[key] = _resolve(argv, path)
    return out


def exec_factory(command: str) -> ExecImplementation:
    return ExecImplementation(command)
