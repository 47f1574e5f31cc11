"""Host profiles (``--qatmig-profile FILE.yaml``): the devices a host should have and the
performance it should reach.

Format (see ``fixtures/hosts/*.yaml``)::

    name: lab-4xxx                  # shown in the report header
    devices:
      expected: [0000:6b:00.0, 0000:70:00.0]   # PCI addresses that must be ready
      min_ready: 2                              # optional: at least this many ready devices
    perf:
      defaults: {min_mbps: 4000, max_send_cpu: 250}    # fill in what a marker leaves out
      tests:                                           # per test (fnmatch on the node id)
        "*qatzip*": {min_mbps: 8000}                   # override the marker
      suite:                        # the conformance suite's performance cells
        guest_size: 64M             # the Silesia guest they migrate
        channels: [2]               # x methods (default none, zlib, zstd, qatzip)
        attempts: 3                 # a cell passes when one attempt meets every limit
        cells:
          zstd: {min_mbps: 50}              # every channel count of zstd
          zstd-2ch: {max_send_cpu: 250}     # one channel count (beats the line above)
    certify: {...}                  # what `qatmig certify` checks and measures (docs/certify.md)

Threshold precedence for a ``qatmig_perf`` test, strongest first: the profile's ``perf.tests``
entry matching the test, then the limits the test passes itself (the suite's cells:
``perf.suite.cells``), then the marker's keyword arguments, then the profile's
``perf.defaults``. A key that none of them sets is not checked (it is still reported).

PyYAML is imported only when a profile is given.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .results import PERF_METHODS, validate_threshold_keys

#: Where a limit came from, shown in a failure message: "profile software-only
#: (fixtures/hosts/software-only.yaml) perf.suite.cells[zstd-2ch]", "qatmig_perf marker".
Origins = dict[str, str]


class ProfileError(ValueError):
    """The profile file is missing or malformed; the message names the file and the key."""


@dataclass(frozen=True)
class PerfSuite:
    """``perf.suite``: what the conformance suite's performance cells run and their limits."""

    guest_size: int = 64 << 20
    guest_size_text: str = "64M"
    channels: tuple[int, ...] = (2,)
    methods: tuple[str, ...] = PERF_METHODS
    attempts: int = 1
    #: bytes/s for every cell (QEMU's max-bandwidth; 0 = unlimited), e.g. the seed's 10 Gbit/s
    max_bandwidth: int = 0
    #: "METHOD" or "METHOD-<N>ch" -> limits (the second is stronger)
    cells: tuple[tuple[str, dict[str, float]], ...] = ()

    def limits(self, method: str, channels: int) -> tuple[dict[str, float], dict[str, str]]:
        """The cell's limits and, per key, which ``cells`` entry set it."""
        out: dict[str, float] = {}
        where: dict[str, str] = {}
        table = dict(self.cells)
        for key in (method, f"{method}-{channels}ch"):
            for k, v in table.get(key, {}).items():
                out[k] = v
                where[k] = f"perf.suite.cells[{key}]"
        return out, where


@dataclass(frozen=True)
class HostProfile:
    name: str
    path: Path
    expected_devices: tuple[str, ...] = ()
    min_ready: int | None = None
    defaults: dict[str, float] = field(default_factory=dict)
    tests: tuple[tuple[str, dict[str, float]], ...] = ()
    description: str = ""
    #: The ``certify:`` section, read by ``qatmig certify`` (pytest_qatmig.certify.profile).
    certify: Mapping[str, Any] = field(default_factory=dict)
    #: ``perf.suite``: the conformance suite's performance cells (None: the built-in default).
    suite: PerfSuite | None = None

    @property
    def label(self) -> str:
        return f"profile {self.name} ({self.path})"

    def thresholds_for(self, nodeid: str, marker_kwargs: Mapping[str, Any]) -> dict[str, float]:
        return self.thresholds_with_origins(nodeid, marker_kwargs)[0]

    def thresholds_with_origins(
        self, nodeid: str, marker_kwargs: Mapping[str, Any],
        test_limits: Mapping[str, float] | None = None, test_origins: Origins | None = None,
    ) -> tuple[dict[str, float], Origins]:
        """Limits for a ``qatmig_perf`` test and where each one came from (precedence: see
        the module docstring)."""
        merged: dict[str, float] = dict(self.defaults)
        origins = {k: f"{self.label} perf.defaults" for k in merged}
        for k, v in marker_kwargs.items():
            if v is not None:
                merged[k] = v
                origins[k] = "qatmig_perf marker"
        for k, v in (test_limits or {}).items():
            merged[k] = v
            origins[k] = (test_origins or {}).get(k, "the test")
        for pattern, values in self.tests:
            if fnmatch.fnmatchcase(nodeid, pattern):
                merged.update(values)
                origins.update({k: f"{self.label} perf.tests[{pattern!r}]" for k in values})
        return merged, origins

    def device_findings(self, ready: list[str]) -> list[str]:
        """What does not match the profile (empty when the host matches)."""
        out = []
        missing = [b for b in self.expected_devices if b not in ready]
        if missing:
            out.append(f"expected device(s) not ready: {', '.join(missing)}")
        if self.min_ready is not None and len(ready) < self.min_ready:
            out.append(f"{len(ready)} ready device(s), profile wants at least {self.min_ready}")
        return out


