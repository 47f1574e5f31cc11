"""One migration between a real QEMU (7.2, or 10.0 via ``binary``) and/or this engine, measured
the same way on both ends.

``binary`` is any qemu-system-x86_64 path (or a folder fetched by :mod:`qatmig_engine.qemu.fetch`,
e.g. its QEMU 10.0 wrapper); ``dialect`` is what the engine end and the tap speak (``qemu-7.2``
for Debian's 7.2, ``qemu-10.0`` for 10.0); ``zero_page_detection`` is set on both ends when given
(9.0+ QEMUs only).

Each driver migrates ``src_img`` (a RAM file) into ``dst_img`` over loopback and returns an
:class:`InteropRun`: who completed, whether the destination RAM equals the source RAM byte for
byte, wall time, CPU seconds of each end's process (utime+stime: /proc for QEMU, wait4() rusage
for a ``qatmig listen``/``send`` process) and, when a tap sat in between, its report (bytes on
the wire, every multifd byte checked). The engine ends run as the ``qatmig`` command line, as a
user would run them. Used by tests/test_qemu_*.py and benchmarks/bench_side_by_side.py.
"""

from __future__ import annotations

import filecmp
import json
import os
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qatmig_engine.errors import MigrationError, QemuError, QemuTimeout
from qatmig_engine.qemu.process import UNLIMITED_BANDWIDTH, QemuProcess, proc_cpu_seconds
from qatmig_engine.tap import TapChecker, TapProxy, TapReport

#: The ``qatmig`` command line run by this interpreter (no dependency on PATH).
QATMIG = [sys.executable, "-c",
          "import sys; from qatmig_engine.cli import main; sys.exit(main(sys.argv[1:]))"]


@dataclass
class InteropRun:
    """The outcome of one migration (``direction`` e.g. ``qemu->engine``)."""

    direction: str
    method: str
    channels: int
    size: int
    ram_equal: bool = False
    wall_s: float = 0.0
    src_cpu_s: float | None = None
    dst_cpu_s: float | None = None
    source: dict[str, Any] = field(default_factory=dict)
    destination: dict[str, Any] = field(default_factory=dict)
    tap: TapReport | None = None
    log: str = ""

    @property
    def completed(self) -> bool:
        """Both ends reported ``completed``."""
        return (self.source.get("status") == "completed"
                and self.destination.get("status") == "completed")

    @property
    def wire_bytes(self) -> int | None:
        return self.tap.totals()["wire_bytes"] if self.tap is not None else None

    def summary(self) -> str:
        tap = ""
        if self.tap is not None:
            tap = f", tap {'OK' if self.tap.ok else 'FAILED'} ({self.wire_bytes} B on the wire)"
        return (f"{self.direction} {self.method} x{self.channels}: "
                f"{'completed' if self.completed else 'NOT completed'}, RAM "
                f"{'equal' if self.ram_equal else 'DIFFERS'}, {self.wall_s:.2f} s{tap}")


@dataclass(frozen=True)
class TLSEnds:
    """TLS for a migration between the engine and a QEMU: each end's credentials directory
    (QEMU's tls-creds-x509 ``dir``), the source's ``tls-hostname`` and the destination's
    ``tls-authz`` DNs (a QEMU destination gets them as an authz-list, exact match)."""

    engine_dir: str
    qemu_dir: str
    hostname: str | None = None
    authz: tuple[str, ...] | None = None

    def engine_args(self, *, source: bool) -> list[str]:
        args = ["--tls-creds", self.engine_dir]
        if source and self.hostname is not None:
            args += ["--tls-hostname", self.hostname]
        if not source:
            for dn in self.authz or ():
                args += ["--tls-authz", dn]
        return args


