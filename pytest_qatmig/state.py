"""Per-run state of the plugin (one per ``pytest.Config``; kept in ``config.stash``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import devices as dev

#: name -> (default, help). Each is ``--qatmig-<name>`` and the ini key ``qatmig_<name>``.
OPTIONS: dict[str, tuple[str | None, str]] = {
    "impl": (
        "reference",
        "implementation under test: 'reference' (default), an entry-point name of the group "
        "qatmig.implementations, 'package.module:factory', 'qemu:PATH-TO-qemu-system-x86_64', "
        "or 'exec:PROGRAM' / 'exec:FILE.yaml' (a program through the exec: contract)",
    ),
    "devices": (
        "auto",
        "QAT devices this run may use: 'auto' (every ready device found in sysfs; default), "
        "'sw' (software path only), or a comma list of PCI addresses (0000:6b:00.0,...)",
    ),
    "profile": (
        None,
        "host profile: a YAML file or a shipped name (software-only, 4xxx-two-devices): "
        "expected devices and the performance limits of qatmig_perf tests; default: "
        "software-only when no QAT device is ready (see fixtures/hosts/README.md)",
    ),
    "guest_size": ("64M", "size of silesia_guest_memory (e.g. 64M, 1G; default 64M)"),
    "corpus": (
        "stand-in",
        "guest memory content: 'stand-in' (default, generated Silesia-like corpus), "
        "'silesia' (the real corpus, see QATMIG_SILESIA) or a directory of files",
    ),
    "sysfs_root": ("/sys", "where to look for QAT devices (a fake tree for testing; default /sys)"),
    "peer": (
        "reference",
        "the other end of the cross directions impl-to-peer and peer-to-impl: any "
        "--qatmig-impl value (default reference; e.g. qemu:/usr/bin/qemu-system-x86_64)",
    ),
    "perf_report": (
        None,
        "write every qatmig_perf migration (the seed table's metrics, the limits and where "
        "they came from, the verdict) to this JSON file",
    ),
    "matrix": (
        "default",
        "'default': each conformance check once per direction; 'full': every method x "
        "dialect x channel count (slow)",
    ),
}

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
PAGE_SIZE = 4096


def parse_size(text: str) -> int:
    """``64M`` -> 67108864 (binary suffixes, like QEMU's ``-m``)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"--qatmig-guest-size: cannot parse {text!r} (examples: 16M, 64M, 1G)")
    size = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(
            f"--qatmig-guest-size: {text!r} is not a positive multiple of the 4 KiB page size"
        )
    return size


def option_value(config: pytest.Config, name: str) -> str | None:
    """CLI option if given, else the ini key, else the default."""
    value = config.getoption(f"qatmig_{name}", None)
    if value is None:
        ini = config.getini(f"qatmig_{name}")
        value = ini if ini not in ("", None, []) else None
    if value is None:
        value = OPTIONS[name][0]
    return value


def _check_devices(value: str, sysfs_root: str) -> None:
    """Every address named in --qatmig-devices exists (a typo would silently run nothing)."""
    mode, bdfs = dev.parse_devices_value(value)
    if mode != "list":
        return
    pci = Path(sysfs_root) / "bus" / "pci" / "devices"
    missing = [b for b in bdfs if not (pci / (b if b.count(":") == 2 else f"0000:{b}")).exists()]
    if missing:
        found = [d.bdf for d in dev.discover(sysfs_root)]
        raise pytest.UsageError(
            f"--qatmig-devices: no PCI device {', '.join(missing)} under {pci}; QAT endpoints "
            f"there: {', '.join(found) or 'none'} (`qatmig devices` lists them; use 'auto' or "
            "'sw' for the software path)"
        )


def _check_corpus(corpus: str) -> None:
    """A corpus other than the built-in stand-in must be there before any test starts."""
    if corpus.lower() in ("stand-in", "standin"):
        return
    from qatmig_engine.errors import CorpusError
    from qatmig_engine.silesia.corpus import open_corpus

    try:
        open_corpus(corpus)
    except CorpusError as exc:
        raise pytest.UsageError(
            f"--qatmig-corpus {corpus}: {str(exc).replace('--corpus', '--qatmig-corpus')}"
        ) from None


@dataclass
class Settings:
    impl: str
    devices: str
    profile: str | None
    guest_size: int
    guest_size_text: str
    corpus: str
    sysfs_root: str
    peer: str = "reference"
    matrix: str = "default"
    perf_report: str | None = None

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        values = {name: option_value(config, name) for name in OPTIONS}
        try:
            dev.parse_devices_value(values["devices"] or "")
            size = parse_size(values["guest_size"] or "")
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        corpus = values["corpus"] or "stand-in"
        sysfs_root = values["sysfs_root"] or "/sys"
        if not os.path.isdir(sysfs_root):
            raise pytest.UsageError(f"--qatmig-sysfs-root: {sysfs_root} is not a directory")
        _check_devices(values["devices"] or "auto", sysfs_root)
        _check_corpus(corpus)
        matrix = values["matrix"] or "default"
        if matrix not in ("default", "full"):
            raise pytest.UsageError(f"--qatmig-matrix: {matrix!r} is not 'default' or 'full'")
        return cls(
            peer=values["peer"] or "reference",
            matrix=matrix,
            impl=values["impl"] or "reference",
            devices=values["devices"] or "auto",
            profile=values["profile"],
            guest_size=size,
            guest_size_text=values["guest_size"] or "",
            corpus=corpus,
            sysfs_root=sysfs_root,
            perf_report=values["perf_report"],
        )


@dataclass
class QatmigState:
    config: pytest.Config
    settings: Settings
    profile: Any = None
    _impl: Any = None
    _peer: Any = None
    _capabilities: frozenset[str] | None = None
    _devices: list[dev.QatDevice] | None = None
    _lease: dev.DeviceLease | None = None
    _worker_device: dev.QatDevice | None = None
    #: controller side (xdist): devices not handed to a worker, and who has which.
    free: list[str] | None = None
    assigned: dict[str, str | None] = field(default_factory=dict)
    #: migrations of perf tests (controller side), for the terminal summary.
    perf_records: list[dict[str, Any]] = field(default_factory=list)
    _default_profile: Any = None
    _default_profile_why: str | None = None

    # -------------------------------------------------------------- host profile
    def perf_profile(self) -> Any:
        """The host profile the performance limits come from: ``--qatmig-profile``, else the
        shipped ``software-only`` when this host has no ready QAT device, else None (a QAT
        host without a profile: every metric is reported, none asserted)."""
        if self.profile is not None:
            return self.profile
        if self._default_profile_why is None:
            if self.settings.devices != "sw" and self.ready():
                self._default_profile_why = (
                    "none: a QAT device is ready, so no default applies; perf metrics are "
                    "reported, not asserted (--qatmig-profile 4xxx-two-devices or your own)")
            else:
                from .profile import ProfileError, load_profile

                try:
                    self._default_profile = load_profile("software-only")
                    self._default_profile_why = (
                        f"{self._default_profile.name} (default: no ready QAT device; "
                        "--qatmig-profile to choose)")
                except ProfileError as exc:
                    self._default_profile_why = f"none: {exc}"
        return self._default_profile

    def perf_profile_line(self) -> str | None:
        """The report header's line about the default profile (None with --qatmig-profile)."""
        if self.profile is not None:
            return None
        self.perf_profile()
        return f"qatmig: perf limits from host profile {self._default_profile_why}"

    # -------------------------------------------------------------- implementation
    @property
    def impl(self) -> Any:
        if self._impl is None:
            from .adapters import ImplementationError, load_implementation

            try:
                self._impl = load_implementation(self.settings.impl)
            except ImplementationError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self._impl

    @property
    def peer(self) -> Any:
        """The peer implementation (``--qatmig-peer``), loaded on first use."""
        if self._peer is None:
            if self.settings.peer == self.settings.impl:
                self._peer = self.impl
            else:
                from .adapters import ImplementationError, load_implementation

                try:
                    self._peer = load_implementation(self.settings.peer)
                except ImplementationError as exc:
                    raise pytest.UsageError(
                        str(exc).replace("--qatmig-impl", "--qatmig-peer")) from None
        return self._peer

    def directions(self) -> tuple[str, ...]:
        """Directions of the cross matrix this run covers (a peer equal to the implementation
        under test adds nothing beyond impl-to-impl)."""
        from .roles import DIRECTIONS

        if self.settings.peer == self.settings.impl:
            return DIRECTIONS[:1]
        return DIRECTIONS

    def capabilities(self) -> frozenset[str]:
        if self._capabilities is None:
            self._capabilities = frozenset(self.impl.capabilities())
        return self._capabilities

    # -------------------------------------------------------------- devices
    @property
    def devices(self) -> list[dev.QatDevice]:
        if self._devices is None:
            self._devices = dev.resolve_devices(self.settings.devices, self.settings.sysfs_root)
        return self._devices

    @property
    def lock_dir(self) -> Path:
        return dev.default_lock_dir(self.settings.sysfs_root)

    def ready(self) -> list[str]:
        return dev.ready_bdfs(self.devices)

    def worker_device(self) -> dev.QatDevice:
        """The device this process owns (taken on first use, held until the run ends)."""
        if self._worker_device is not None:
            return self._worker_device
        s = self.settings
        if s.devices == "sw":
            device = dev.software_device("--qatmig-devices=sw")
        elif not self.devices:
            device = dev.software_device(
                f"no QAT device under {Path(s.sysfs_root) / 'bus/pci/devices'}"
            )
        elif not self.ready():
            why = "; ".join(f"{d.bdf}: {d.reason}" for d in self.devices)
            device = dev.software_device(f"no ready QAT device ({why})")
        else:
            workerinput = getattr(self.config, "workerinput", {})
            lease = dev.acquire_device(
                self.devices, self.lock_dir, prefer=workerinput.get("qatmig_device")
            )
            if lease is None:
                device = dev.software_device(
                    f"all {len(self.ready())} ready QAT device(s) are owned by other workers or "
                    f"runs (locks in {self.lock_dir}); use -n auto for one worker per device"
                )
            else:
                self._lease = lease
                device = lease.device
        self._worker_device = device
        return device

    def perf_lock_name(self) -> str:
        return self.worker_device().bdf

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    # -------------------------------------------------------------- header
    def header_line(self) -> str:
        s = self.settings
        if s.devices == "sw":
            devs = "sw (software path only)"
        else:
            ready = self.ready()
            total = len(self.devices)
            if ready:
                devs = f"{s.devices}: {len(ready)} of {total} ready ({', '.join(ready)})"
            elif total:
                devs = f"{s.devices}: none of {total} ready, software path"
            else:
                devs = f"{s.devices}: no QAT device, software path"
            if s.sysfs_root != "/sys":
                devs += f" [sysfs {s.sysfs_root}]"
        from .adapters import describe
        from .roles import has_roles

        peer = ""
        if s.peer != s.impl and has_roles(self.impl):
            peer = (f" | peer {describe(self.peer)} (cross directions: "
                    f"{', '.join(self.directions())})")
        return (
            f"qatmig: implementation {describe(self.impl)}{peer} | devices {devs} | "
            f"corpus {s.corpus}, guest {s.guest_size_text}"
        )


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def xdist_worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")