def thresholds(
    profile: HostProfile | None, nodeid: str, marker_kwargs: Mapping[str, Any]
) -> dict[str, float]:
    return thresholds_with_origins(profile, nodeid, marker_kwargs)[0]


def thresholds_with_origins(
    profile: HostProfile | None, nodeid: str, marker_kwargs: Mapping[str, Any],
    test_limits: Mapping[str, float] | None = None, test_origins: Origins | None = None,
) -> tuple[dict[str, float], Origins]:
    """The limits of a ``qatmig_perf`` migration and, per key, where it came from."""
    if profile is None:
        merged = {k: v for k, v in marker_kwargs.items() if v is not None}
        origins = {k: "qatmig_perf marker" for k in merged}
        for k, v in (test_limits or {}).items():
            merged[k] = v
            origins[k] = (test_origins or {}).get(k, "the test")
        return merged, origins
    return profile.thresholds_with_origins(nodeid, marker_kwargs, test_limits, test_origins)


def _numbers(where: str, raw: Any, path: Path) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{path}: {where} must be a mapping of threshold: number")
    try:
        validate_threshold_keys(raw, f"{path}: {where}")
    except ValueError as exc:
        raise ProfileError(str(exc)) from None
    out = {}
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ProfileError(f"{path}: {where}.{k} must be a number, not {v!r}")
        out[k] = float(v)
    return out


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
SUITE_KEYS = ("guest_size", "channels", "methods", "attempts", "max_bandwidth", "cells",
              "measured")


def _suite(raw: Any, path: Path) -> PerfSuite | None:
    """``perf.suite`` checked key by key (``measured`` is provenance, written by
    tools/derive_profile.py, and not read here)."""
    if raw is None:
        return None
    w = f"{path}: perf.suite"
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{w} must be a mapping ({', '.join(SUITE_KEYS)})")
    unknown = sorted(set(raw) - set(SUITE_KEYS))
    if unknown:
        raise ProfileError(f"{w}: unknown key(s) {', '.join(unknown)} (known: "
                           f"{', '.join(SUITE_KEYS)})")
    size_text = str(raw.get("guest_size", "64M"))
    m = _SIZE_RE.match(size_text)
    size = int(m.group(1)) * _UNITS[m.group(2).lower()] if m else 0
    if size <= 0 or size % 4096:
        raise ProfileError(f"{w}.guest_size: {size_text!r} is not a positive multiple of 4 KiB "
                           "(examples: 64M, 1G)")
    channels = raw.get("channels", [2])
    if (not isinstance(channels, list) or not channels or not all(
            isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 255 for c in channels)):
        raise ProfileError(f"{w}.channels must be a list of channel counts 1..255, not "
                           f"{channels!r}")
    methods = raw.get("methods", list(PERF_METHODS))
    if not isinstance(methods, list) or not methods or not all(
            isinstance(x, str) for x in methods):
        raise ProfileError(f"{w}.methods must be a list of methods (e.g. [none, zstd])")
    attempts = raw.get("attempts", 1)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ProfileError(f"{w}.attempts must be a positive integer, not {attempts!r}")
    bw = raw.get("max_bandwidth", 0)
    if isinstance(bw, bool) or not isinstance(bw, int) or bw < 0:
        raise ProfileError(f"{w}.max_bandwidth must be bytes/s (0 = unlimited), not {bw!r}")
    cells_raw = raw.get("cells") or {}
    if not isinstance(cells_raw, Mapping):
        raise ProfileError(f"{w}.cells must map METHOD or METHOD-<N>ch to thresholds")
    cell_re = re.compile(r"^([a-z0-9]+)(?:-(\d+)ch)?$")
    cells = []
    for key, vals in cells_raw.items():
        cm = cell_re.match(str(key))
        if not cm:
            raise ProfileError(f"{w}.cells: {key!r} is not METHOD or METHOD-<N>ch "
                               "(e.g. zstd, zstd-2ch)")
        cells.append((str(key), _numbers(f"perf.suite.cells[{key}]", vals, path)))
    measured = raw.get("measured")
    if measured is not None and not isinstance(measured, Mapping):
        raise ProfileError(f"{w}.measured must be a mapping (written by derive_profile.py)")
    return PerfSuite(guest_size=size, guest_size_text=size_text, channels=tuple(channels),
                     methods=tuple(methods), attempts=attempts, max_bandwidth=bw,
                     cells=tuple(cells))