# ------------------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_rusage(proc: subprocess.Popen[str], timeout: float) -> float:
    """Wait for ``proc`` (killing it at the deadline); return its utime+stime."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return float(ru.ru_utime + ru.ru_stime)
        if time.monotonic() > deadline:
            proc.kill()
            _pid, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise MigrationError(f"{' '.join(proc.args[3:6])}... did not finish in {timeout:g} s;"
                                 " killed")
        time.sleep(0.01)


def _engine_json(out: str) -> dict[str, Any]:
    start = out.find("{")
    if start < 0:
        return {}
    try:
        data: dict[str, Any] = json.loads(out[start:])
    except ValueError:
        return {}
    return data


def _params(method: str, channels: int, dialect: str = "qemu-7.2",
            zero_page_detection: str | None = None, level: int | None = None) -> list[str]:
    zpd = ["--zero-page-detection", zero_page_detection] if zero_page_detection else []
    lvl = [f"--multifd-{method}-level", str(level)] if level is not None else []
    return ["--dialect", dialect, "--multifd-channels", str(channels),
            "--multifd-compression", method, *zpd, *lvl]


def _start_listen(dst_img: str, size: int, method: str, channels: int, port: int,
                  timeout: float, params: list[str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*QATMIG, "listen", "--listen", f"127.0.0.1:{port}", "--guest-image", dst_img,
         "--guest-size", str(size), "--ramblock", "pc.ram",
         *(params if params is not None else _params(method, channels)),
         "--timeout", str(timeout), "--json", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _listen_on_free_port(dst_img: str, size: int, method: str, channels: int,
                         timeout: float, params: list[str] | None = None,
                         ) -> tuple[subprocess.Popen[str], int]:
    """Start ``qatmig listen`` on a free port; retry when another process took the port
    between picking and binding (parallel test workers)."""
    last = ""
    for _attempt in range(5):
        port = free_port()
        proc = _start_listen(dst_img, size, method, channels, port, timeout, params)
        try:
            _wait_listening(port, proc)
            return proc, port
        except MigrationError as exc:
            last = str(exc)
            if proc.returncode is None:
                proc.kill()
                _wait_rusage(proc, 10)
            if "in use" not in last:
                raise
    raise MigrationError(f"qatmig listen could not get a port: {last}")


def _wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    """Until ``qatmig listen`` accepts on ``port`` (it prints nothing with --json)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read()[-2000:] if proc.stderr else ""
            raise MigrationError(f"qatmig listen exited early: {err}")
        # Probing with a connect would be taken as the main channel: look at the socket table.
        if _tcp_listening(port):
            return
        time.sleep(0.02)
    raise MigrationError(f"qatmig listen did not listen on port {port} within {timeout:g} s")


def _tcp_listening(port: int) -> bool:
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(want) and parts[3] == "0A":  # 0A = LISTEN
                        return True
        except OSError:
            continue
    return False


def _communicate(proc: subprocess.Popen[str], timeout: float) -> tuple[float, str, str]:
    """Read stdout/stderr until exit (bounded); return (cpu seconds, stdout, stderr)."""
    out: list[str] = []
    err: list[str] = []
    streams = {proc.stdout: out, proc.stderr: err}
    deadline = time.monotonic() + timeout
    open_streams = [s for s in streams if s is not None]
    while open_streams and time.monotonic() < deadline:
        ready, _w, _x = select.select(open_streams, [], [], 0.1)
        for s in ready:
            chunk = os.read(s.fileno(), 65536)
            if not chunk:
                open_streams.remove(s)
            else:
                streams[s].append(chunk.decode(errors="replace"))
    cpu = _wait_rusage(proc, max(0.1, deadline - time.monotonic()))
    return cpu, "".join(out), "".join(err)


def _equal(a: str, b: str) -> bool:
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _tap(port: int, method: str, channels: int, check: bool,
         timeout: float, dialect: str = "qemu-7.2",
         record_dir: str | None = None) -> TapProxy:
    checker = TapChecker(dialect=dialect, method=method, channels=channels) if check else None
    return TapProxy(("127.0.0.1", 0), ("127.0.0.1", port), checker, timeout=timeout,
                    record_dir=record_dir)


# ------------------------------------------------------------------------------ directions
def qemu_to_qemu(src_img: str, dst_img: str, size: int, method: str, channels: int, *,
                 workdir: str, tap: bool = False, check: bool = True,
                 binary: str | None = None, max_bandwidth: int = UNLIMITED_BANDWIDTH,
                 poll: float = 0.05, timeout: float = 120.0, dialect: str = "qemu-7.2",
                 zero_page_detection: str | None = None, machine: str = "pc",
                 level: int | None = None, record_dir: str | None = None) -> InteropRun:
    """QEMU -> QEMU (``binary``, default the system QEMU; optionally through the tap, which
    speaks ``dialect`` and records into ``record_dir`` when given). ``max_bandwidth`` in
    bytes/s (QEMU's parameter); ``poll`` is the query-migrate period."""
    run = InteropRun("qemu->qemu", method, channels, size)
    with QemuProcess(ram_file=src_img, ram_size=size, name="src", binary=binary,
                     machine=machine, workdir=f"{workdir}/qsrc") as src, \
         QemuProcess(ram_file=dst_img, ram_size=size, incoming=True, name="dst",
                     binary=binary, machine=machine, workdir=f"{workdir}/qdst") as dst:
        for q in (src, dst):
            q.setup_migration(channels=channels, compression=method, level=level,
                              max_bandwidth=max_bandwidth,
                              zero_page_detection=zero_page_detection)
        port = dst.migrate_incoming()
        proxy = (_tap(port, method, channels, check, timeout, dialect, record_dir)
                 if tap else None)
        target = proxy.start() if proxy else port
        cpu0 = (src.cpu_seconds(), dst.cpu_seconds())
        t0 = time.monotonic()
        src.migrate(f"tcp:127.0.0.1:{target}")
        run.source = src.wait_migration(timeout, poll=poll)
        run.destination = dst.wait_migration(timeout, poll=poll)
        run.wall_s = time.monotonic() - t0
        run.src_cpu_s = src.cpu_seconds() - cpu0[0]
        run.dst_cpu_s = dst.cpu_seconds() - cpu0[1]
        if proxy is not None:
            run.tap = proxy.wait(timeout)
    run.ram_equal = _equal(src_img, dst_img)
    return run


