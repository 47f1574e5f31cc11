"""Helpers for testing the plugin and plugins built on it (standard library only).

* :func:`make_sysfs_tree` writes a fake ``/sys`` with QAT 4xxx PFs (ready or down) for
  ``--qatmig-sysfs-root``, in the same link-file layout as ``fixtures/sysfs``.
* :class:`LoopbackCopyImplementation` is a tiny but real Implementation: it sends the guest
  image over a loopback TCP socket from a sender thread and checks the received bytes.
  ``leak=`` makes it leave a thread, socket, file or child process behind on purpose, to
  check that ``multifd_pair`` catches it. Use it as ``--qatmig-impl
  pytest_qatmig.testing:loopback_copy`` (or ``...:leaky_thread`` etc.).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .adapters import PairSpec, guest_path
from .devices import QatDevice
from .results import MigrationResult

PAGE = 4096


def make_sysfs_tree(root: str | os.PathLike[str], ready: int = 2, down: int = 0) -> Path:
    """Create ``<root>/sys`` with ``ready`` 4xxx PFs (state up, ``dc``) and ``down`` PFs
    whose state is down; returns the sysfs root to pass as ``--qatmig-sysfs-root``."""
    sys_root = Path(root) / "sys"
    devices = sys_root / "bus" / "pci" / "devices"
    devices.mkdir(parents=True, exist_ok=True)
    for i in range(ready + down):
        bdf = f"0000:{0x6b + i:02x}:00.0"
        d = devices / bdf
        (d / "qat").mkdir(parents=True, exist_ok=True)
        (d / "vendor").write_text("0x8086\n")
        (d / "device").write_text("0x4940\n")
        (d / "numa_node").write_text("0\n")
        (d / "driver").write_text("../../../../bus/pci/drivers/4xxx\n")
        (d / "qat" / "state").write_text("up\n" if i < ready else "down\n")
        (d / "qat" / "cfg_services").write_text("dc\n")
    (Path(root) / "dev").mkdir(exist_ok=True)
    return sys_root


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LoopbackCopyPair:
    def __init__(self, spec: PairSpec, workdir: Path, leak: str | None) -> None:
        self.spec = spec
        self.workdir = workdir
        self.leak = leak
        self.source = {"role": "source"}
        self.destination = {"role": "destination"}
        self._kept: list[Any] = []

    def migrate(self, guest: Any, *, timeout: float = 60.0) -> MigrationResult:
        src = guest_path(guest)
        size = src.stat().st_size
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(timeout)
        port = listener.getsockname()[1]
        sent = {"cpu": 0.0}

        def sender() -> None:
            t0 = time.thread_time()
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s, \
                    open(src, "rb") as f:
                s.sendfile(f)
            sent["cpu"] = time.thread_time() - t0

        start = time.perf_counter()
        th = threading.Thread(target=sender, name="loopback-copy-sender")
        th.start()
        h = hashlib.sha256()
        zero = bytes(PAGE)
        zero_pages = 0
        received = 0
        r0 = time.thread_time()
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(timeout)
                buf = b""
                while True:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        break
                    received += len(chunk)
                    h.update(chunk)
                    buf += chunk
                    while len(buf) >= PAGE:
                        zero_pages += buf[:PAGE] == zero
                        buf = buf[PAGE:]
        finally:
            listener.close()
            th.join(timeout)
        recv_cpu = time.thread_time() - r0
        elapsed = max(time.perf_counter() - start, 1e-9)
        verified = received == size and h.hexdigest() == _sha256(src)
        pages = size // PAGE
        self._do_leak()
        return MigrationResult({
            "status": "completed" if verified else "failed",
            "total_time_ms": elapsed * 1000,
            "downtime_ms": elapsed * 1000,
            "throughput_mbps": received * 8 / elapsed / 1e6,
            "pages_per_second": pages / elapsed,
            "transferred_bytes": received,
            "normal_pages": pages - zero_pages,
            "zero_pages": zero_pages,
            "send_cpu_percent": 100 * sent["cpu"] / elapsed,
            "recv_cpu_percent": 100 * recv_cpu / elapsed,
            "verified": verified,
            "multifd_channels": self.spec.channels,
            "multifd_compression": self.spec.compression,
        })

    def _do_leak(self) -> None:
        if self.leak == "thread":
            stop = threading.Event()
            t = threading.Thread(target=stop.wait, args=(30,), name="leaked", daemon=True)
            t.start()
            self._kept.append(stop)
        elif self.leak == "socket":
            self._kept.append(socket.socket())
        elif self.leak == "file":
            (self.workdir / "left-behind.img").write_bytes(b"x")
        elif self.leak == "process":
            cmd = [sys.executable, "-c", "import time; time.sleep(30)"]
            self._kept.append(subprocess.Popen(cmd))

    def close(self) -> None:
        # Deliberately keeps self._kept alive: that is the leak under test.
        pass


class LoopbackCopyImplementation:
    """A minimal real implementation (plain copy over loopback TCP; no multifd wire)."""

    def __init__(self, leak: str | None = None) -> None:
        self.name = "loopback-copy" + (f"-leaky-{leak}" if leak else "")
        self.leak = leak
        self.pairs: list[LoopbackCopyPair] = []

    def capabilities(self) -> frozenset[str]:
        return frozenset({"none", "dialect:qemu-9.2"})

    def pair(self, spec: PairSpec, *, device: QatDevice, workdir: Path) -> LoopbackCopyPair:
        if not isinstance(spec.channels, int) or not 1 <= spec.channels <= 255:
            raise ValueError("Parameter 'multifd-channels' expects a value between 1 and 255")
        if spec.compression != "none":
            raise ValueError(f"loopback-copy cannot compress with {spec.compression!r}")
        p = LoopbackCopyPair(spec, workdir, self.leak)
        self.pairs.append(p)
        return p

    def describe(self) -> str:
        return f"{self.name} (pytest_qatmig.testing)"


def loopback_copy() -> LoopbackCopyImplementation:
    return LoopbackCopyImplementation()


def leaky_thread() -> LoopbackCopyImplementation:
    return LoopbackCopyImplementation("thread")


def leaky_socket() -> LoopbackCopyImplementation:
    return LoopbackCopyImplementation("socket")


def leaky_file() -> LoopbackCopyImplementation:
    return LoopbackCopyImplementation("file")


def leaky_process() -> LoopbackCopyImplementation:
    return LoopbackCopyImplementation("process")
