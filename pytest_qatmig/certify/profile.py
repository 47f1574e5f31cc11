"""The ``certify:`` section of a host profile (``fixtures/hosts/*.yaml``).

::

    certify:
      hardware: true                 # default: true when devices.expected / min_ready ask for it
      libqatzip: {min_version: "1.3"}
      host:
        min_memlock: 64M             # RLIMIT_MEMLOCK soft limit the migrating user needs
        hugepages: 0                 # free 2 MiB hugepages needed (out-of-tree driver stack)
      conformance:
        impl: [reference]            # default for --impl (one suite run per implementation)
        k: "not dialect"             # optional -k / -m subset
        m: ""
        guest_size: 16M              # --qatmig-guest-size of the suite run
      bench:
        guest_size: 64M
        corpus: stand-in
        repeat: 3                    # runs per case; thresholds are checked on the median
        defaults: {max_downtime_ms: 5000}
        cases:
          - id: qatzip-8ch
            multifd-compression: qatzip
            multifd-channels: 8
            multifd-qatzip-level: 1
            qat-backend: hw          # hw: the case fails when it fell back to software
            thresholds: {min_mbps: 8000, max_send_cpu: 250}

Threshold keys are the ``qatmig_perf`` ones (``min_mbps``, ``max_send_cpu``, ``max_recv_cpu``,
``max_downtime_ms``, ``max_total_ms``, ``min_pages_per_second``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..profile import HostProfile, ProfileError, load_profile
from ..results import validate_threshold_keys

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

#: Case keys (QEMU's parameter names) -> MigrationParameters field.
CASE_PARAMS = {
    "multifd-compression": "multifd_compression",
    "multifd-channels": "multifd_channels",
    "multifd-zlib-level": "multifd_zlib_level",
    "multifd-zstd-level": "multifd_zstd_level",
    "multifd-qatzip-level": "multifd_qatzip_level",
    "max-bandwidth": "max_bandwidth",
    "dialect": "dialect",
    "qat-backend": "qat_backend",
}


def parse_size(text: str | int, where: str) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ProfileError(f"{where}: cannot parse size {text!r} (examples: 16M, 64M, 1G)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


@dataclass(frozen=True)
class BenchCase:
    id: str
    params: dict[str, Any]  # MigrationParameters field -> value
    thresholds: dict[str, float]

    @property
    def compression(self) -> str:
        return str(self.params.get("multifd_compression", "none"))

    @property
    def channels(self) -> int:
        return int(self.params.get("multifd_channels", 2))

    @property
    def level(self) -> int | None:
        key = {"zlib": "multifd_zlib_level", "zstd": "multifd_zstd_level",
               "qatzip": "multifd_qatzip_level"}.get(self.compression)
        value = self.params.get(key) if key else None
        return None if value is None else int(value)

    @property
    def wants_hardware(self) -> bool:
        return self.params.get("qat_backend") == "hw"


@dataclass(frozen=True)
class CertifyProfile:
    host: HostProfile
    hardware: bool
    min_libqatzip: str | None
    min_memlock: int | None  # bytes; None = not required
    hugepages: int  # free 2 MiB hugepages required; 0 = not required
    impls: tuple[str, ...]
    suite_k: str
    suite_m: str
    suite_guest_size: str
    suite_timeout: float
    bench_guest_size: int
    bench_corpus: str
    bench_repeat: int
    bench_timeout: float
    cases: tuple[BenchCase, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def path(self) -> Path:
        return self.host.path


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ProfileError(f"{where} must be a mapping")
    return value


def _thresholds(raw: Any, where: str) -> dict[str, float]:
    raw = _mapping(raw, where)
    try:
        validate_threshold_keys(raw, where)
    except ValueError as exc:
        raise ProfileError(str(exc)) from None
    out: dict[str, float] = {}
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ProfileError(f"{where}.{k} must be a number, not {v!r}")
        out[str(k)] = float(v)
    return out


def _case(raw: Any, i: int, defaults: dict[str, float], where: str) -> BenchCase:
    w = f"{where}.bench.cases[{i}]"
    raw = _mapping(raw, w)
    unknown = set(raw) - set(CASE_PARAMS) - {"id", "thresholds"}
    if unknown:
        raise ProfileError(f"{w}: unknown key(s) {', '.join(sorted(unknown))} "
                           f"(known: id, thresholds, {', '.join(CASE_PARAMS)})")
    params = {CASE_PARAMS[k]: v for k, v in raw.items() if k in CASE_PARAMS}
    params.setdefault("multifd_compression", "none")
    params.setdefault("multifd_channels", 2)
    if params.get("qat_backend") not in (None, "auto", "hw", "sw"):
        raise ProfileError(f"{w}.qat-backend must be auto, hw or sw")
    for key in ("multifd_channels", "multifd_zlib_level", "multifd_zstd_level",
                "multifd_qatzip_level", "max_bandwidth"):
        if key in params and (isinstance(params[key], bool) or not isinstance(params[key], int)):
            raise ProfileError(f"{w}: {key.replace('_', '-')} must be an integer")
    case_id = str(raw.get("id") or f"{params['multifd_compression']}-"
                  f"{params['multifd_channels']}ch")
    thresholds = dict(defaults)
    thresholds.update(_thresholds(raw.get("thresholds"), f"{w}.thresholds"))
    return BenchCase(case_id, params, thresholds)


def load_certify_profile(path: str | Path) -> CertifyProfile:
    """Read a host profile and its ``certify:`` section (ProfileError names file and key)."""
    host = load_profile(path)
    where = str(host.path) + ": certify"
    sec = _mapping(host.certify, where)
    unknown = set(sec) - {"hardware", "libqatzip", "host", "conformance", "bench"}
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    wants_devices = bool(host.expected_devices) or bool(host.min_ready)
    hardware = sec.get("hardware", wants_devices)
    if not isinstance(hardware, bool):
        raise ProfileError(f"{where}.hardware must be true or false")
    lib = _mapping(sec.get("libqatzip"), f"{where}.libqatzip")
    min_lib = lib.get("min_version")
    hostsec = _mapping(sec.get("host"), f"{where}.host")
    memlock_raw = hostsec.get("min_memlock")
    min_memlock = None if memlock_raw in (None, 0) else parse_size(
        memlock_raw, f"{where}.host.min_memlock")
    hugepages = hostsec.get("hugepages", 0) or 0
    if isinstance(hugepages, bool) or not isinstance(hugepages, int) or hugepages < 0:
        raise ProfileError(f"{where}.host.hugepages must be a whole number of 2 MiB pages")
    conf = _mapping(sec.get("conformance"), f"{where}.conformance")
    impls = conf.get("impl", ["reference"])
    if isinstance(impls, str):
        impls = [impls]
    if not isinstance(impls, list) or not all(isinstance(i, str) for i in impls) or not impls:
        raise ProfileError(f"{where}.conformance.impl must be a list of implementation specs")
    bench = _mapping(sec.get("bench"), f"{where}.bench")
    defaults = _thresholds(bench.get("defaults"), f"{where}.bench.defaults")
    cases_raw = bench.get("cases") or []
    if not isinstance(cases_raw, list):
        raise ProfileError(f"{where}.bench.cases must be a list")
    cases = tuple(_case(c, i, defaults, where) for i, c in enumerate(cases_raw))
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise ProfileError(f"{where}.bench.cases: ids must be unique ({', '.join(ids)})")
    repeat = bench.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ProfileError(f"{where}.bench.repeat must be a positive integer")
    return CertifyProfile(
        host=host,
        hardware=hardware,
        min_libqatzip=None if min_lib is None else str(min_lib),
        min_memlock=min_memlock,
        hugepages=hugepages,
        impls=tuple(impls),
        suite_k=str(conf.get("k") or ""),
        suite_m=str(conf.get("m") or ""),
        suite_guest_size=str(conf.get("guest_size") or "16M"),
        suite_timeout=float(conf.get("timeout") or 1800),
        bench_guest_size=parse_size(bench.get("guest_size") or "64M", f"{where}.bench.guest_size"),
        bench_corpus=str(bench.get("corpus") or "stand-in"),
        bench_repeat=repeat,
        bench_timeout=float(bench.get("timeout") or 600),
        cases=cases,
    )
