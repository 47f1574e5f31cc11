"""QAT devices for the plugin: which ones exist, which are ready, and who owns which.

Discovery reads sysfs (the root is a parameter, so tests use fake trees). Ownership is a free
list of lock files: a worker owns a device while it holds ``fcntl.flock`` on the device's lock
file. The kernel drops the lock when the process dies, so a restarted xdist worker (which gets a
*new* ``gw`` id) simply takes whatever device is free again — nothing is keyed on worker numbers.

Imported by the plugin at load time: standard library only at module level (discovery
imports the engine's light sysfs reader when first called).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SOFTWARE = "sw"


@dataclass(frozen=True)
class QatDevice:
    """One QAT endpoint (or the software device), as a test sees it.

    ``bdf`` is the PCI address (``0000:6b:00.0``) or ``"sw"``; ``backend`` is ``"hw"`` when
    compression runs on this device and ``"sw"`` for QATzip's software path; ``ready`` with
    ``reason`` (empty when ready) is the readiness verdict.
    """

    bdf: str
    family: str = "software"
    function: str = ""  # "pf" | "vf" | ""
    driver: str | None = None
    state: str | None = None
    services: tuple[str, ...] = ()
    numa_node: int | None = None
    ready: bool = True
    reason: str = ""
    backend: str = SOFTWARE
    notes: tuple[str, ...] = field(default=(), compare=False)
    #: The sysfs root this device was discovered under (so the engine looks at the same host).
    sysfs_root: str | None = field(default=None, compare=False)

    @property
    def is_hardware(self) -> bool:
        """True for a real (or fake-sysfs) PCI endpoint, False for the software device."""
        return self.bdf != SOFTWARE

    @property
    def hw_ready(self) -> bool:
        """Hardware that can compress now (what ``qat_hw`` tests need)."""
        return self.is_hardware and self.ready

    def describe(self) -> str:
        if not self.is_hardware:
            return "sw (QATzip software path)" + (f": {self.reason}" if self.reason else "")
        verdict = "ready" if self.ready else f"not ready: {self.reason}"
        return f"{self.bdf} ({self.family} {self.function}, {verdict})"

    def to_json(self) -> dict[str, object]:
        return {
            "bdf": self.bdf,
            "family": self.family,
            "function": self.function,
            "driver": self.driver,
            "state": self.state,
            "services": list(self.services),
            "numa_node": self.numa_node,
            "ready": self.ready,
            "reason": self.reason,
            "backend": self.backend,
        }


def software_device(reason: str = "") -> QatDevice:
    """The software device: QATzip's software path, always ready."""
    return QatDevice(bdf=SOFTWARE, reason=reason)


# ------------------------------------------------------------------------------ discovery
def dev_root_for(sysfs_root: str | os.PathLike[str]) -> str:
    """The ``/dev`` that goes with a sysfs root: ``/dev`` for ``/sys``; for a fake tree
    ``<tree>/sys`` its sibling ``<tree>/dev`` when that exists (VF readiness needs
    ``/dev/vfio/<group>``)."""
    root = Path(sysfs_root)
    if os.path.realpath(root) == "/sys":
        return "/dev"
    sibling = root.parent / "dev"
    return str(sibling) if sibling.is_dir() else str(root.parent / "dev")


def _from_engine(d: Any, sysfs_root: str | None = None) -> QatDevice:
    return QatDevice(
        bdf=d.bdf,
        family=d.family,
        function=d.kind,
        driver=d.driver,
        state=d.state,
        services=tuple(d.cfg_services or ()),
        numa_node=d.numa_node,
        ready=bool(d.ready),
        reason=d.reason,
        backend="hw",
        sysfs_root=sysfs_root,
    )


def discover(sysfs_root: str | os.PathLike[str] = "/sys") -> list[QatDevice]:
    """Every QAT endpoint under ``sysfs_root`` with its readiness verdict (the engine's passive
    sysfs discovery, ``qatmig_engine.qat.devices.discover``)."""
    from qatmig_engine.qat.devices import discover as engine_discover

    root = os.fspath(sysfs_root)
    return [_from_engine(d, root) for d in engine_discover(root, dev_root_for(root))]


def read_device(sysfs_root: str | os.PathLike[str], bdf: str) -> QatDevice:
    """One PCI address; a not-ready device saying so when it is absent or not a QAT device."""
    for d in discover(sysfs_root):
        if d.bdf == bdf:
            return d
    return QatDevice(
        bdf=bdf, family="unknown", ready=False, backend="hw",
        reason=f"no QAT device {bdf} under {Path(sysfs_root) / 'bus' / 'pci' / 'devices'}",
    )


def parse_devices_value(value: str) -> tuple[str, list[str]]:
    """``auto`` / ``sw`` / ``BDF,BDF`` -> (mode, explicit addresses). ValueError when malformed."""
    text = value.strip()
    if text in ("auto", "sw"):
        return text, []
    bdfs = [b.strip() for b in text.split(",") if b.strip()]
    if not bdfs:
        raise ValueError("--qatmig-devices is empty: use auto, sw or a comma list of PCI addresses")
    for b in bdfs:
        if not _looks_like_bdf(b):
            raise ValueError(
                f"--qatmig-devices: {b!r} is not a PCI address like 0000:6b:00.0 "
                "(or use auto or sw)"
            )
    return "list", bdfs