def qemu_to_engine(src_img: str, dst_img: str, size: int, method: str, channels: int, *,
                   workdir: str, tap: bool = False, live: bool = False,
                   timeout: float = 120.0, binary: str | None = None,
                   dialect: str = "qemu-7.2", zero_page_detection: str | None = None,
                   machine: str = "pc", return_path: bool = False,
                   level: int | None = None, record_dir: str | None = None,
                   tls: TLSEnds | None = None) -> InteropRun:
    """QEMU source -> ``qatmig listen --dialect DIALECT`` (optionally through the tap, which
    records each connection's bytes into ``record_dir`` when given).

    ``tls``: the QEMU source gets a tls-creds-x509 object (endpoint=client) and tls-hostname,
    ``qatmig listen`` gets --tls-creds and --tls-authz (see :class:`TLSEnds`).

    ``return_path``: the source QEMU has the return-path capability (the engine's destination
    answers its PING and confirms with MIG_RP_MSG_SHUT).

    ``live``: let the source guest run (SeaBIOS, which dirties RAM) during the migration.
    """
    run = InteropRun("qemu->engine", method, channels, size)
    listen, port = _listen_on_free_port(
        dst_img, size, method, channels, timeout,
        _params(method, channels, dialect, zero_page_detection, level)
        + (tls.engine_args(source=False) if tls else []))
    try:
        with QemuProcess(ram_file=src_img, ram_size=size, name="src", binary=binary,
                         machine=machine, workdir=f"{workdir}/qsrc") as src:
            src.setup_migration(channels=channels, compression=method, level=level,
                                zero_page_detection=zero_page_detection,
                                return_path=return_path)
            if tls is not None:
                src.setup_tls(tls.qemu_dir, endpoint="client", hostname=tls.hostname)
            if live:
                src.execute("cont")
            proxy = (_tap(port, method, channels, True, timeout, dialect, record_dir)
                     if tap else None)
            target = proxy.start() if proxy else port
            cpu0 = src.cpu_seconds()
            t0 = time.monotonic()
            src.migrate(f"tcp:127.0.0.1:{target}")
            try:
                run.source = src.wait_migration(timeout)
            except (QemuTimeout, QemuError) as exc:
                # A failing source is a result (e.g. the destination refused the stream and
                # reset the connection), reported like engine_to_qemu's destination.
                run.source = {"status": "failed", "error": str(exc)}
            finally:
                run.src_cpu_s = src.cpu_seconds() - cpu0
                run.dst_cpu_s, out, err = _communicate(listen, timeout)
            run.wall_s = time.monotonic() - t0
            run.destination = _engine_json(out)
            run.log = err
            if proxy is not None:
                run.tap = proxy.wait(timeout)
    finally:
        if listen.poll() is None and listen.returncode is None:
            listen.kill()
            _wait_rusage(listen, 10)
    run.ram_equal = _equal(src_img, dst_img)
    return run


