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
    certify: {...}                  # what `qatmig certify` checks and measures (docs/certify.md)

Threshold precedence for a ``qatmig_perf`` test, strongest first: the profile's ``perf.tests``
entry matching the test, then the marker's keyword arguments, then the profile's
``perf.defaults``. A key that none of them sets is not checked.

PyYAML is imported only when a profile is given.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .results import validate_threshold_keys


class ProfileError(ValueError):
    """The profile file is missing or malformed; the message names the file and the key."""


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

    def thresholds_for(self, nodeid: str, marker_kwargs: Mapping[str, Any]) -> dict[str, float]:
        merged: dict[str, float] = dict(self.defaults)
        merged.update({k: v for k, v in marker_kwargs.items() if v is not None})
        for pattern, values in self.tests:
            if fnmatch.fnmatchcase(nodeid, pattern):
                merged.update(values)
        return merged

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
    if profile is None:
        return {k: v for k, v in marker_kwargs.items() if v is not None}
    return profile.thresholds_for(nodeid, marker_kwargs)


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
    )