def _looks_like_bdf(text: str) -> bool:
    parts = text.split(":")
    if len(parts) == 2:
        parts = ["0000", *parts]
    if len(parts) != 3 or "." not in parts[2]:
        return False
    dev, fn = parts[2].split(".", 1)
    hexes = (parts[0], parts[1], dev)
    return all(p and all(c in "0123456789abcdefABCDEF" for c in p) for p in hexes) and fn.isdigit()


def resolve_devices(value: str, sysfs_root: str | os.PathLike[str] = "/sys") -> list[QatDevice]:
    """The candidate devices a run may use: ``auto`` = every discovered endpoint, ``sw`` = none,
    a list = those addresses (each read from sysfs, not-ready when absent)."""
    mode, bdfs = parse_devices_value(value)
    if mode == "sw":
        return []
    if mode == "auto":
        return discover(sysfs_root)
    return [read_device(sysfs_root, b if b.count(":") == 2 else f"0000:{b}") for b in bdfs]


def ready_bdfs(devices: Iterable[QatDevice]) -> list[str]:
    return [d.bdf for d in devices if d.hw_ready]


# ------------------------------------------------------------------------------ ownership
def default_lock_dir(sysfs_root: str | os.PathLike[str] = "/sys") -> Path:
    """Where device lock files live. For the real ``/sys`` every pytest run on the host shares
    one directory (so two runs cannot double-book a card); a fake tree gets its own."""
    root = os.path.realpath(os.fspath(sysfs_root))
    base = Path(tempfile.gettempdir())
    if root == "/sys":
        run_lock = Path("/run/lock")
        if os.access(run_lock, os.W_OK):
            base = run_lock
        return base / "qatmig-devices"
    digest = hashlib.sha1(root.encode()).hexdigest()[:12]
    return base / f"qatmig-devices-{digest}"


def _lock_path(lock_dir: Path, name: str) -> Path:
    return lock_dir / f"qatmig-{name.replace(':', '_')}.lock"


class DeviceLease:
    """Exclusive ownership of one device for the life of this object (or process)."""

    def __init__(self, device: QatDevice, fd: int | None, path: Path | None) -> None:
        self.device = device
        self._fd = fd
        self.path = path

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None and self.path is not None:
            _unlock(self._fd, self.path)
            self._fd = None


def _open_lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        # Created by another user of a shared host: flock works on a read-only descriptor.
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # let other users of the host lock it too
        os.fchmod(fd, 0o666)
    return fd


def _try_flock(path: Path) -> int | None:
    """Lock ``path`` without waiting: the descriptor, or None when someone else holds it.

    Holders unlink the file before they unlock it (see :func:`_unlock`), so lock files do not
    pile up; a lock taken on a file that was unlinked meanwhile is dropped and retried.
    """
    for _ in range(20):
        try:
            fd = _open_lock_file(path)
        except FileNotFoundError:  # the directory was removed by a releasing holder
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        try:
            linked = os.stat(path)
        except FileNotFoundError:
            linked = None
        mine = os.fstat(fd)
        if linked is None or (linked.st_dev, linked.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)
            continue
        # Who holds it, for humans looking at the lock directory.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            os.write(fd, f"{os.getpid()} {worker}\n".encode())
        return fd
    return None


def _unlock(fd: int, path: Path, remove_dir: bool = True) -> None:
    """Unlink (while still holding the lock), drop the lock directory when it is empty and
    ``remove_dir`` (only for directories that hold nothing but lock files), then unlock."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    if remove_dir:
        with contextlib.suppress(OSError):
            os.rmdir(path.parent)  # only succeeds when no other lock file is in it
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def acquire_device(
    devices: list[QatDevice], lock_dir: Path, prefer: str | None = None
) -> DeviceLease | None:
    """Take the first free ready device (``prefer`` first), or None when every one is owned."""
    order = [d for d in devices if d.hw_ready]
    order.sort(key=lambda d: d.bdf != prefer)
    for dev in order:
        path = _lock_path(lock_dir, dev.bdf)
        fd = _try_flock(path)
        if fd is not None:
            return DeviceLease(dev, fd, path)
    return None


@contextlib.contextmanager
def file_lock(path: Path, timeout: float, remove_dir: bool = False) -> Iterator[float]:
    """Hold an exclusive lock on ``path`` for the block; yields the seconds spent waiting.

    Raises TimeoutError after ``timeout`` seconds of waiting (never blocks for ever).
    ``remove_dir``: the directory holds only lock files and goes when the last one does.
    """
    start = time.monotonic()
    delay = 0.01
    while True:
        fd = _try_flock(path)
        if fd is not None:
            break
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for the lock {path}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    try:
        yield time.monotonic() - start
    finally:
        _unlock(fd, path, remove_dir)


def perf_lock(
    lock_dir: Path, device: str, timeout: float
) -> contextlib.AbstractContextManager[float]:
    """The lock a performance test holds on its device, so that two performance tests never
    measure on one device (or, for ``sw``, on the shared CPUs) at the same time."""
    return file_lock(_lock_path(lock_dir, f"{device}.perf"), timeout, remove_dir=True)


def with_reason(device: QatDevice, reason: str) -> QatDevice:
    return replace(device, reason=reason)