def engine_to_qemu(src_img: str, dst_img: str, size: int, method: str, channels: int, *,
                   workdir: str, tap: bool = False, extra_args: tuple[str, ...] = (),
                   timeout: float = 120.0, binary: str | None = None,
                   dialect: str = "qemu-7.2", zero_page_detection: str | None = None,
                   machine: str = "pc", return_path: bool = False,
                   level: int | None = None, record_dir: str | None = None,
                   tls: TLSEnds | None = None,
                   destination_wait: float | None = None) -> InteropRun:
    """``qatmig send --dialect DIALECT`` -> QEMU destination (optionally through the tap, which
    records each connection's bytes into ``record_dir`` when given).

    ``tls``: the QEMU destination gets a tls-creds-x509 object (endpoint=server) and an
    authz-list, ``qatmig send`` gets --tls-creds and --tls-hostname (see :class:`TLSEnds`).
    ``destination_wait``: seconds to wait for the QEMU destination's outcome (default the
    ``timeout`` when the engine end reported, else 5).

    ``return_path``: ``send --return-path on`` (and the capability on the QEMU destination).

    With ``dialect`` other than qemu-7.2 the engine is given the destination's resolved machine
    type (``--machine-type``, unless ``extra_args`` names one).
    """
    run = InteropRun("engine->qemu", method, channels, size)
    with QemuProcess(ram_file=dst_img, ram_size=size, incoming=True, name="dst",
                     binary=binary, machine=machine, workdir=f"{workdir}/qdst") as dst:
        dst.setup_migration(channels=channels, compression=method, level=level,
                            zero_page_detection=zero_page_detection, return_path=return_path)
        if tls is not None:
            dst.setup_tls(tls.qemu_dir, endpoint="server", authz=tls.authz)
            extra_args = (*extra_args, *tls.engine_args(source=True))
        if return_path:
            extra_args = (*extra_args, "--return-path", "on")
        if dialect != "qemu-7.2" and "--machine-type" not in extra_args:
            extra_args = ("--machine-type", dst.machine_type(), *extra_args)
        port = dst.migrate_incoming()
        proxy = (_tap(port, method, channels, True, timeout, dialect, record_dir)
                 if tap else None)
        target = proxy.start() if proxy else port
        cpu0 = dst.cpu_seconds()
        t0 = time.monotonic()
        send = subprocess.Popen(
            [*QATMIG, "send", f"127.0.0.1:{target}", "--guest-image", src_img,
             "--ramblock", "pc.ram",
             *_params(method, channels, dialect, zero_page_detection, level),
             "--timeout", str(timeout), "--json", "--quiet", *extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        run.src_cpu_s, out, err = _communicate(send, timeout)
        run.source = _engine_json(out)
        run.log = err
        wait = destination_wait if destination_wait is not None else (
            timeout if run.source else 5)
        try:
            run.destination = dst.wait_migration(wait)
        except (QemuTimeout, QemuError) as exc:
            run.destination = {"status": "failed", "error": str(exc)}
        run.wall_s = time.monotonic() - t0
        if dst.alive():
            run.dst_cpu_s = dst.cpu_seconds() - cpu0
            run.destination["runstate"] = dst.status()
            if run.destination.get("status") != "completed":
                # A QEMU that refused a TLS source only says so on stderr and keeps waiting.
                run.log += dst.stderr_text()
        else:
            run.destination["runstate"] = f"exited ({dst.proc.returncode if dst.proc else '?'})"
            run.log += dst.stderr_text()
        if proxy is not None:
            run.tap = proxy.wait(timeout)
    run.ram_equal = _equal(src_img, dst_img)
    return run


#: A minimal engine end for measurements: the same api.listen/api.send the CLI calls, without
#: the CLI's sha256 digests of the whole guest, reporting its CPU seconds and wall-clock
#: timestamps around the migration only (like QEMU's: start-up excluded, and the end is when
#: the migration ended, before the guest is unmapped, as QEMU's ends at ``completed``).
_RUNNER = """
import json, resource, sys, time
from qatmig_engine import api
from qatmig_engine.params import MigrationParameters
role, port, img, size, method, ch, dialect, timeout, bw = sys.argv[1:10]
params = MigrationParameters(multifd_channels=int(ch), multifd_compression=method,
                             dialect=dialect, max_bandwidth=int(bw))
def cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime
def ready(addr):
    print("READY", addr[1], flush=True)
end = []
def done(_st):
    end.extend((cpu(), time.time()))
c0, t0 = cpu(), time.time()
if role == "listen":
    st = api.listen("127.0.0.1", int(port), img, int(size), params, ramblock="pc.ram",
                    timeout=float(timeout), digest=False, on_ready=ready, on_done=done)
else:
    st = api.send("127.0.0.1", int(port), img, params, ramblock="pc.ram",
                  timeout=float(timeout), digest=False, on_done=done)
c1, t1 = end
print(json.dumps({"stats": st.to_json(), "t0": t0, "t1": t1, "cpu_s": c1 - c0}), flush=True)
"""


def _runner(role: str, port: int, img: str, size: int, method: str, channels: int,
            dialect: str, timeout: float, max_bandwidth: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _RUNNER, role, str(port), img, str(size), method, str(channels),
         dialect, str(timeout), str(max_bandwidth)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def engine_to_engine_measured(src_img: str, dst_img: str, size: int, method: str,
                              channels: int, *, workdir: str, tap: bool = False,
                              dialect: str = "qemu-7.2", max_bandwidth: int = 0,
                              timeout: float = 120.0) -> InteropRun:
    """engine -> engine for benchmarks: two processes running api.send / api.listen without
    whole-guest digests; wall time from the start of send to the later end, CPU seconds of
    each process over its migration only (what is measured for QEMU). ``max_bandwidth`` in
    bytes/s, 0 = unlimited (the engine's default)."""
    run = InteropRun("engine->engine", method, channels, size)
    listen = _runner("listen", 0, dst_img, size, method, channels, dialect, timeout,
                     max_bandwidth)
    try:
        line = ""
        if listen.stdout is not None:
            r, _w, _x = select.select([listen.stdout], [], [], 30)
            line = listen.stdout.readline() if r else ""
        if not line.startswith("READY"):
            listen.kill()
            raise MigrationError(f"engine listen did not start: {line!r}")
        port = int(line.split()[1])
        proxy = _tap(port, method, channels, False, timeout) if tap else None
        target = proxy.start() if proxy else port
        send = _runner("send", target, src_img, size, method, channels, dialect, timeout,
                       max_bandwidth)
        _cpu, out, err = _communicate(send, timeout)
        _cpu, dout, derr = _communicate(listen, timeout)
        src, dst = _engine_json(out), _engine_json(dout)
        run.source, run.destination = src.get("stats", {}), dst.get("stats", {})
        run.src_cpu_s, run.dst_cpu_s = src.get("cpu_s"), dst.get("cpu_s")
        if "t0" in src and "t1" in dst:
            run.wall_s = max(src["t1"], dst["t1"]) - src["t0"]
        run.log = err + derr
        if proxy is not None:
            run.tap = proxy.wait(timeout)
    finally:
        if listen.returncode is None:
            listen.kill()
            _wait_rusage(listen, 10)
    run.ram_equal = _equal(src_img, dst_img)
    return run


def engine_to_engine(src_img: str, dst_img: str, size: int, method: str, channels: int, *,
                     workdir: str, tap: bool = False, dialect: str = "qemu-7.2",
                     timeout: float = 120.0) -> InteropRun:
    """``qatmig send`` -> ``qatmig listen``, two processes, as the QEMU pair runs."""
    run = InteropRun("engine->engine", method, channels, size)
    listen, port = _listen_on_free_port(dst_img, size, method, channels, timeout)
    try:
        proxy = _tap(port, method, channels, True, timeout) if tap else None
        target = proxy.start() if proxy else port
        t0 = time.monotonic()
        send = subprocess.Popen(
            [*QATMIG, "send", f"127.0.0.1:{target}", "--guest-image", src_img,
             "--ramblock", "pc.ram", *_params(method, channels, dialect),
             "--timeout", str(timeout), "--json", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        run.src_cpu_s, out, err = _communicate(send, timeout)
        run.source = _engine_json(out)
        run.dst_cpu_s, dout, derr = _communicate(listen, timeout)
        run.wall_s = time.monotonic() - t0
        run.destination = _engine_json(dout)
        run.log = err + derr
        if proxy is not None:
            run.tap = proxy.wait(timeout)
    finally:
        if listen.returncode is None:
            listen.kill()
            _wait_rusage(listen, 10)
    run.ram_equal = _equal(src_img, dst_img)
    return run


__all__ = ["QATMIG", "InteropRun", "TLSEnds", "engine_to_engine", "engine_to_engine_measured",
           "engine_to_qemu", "free_port",
           "proc_cpu_seconds", "qemu_to_engine", "qemu_to_qemu"]


def _main() -> None:  # pragma: no cover - manual smoke run
    import tempfile

    from qatmig_engine.qemu.image import write_image

    size = 64 << 20
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        write_image(f"{d}/src.img", size)
        for fn in (qemu_to_qemu, qemu_to_engine, engine_to_qemu, engine_to_engine):
            Path(f"{d}/dst.img").unlink(missing_ok=True)
            print(fn(f"{d}/src.img", f"{d}/dst.img", size, "zstd", 2, workdir=d,
                     tap=True).summary())


if __name__ == "__main__":  # pragma: no cover
    _main()