def _hosts_dir() -> Path | None:
    from qatmig_engine.errors import QatmigError
    from qatmig_engine.resources import fixtures_dir

    try:
        return fixtures_dir("hosts")
    except QatmigError:  # qatmig_fixtures not installed: no shipped profiles
        return None


def shipped_profile_names() -> list[str]:
    """Names of the host profiles shipped with qatmig."""
    d = _hosts_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d else []


def shipped_profile(name: str) -> Path | None:
    """The shipped profile file of that name, or None."""
    d = _hosts_dir()
    p = d / f"{name}.yaml" if d else None
    return p if p is not None and p.is_file() else None


def profile_path(text: str | Path) -> Path:
    """``text`` as a profile file: an existing path, else a shipped profile's name."""
    p = Path(text)
    if not p.exists() and "/" not in str(text) and p.suffix in ("", ".yaml"):
        shipped = shipped_profile(p.stem)
        if shipped is not None:
            return shipped
    return p


def load_profile(path: str | Path) -> HostProfile:
    """Read and check a host profile: a YAML file, or the name of one shipped in
    ``qatmig_fixtures/hosts`` (``software-only``, ``4xxx-two-devices``)."""
    import yaml

    p = profile_path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        names = ", ".join(shipped_profile_names())
        raise ProfileError(f"cannot read host profile {p}: {exc.strerror or exc} (shipped "
                           f"profiles, usable by name: {names})") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"host profile {p} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ProfileError(f"host profile {p} must be a YAML mapping (name:, devices:, perf:)")
    unknown = set(data) - {"name", "description", "devices", "perf", "certify"}
    if unknown:
        raise ProfileError(f"{p}: unknown key(s) {', '.join(sorted(unknown))}")
    devices = data.get("devices") or {}
    if not isinstance(devices, Mapping):
        raise ProfileError(f"{p}: devices must be a mapping (expected:, min_ready:)")
    expected = devices.get("expected") or []
    if not isinstance(expected, list) or not all(isinstance(b, str) for b in expected):
        raise ProfileError(f"{p}: devices.expected must be a list of PCI addresses (quoted)")
    min_ready = devices.get("min_ready")
    if min_ready is not None and (isinstance(min_ready, bool) or not isinstance(min_ready, int)):
        raise ProfileError(f"{p}: devices.min_ready must be an integer")
    perf = data.get("perf") or {}
    if not isinstance(perf, Mapping):
        raise ProfileError(f"{p}: perf must be a mapping (defaults:, tests:)")
    tests_raw = perf.get("tests") or {}
    if not isinstance(tests_raw, Mapping):
        raise ProfileError(f"{p}: perf.tests must map node-id patterns to thresholds")
    unknown_perf = sorted(set(perf) - {"defaults", "tests", "suite"})
    if unknown_perf:
        raise ProfileError(f"{p}: perf: unknown key(s) {', '.join(unknown_perf)} "
                           "(known: defaults, tests, suite)")
    certify = data.get("certify") or {}
    if not isinstance(certify, Mapping):
        raise ProfileError(f"{p}: certify must be a mapping (see docs/certify.md)")
    tests = tuple(
        (str(pat), _numbers(f"perf.tests[{pat!r}]", vals, p)) for pat, vals in tests_raw.items()
    )
    return HostProfile(
        name=str(data.get("name") or p.stem),
        path=p,
        expected_devices=tuple(expected),
        min_ready=min_ready,
        defaults=_numbers("perf.defaults", perf.get("defaults"), p),
        tests=tests,
        description=str(data.get("description") or ""),
        certify=dict(certify),
        suite=_suite(perf.get("suite"), p),
    )
