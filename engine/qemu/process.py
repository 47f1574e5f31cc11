"""Run a real ``qemu-system-x86_64`` as a migration peer on loopback, and always end it.

The guest has no code (``-S``) and its RAM is a ``memory-backend-file`` whose id is the
RAMBlock name (``pc.ram`` by default), so the RAM of both ends can be compared as files.
QEMU's stderr goes to a log file whose tail is quoted in every error. :meth:`QemuProcess.stop`
ends the process by pid (SIGTERM, then SIGKILL) even when QMP is wedged, which QEMU 7.2 does
after a multifd-compression mismatch (see docs/qemu-interop.md).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qatmig_engine.errors import QemuError, QemuTimeout
from qatmig_engine.qemu.qmp import QMPClient, QMPError

#: Effectively unlimited: QEMU's default max-bandwidth (128 MiB/s) throttles multifd too.
UNLIMITED_BANDWIDTH = 100 << 30

QEMU_BINARY = "qemu-system-x86_64"
INSTALL_HINT = "install it with: apt-get install qemu-system-x86 (or `make system-deps` as root)"


def find_qemu(binary: str | None = None) -> str | None:
    """Path of qemu-system-x86_64 (``$QATMIG_QEMU`` or ``PATH``), or None.

    A folder is taken as a QEMU 10.0 fetched by :mod:`qatmig_engine.qemu.fetch` (its cache
    folder or unpacked root): the answer is then its wrapper script, which supplies
    QEMU_MODULE_DIR and both ``-L``.
    """
    name = binary or os.environ.get("QATMIG_QEMU") or QEMU_BINARY
    if os.path.isdir(name):
        from qatmig_engine.qemu.fetch import qemu10_at

        q = qemu10_at(name)
        return str(q.wrapper) if q is not None else None
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name)


def qemu_version(binary: str | None = None, timeout: float = 10.0) -> str:
    """First line of ``qemu-system-x86_64 --version`` (e.g. ``QEMU emulator version 7.2.22 …``)."""
    path = find_qemu(binary)
    if path is None:
        raise QemuError(f"{binary or QEMU_BINARY} not found; {INSTALL_HINT}")
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise QemuTimeout(f"{path} --version did not finish in {timeout:g} s") from None
    return out.stdout.splitlines()[0].strip() if out.stdout else ""


@dataclass(frozen=True)
class RamBlockInfo:
    """One RAMBlock as ``info ramblock`` lists it (the main stream's block list order)."""

    name: str
    used_length: int
    max_length: int


# 7.2: name, page size, offset, used, total; 10.0 adds the host address (HVA) and RO/rw.
_RAMBLOCK_LINE = re.compile(
    r"^\s*(\S+)\s+\d+\s*[KMG]iB\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)"
    r"(?:\s+0x[0-9a-fA-F]+\s+(?:ro|rw))?\s*$"
)


def parse_info_ramblock(text: str) -> list[RamBlockInfo]:
    """Parse HMP ``info ramblock`` (name, page size, offset, used, total[, HVA, RO])."""
    blocks = []
    for line in text.splitlines():
        m = _RAMBLOCK_LINE.match(line)
        if m:
            blocks.append(RamBlockInfo(m.group(1), int(m.group(3), 16), int(m.group(4), 16)))
    if not blocks:
        raise QemuError(f"could not parse `info ramblock` output: {text[:300]!r}")
    return blocks


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError as exc:
        raise QemuError(f"cannot read /proc/{pid}/stat: {exc}") from exc
    fields = stat[stat.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class QemuProcess:
    """One ``qemu-system-x86_64`` with RAM in ``ram_file`` and QMP on a unix socket.

    Use as a context manager; :meth:`stop` always runs and ends QEMU by pid.

    >>> with QemuProcess(ram_file="/dev/shm/src.img", ram_size=64 << 20) as src:
    ...     src.setup_migration(channels=2, compression="zstd")
    ...     src.migrate("tcp:127.0.0.1:4444")
    ...     src.wait_migration(timeout=60)
    """

    def __init__(
        self,
        *,
        ram_file: str | os.PathLike[str],
        ram_size: int,
        incoming: bool = False,
        machine: str = "pc",
        backend_id: str = "pc.ram",
        uuid: str | None = None,
        accel: str = "tcg",
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float = 20.0,
        qmp_timeout: float = 10.0,
        name: str = "qemu",
    ) -> None:
        self.ram_file = Path(ram_file)
        self.ram_size = ram_size
        self.incoming = incoming
        self.machine = machine
        self.backend_id = backend_id
        self.uuid = uuid
        self.accel = accel
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.qmp_timeout = qmp_timeout
        self.name = name
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(
            tempfile.mkdtemp(prefix=f"qatmig-{name}-")
        )
        self.qmp_path = self.workdir / f"{name}.qmp"
        self.log_path = self.workdir / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QMPClient | None = None

    # ------------------------------------------------------------------ lifecycle
    def command_line(self) -> list[str]:
        path = find_qemu(self.binary)
        if path is None:
            raise QemuError(f"{self.binary or QEMU_BINARY} not found; {INSTALL_HINT}")
        size_m = f"{self.ram_size >> 20}M"
        cmd = [
            path, "-name", self.name, "-accel", self.accel,
            "-machine", f"{self.machine},memory-backend={self.backend_id}",
            "-m", size_m,
            "-object",
            f"memory-backend-file,id={self.backend_id},size={size_m},"
            f"mem-path={self.ram_file},share=on",
            "-display", "none", "-nodefaults", "-S",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]
        if self.uuid:
            cmd += ["-uuid", self.uuid]
        if self.incoming:
            cmd += ["-incoming", "defer"]
        return cmd + list(self.extra_args)

    def start(self) -> QemuProcess:
        """Start QEMU and connect QMP; QemuError (with QEMU's stderr) if it does not come up."""
        if self.ram_size % (1 << 20):
            raise QemuError(f"ram_size {self.ram_size} is not a whole number of MiB")
        if not self.ram_file.exists():
            with open(self.ram_file, "wb") as f:
                f.truncate(self.ram_size)
        if len(os.fsencode(self.qmp_path)) >= 108:  # sun_path limit
            raise QemuError(f"QMP socket path too long for a unix socket: {self.qmp_path} "
                            "(use a shorter workdir)")
        cmd = self.command_line()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.qmp = QMPClient.connect(
                str(self.qmp_path), timeout=self.start_timeout,
                alive=lambda: self.proc is not None and self.proc.poll() is None,
            )
        except QemuError as exc:
            if self.proc.poll() is None:
                time.sleep(0.05)  # let a dying QEMU finish writing its error
            tail = self._log_tail()
            self.stop()
            raise type(exc)(f"{self.name}: QEMU did not start: {exc}{tail}") from None
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise QemuError(f"{self.name}: not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self) -> str:
        """Everything QEMU printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, n: int = 2000) -> str:
        text = self.stderr_text().strip()
        return f"\n--- {self.name} stderr ---\n{text[-n:]}" if text else ""

    def stop(self, grace: float = 3.0) -> int | None:
        """End QEMU by pid: SIGTERM, then SIGKILL after ``grace`` s. Returns its exit status."""
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.kill(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    try:
                        os.kill(self.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.proc.wait(timeout=10)
            rc = self.proc.returncode
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return rc

    def __enter__(self) -> QemuProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ QMP helpers
    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                *, timeout: float | None = None) -> Any:
        """QMP command; errors carry QEMU's stderr tail."""
        if self.qmp is None:
            raise QemuError(f"{self.name}: not started")
        try:
            return self.qmp.execute(command, arguments, timeout=timeout)
        except QMPError as exc:
            raise QMPError(command, exc.error_class, f"{exc.desc} ({self.name})") from None
        except QemuError as exc:
            raise type(exc)(f"{self.name}: {exc}{self._log_tail()}") from None

    def setup_migration(
        self,
        *,
        channels: int,
        compression: str = "none",
        level: int | None = None,
        max_bandwidth: int | None = UNLIMITED_BANDWIDTH,
        events: bool = True,
        zero_page_detection: str | None = None,
        return_path: bool = False,
    ) -> None:
        """migrate-set-capabilities multifd (+events, +return-path) and the multifd parameters.

        ``zero_page_detection`` (none/legacy/multifd) exists from QEMU 9.0 on; None leaves it.

        Call on both ends before migrate / migrate-incoming (QEMU requires multifd to be set
        before incoming starts, and both ends must agree on channels and compression).
        """
        caps = [{"capability": "multifd", "state": True}]
        if events:
            caps.append({"capability": "events", "state": True})
        if return_path:
            caps.append({"capability": "return-path", "state": True})
        self.execute("migrate-set-capabilities", {"capabilities": caps})
        params: dict[str, Any] = {
            "multifd-channels": channels, "multifd-compression": compression,
        }
        if level is not None and compression in ("zlib", "zstd", "qatzip"):
            params[f"multifd-{compression}-level"] = level
        if max_bandwidth is not None:
            params["max-bandwidth"] = max_bandwidth
        if zero_page_detection is not None:
            params["zero-page-detection"] = zero_page_detection
        self.execute("migrate-set-parameters", params)

    def setup_tls(self, creds_dir: str | os.PathLike[str], *, endpoint: str,
                  hostname: str | None = None, authz: Sequence[str] | None = None,
                  verify_peer: bool = True) -> None:
        """TLS for the next migration: ``object-add tls-creds-x509`` (id ``tls0``,
        ``dir=creds_dir``, ``endpoint`` server on a destination, client on a source), an
        ``authz-list`` (id ``authz0``: the DNs allowed, exact match, everything else denied)
        when ``authz`` is given, and migrate-set-parameters tls-creds / tls-hostname /
        tls-authz."""
        self.execute("object-add", {"qom-type": "tls-creds-x509", "id": "tls0",
                                    "dir": os.fspath(creds_dir), "endpoint": endpoint,
                                    "verify-peer": verify_peer})
        params: dict[str, Any] = {"tls-creds": "tls0"}
        if hostname is not None:
            params["tls-hostname"] = hostname
        if authz is not None:
            self.execute("object-add", {
                "qom-type": "authz-list", "id": "authz0", "policy": "deny",
                "rules": [{"match": dn, "policy": "allow", "format": "exact"} for dn in authz]})
            params["tls-authz"] = "authz0"
        self.execute("migrate-set-parameters", params)

    def migrate_incoming(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """migrate-incoming tcp:host:port; returns the port QEMU listens on."""
        self.execute("migrate-incoming", {"uri": f"tcp:{host}:{port}"})
        if port:
            return port
        info = self.execute("query-migrate")
        for addr in info.get("socket-address", []):
            if addr.get("type") == "inet" and addr.get("port"):
                return int(addr["port"])
        raise QemuError(f"{self.name}: migrate-incoming gave no listening port: {info}")

    def migrate(self, uri: str) -> None:
        """migrate <uri> (e.g. ``tcp:127.0.0.1:4444``)."""
        self.execute("migrate", {"uri": uri})

    def query_migrate(self, timeout: float | None = None) -> dict[str, Any]:
        return dict(self.execute("query-migrate", timeout=timeout))

    def wait_migration(self, timeout: float = 60.0, poll: float = 0.05) -> dict[str, Any]:
        """Poll query-migrate until ``completed``; return the final MigrationInfo.

        QemuError on ``failed``/``cancelled`` (with QEMU's error-desc and stderr), QemuTimeout
        when the deadline passes or QMP stops answering. A ``completed`` with ``total-time``
        0 is a transient reading of 7.2: it is queried again.
        """
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        while True:
            if not self.alive():
                rc = self.proc.returncode if self.proc else "?"
                raise QemuError(
                    f"{self.name}: QEMU exited (status {rc}) during migration{self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                status = info.get("status", "not reported (still waiting for the stream)")
                raise QemuTimeout(
                    f"{self.name}: migration not completed within {timeout:g} s "
                    f"(query-migrate status: {status}){self._log_tail()}"
                )
            info = self.query_migrate(timeout=min(self.qmp_timeout, max(0.1, remaining)))
            status = info.get("status")
            if status == "completed":
                if info.get("total-time", 1) == 0 and time.monotonic() < deadline:
                    time.sleep(poll)
                    continue
                return info
            if status in ("failed", "cancelled"):
                desc = info.get("error-desc", "")
                raise QemuError(f"{self.name}: migration {status}: {desc}{self._log_tail()}")
            time.sleep(poll)

    def status(self, timeout: float | None = None) -> str:
        """Run state (``prelaunch``, ``inmigrate``, ``postmigrate``, ``paused`` …)."""
        return str(self.execute("query-status", timeout=timeout)["status"])

    def ram_blocks(self) -> list[RamBlockInfo]:
        """The RAMBlocks, in the order the main stream's block list sends them."""
        if self.qmp is None:
            raise QemuError(f"{self.name}: not started")
        return parse_info_ramblock(self.qmp.hmp("info ramblock"))

    def machine_type(self) -> str:
        """The resolved machine type name (``pc`` -> ``pc-i440fx-7.2``)."""
        for m in self.execute("query-machines"):
            if self.machine in (m.get("name"), m.get("alias")):
                return str(m["name"])
        raise QemuError(f"{self.name}: machine {self.machine!r} not in query-machines")

    def cpu_seconds(self) -> float:
        """utime + stime of this QEMU so far."""
        return proc_cpu_seconds(self.pid)


def ram_layout(
    ram_size: int, *, machine: str = "pc", backend_id: str = "pc.ram", binary: str | None = None,
    timeout: float = 20.0,
) -> tuple[str, list[RamBlockInfo]]:
    """Machine type and block list a QEMU destination with this RAM size will expect.

    Starts a throw-away QEMU (RAM in a sparse temp file), asks it, and ends it.
    """
    with tempfile.TemporaryDirectory(prefix="qatmig-layout-") as tmp:
        with QemuProcess(
            ram_file=Path(tmp) / "ram.img", ram_size=ram_size, machine=machine,
            backend_id=backend_id, binary=binary, workdir=tmp, start_timeout=timeout,
            name="layout",
        ) as q:
            return q.machine_type(), q.ram_blocks()
