"""Migration results as tests see them, performance thresholds, and the summary table.

Standard library only (imported at plugin load).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The seed's columns (QEMU's QATzip table): header -> JSON field.
PERF_COLUMNS: tuple[tuple[str, str], ...] = (
    ("total ms", "total_time_ms"),
    ("downtime ms", "downtime_ms"),
    ("Mbps", "throughput_mbps"),
    ("pages/s", "pages_per_second"),
    ("send %", "send_cpu_percent"),
    ("recv %", "recv_cpu_percent"),
)
#: How each column is printed, whatever type an implementation reported it in (QEMU gives
#: floats where the engine gives ints): the same value looks the same for every implementation.
PERF_FORMATS: dict[str, str] = {
    "total_time_ms": ",.0f", "downtime_ms": ",.0f", "throughput_mbps": ",.0f",
    "pages_per_second": ",.0f", "send_cpu_percent": ".0f%", "recv_cpu_percent": ".0f%",
}
#: Printed under the table.
PERF_LEGEND = (
    "Mbps: megabits/s on the wire (compressed bytes as sent, headers included; QEMU <= 8.0's "
    "own mbps counts uncompressed pages and is kept apart as qemu_mbps)\n"
    "send/recv %: CPU time of that end / wall time (100% = one core); - = not reported"
)

#: The methods of the seed table (QEMU's QATzip document) plus zlib: the conformance suite's
#: performance cells run each of them per channel count of the host profile.
PERF_METHODS: tuple[str, ...] = ("none", "zlib", "zstd", "qatzip")

#: qatmig_perf keyword -> (JSON field, "min" or "max").
PERF_THRESHOLDS: dict[str, tuple[str, str]] = {
    "min_mbps": ("throughput_mbps", "min"),
    "max_send_cpu": ("send_cpu_percent", "max"),
    "max_recv_cpu": ("recv_cpu_percent", "max"),
    "max_downtime_ms": ("downtime_ms", "max"),
    "max_total_ms": ("total_time_ms", "max"),
    "min_pages_per_second": ("pages_per_second", "min"),
}


class MigrationResult(Mapping[str, Any]):
    """One migration's stats: the engine's JSON fields as attributes (``.verified``,
    ``.throughput_mbps``, ...) and as a read-only mapping.

    Every implementation returns at least ``status, total_time_ms, downtime_ms,
    throughput_mbps, pages_per_second, transferred_bytes, normal_pages, zero_pages,
    send_cpu_percent, recv_cpu_percent, verified``; a value the implementation did not report
    is None (never a stand-in 0), and a ``qatmig_perf`` threshold on it fails.

    One definition of the byte figures: ``transferred_bytes`` counts bytes on the wire (all
    channels, headers included, after compression) and ``throughput_mbps`` is those bits per
    second over the migration's active time, in 10^6 bit/s. A figure counted otherwise (QEMU
    <= 8.0 counts uncompressed page bytes) travels under its own name (``qemu_mbps``).
    """

    REQUIRED = (
        "status", "total_time_ms", "downtime_ms", "throughput_mbps", "pages_per_second",
        "transferred_bytes", "normal_pages", "zero_pages", "send_cpu_percent",
        "recv_cpu_percent", "verified",
    )

    def __init__(self, fields: Mapping[str, Any]) -> None:
        missing = [k for k in self.REQUIRED if k not in fields]
        if missing:
            raise ValueError(f"migration result lacks the field(s) {', '.join(missing)}")
        self._fields = dict(fields)

    @classmethod
    def from_stats(cls, stats: Any) -> MigrationResult:
        """From anything with ``to_json()`` (the engine's MigrationStats) or a mapping."""
        if isinstance(stats, MigrationResult):
            return stats
        if hasattr(stats, "to_json"):
            return cls(stats.to_json())
        return cls(dict(stats))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(
                f"MigrationResult has no field {name!r} (fields: {', '.join(self._fields)})"
            ) from None

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def to_json(self) -> dict[str, Any]:
        return dict(self._fields)

    def __repr__(self) -> str:
        keys = ("status", "verified", "total_time_ms", "throughput_mbps")
        inner = ", ".join(f"{k}={self._fields.get(k)!r}" for k in keys)
        return f"MigrationResult({inner}, ...)"


@dataclass(frozen=True)
class PerfVerdict:
    thresholds: dict[str, float]
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failures


def check_thresholds(
    result: Mapping[str, Any], thresholds: Mapping[str, float],
    origins: Mapping[str, str] | None = None,
) -> PerfVerdict:
    """Compare a result with ``qatmig_perf`` thresholds; each failure is a readable sentence
    naming the metric, the measured value, the limit and (``origins``) where the limit came
    from: ``throughput_mbps 12.3 < min_mbps 50 (limit from profile software-only (...)
    perf.suite.cells[zstd-2ch])``."""
    failures = []
    for key, limit in thresholds.items():
        if limit is None:
            continue
        field_name, kind = PERF_THRESHOLDS[key]
        value = result.get(field_name)
        origin = (origins or {}).get(key)
        why = f" (limit from {origin})" if origin else ""
        if value is None:
            # Missing means missing: a limit on a value nobody measured fails, it never passes.
            failures.append(f"{field_name} not reported, cannot check {key}={limit:g}{why}")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or (
            isinstance(value, float) and math.isnan(value)
        ):
            failures.append(f"{field_name} is {value!r}, cannot check {key}={limit:g}{why}")
        elif kind == "min" and value < limit:
            failures.append(f"{field_name} {value:.1f} < {key} {limit:g}{why}")
        elif kind == "max" and value > limit:
            failures.append(f"{field_name} {value:.1f} > {key} {limit:g}{why}")
    return PerfVerdict(dict(thresholds), tuple(failures))


def unchecked_metrics(thresholds: Mapping[str, float]) -> list[str]:
    """The seed-table fields no threshold limits: reported, not asserted."""
    limited = {PERF_THRESHOLDS[k][0] for k, v in thresholds.items() if v is not None}
    return [f for _h, f in PERF_COLUMNS if f not in limited]


def validate_threshold_keys(keys: Iterable[str], where: str) -> None:
    unknown = sorted(set(keys) - set(PERF_THRESHOLDS))
    if unknown:
        raise ValueError(
            f"{where}: unknown threshold(s) {', '.join(unknown)} "
            f"(known: {', '.join(PERF_THRESHOLDS)})"
        )


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_perf_value(field: str, value: Any) -> str:
    """A seed-table value printed the same way for every implementation and report."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        spec = PERF_FORMATS[field]
        return format(value, spec[:-1]) + "%" if spec.endswith("%") else format(value, spec)
    return "-" if value is None else str(value)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned text table, the engine CLI's (imported here, at report time, not at load)."""
    from qatmig_engine.cli._common import format_table as engine_format_table

    return engine_format_table(headers, [[_fmt(c) for c in r] for r in rows])


def _check_word(rec: Mapping[str, Any]) -> str:
    if not rec.get("failures"):
        return "ok"
    # A failed attempt of a cell that is tried again is not (yet) the test's verdict.
    return "retried" if rec.get("retried") else "FAIL"


def perf_table(records: Iterable[Mapping[str, Any]]) -> str:
    """The terminal-summary table: one row per recorded migration of a perf test."""
    headers = ["test", "impl", "method", "ch", "device", *(h for h, _ in PERF_COLUMNS), "check"]
    rows = []
    for rec in records:
        res = rec.get("result", {})
        rows.append([
            rec.get("nodeid", "?"),
            rec.get("impl", "?"),
            res.get("multifd_compression", rec.get("compression", "?")),
            res.get("multifd_channels", rec.get("channels", "?")),
            rec.get("device", "?"),
            *(format_perf_value(f, res.get(f)) for _, f in PERF_COLUMNS),
            _check_word(rec),
        ])
    return format_table(headers, rows)


def write_perf_report(path: str, records: Sequence[Mapping[str, Any]],
                      profile: Mapping[str, Any] | None) -> None:
    """``--qatmig-perf-report FILE.json``: every perf migration of the run with its metrics
    (the seed table's columns), its limits and their origins, what was not limited, the
    verdict; plus when and under which load it ran."""
    import json
    import os
    import time

    rows = []
    for rec in records:
        res = rec.get("result", {})
        rows.append({
            "nodeid": rec.get("nodeid"), "impl": rec.get("impl"), "device": rec.get("device"),
            "method": res.get("multifd_compression", rec.get("compression")),
            "channels": res.get("multifd_channels", rec.get("channels")),
            "attempt": rec.get("attempt"), "retried": bool(rec.get("retried")),
            "metrics": {f: res.get(f) for _h, f in PERF_COLUMNS},
            "cpu_measured_by": res.get("cpu_measured_by"),
            "measurement": {k: res.get(k) for k in (
                "measured_wall_ms", "send_cpu_seconds", "recv_cpu_seconds",
                "reported_send_cpu_percent", "reported_recv_cpu_percent")},
            "guest_bytes": rec.get("guest_bytes"),
            "thresholds": rec.get("thresholds", {}), "origins": rec.get("origins", {}),
            "not_limited": rec.get("not_limited", []),
            "failures": rec.get("failures", []),
            "verdict": _check_word(rec),
        })
    doc = {
        "schema": "qatmig-perf-report/1",
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "loadavg": list(os.getloadavg()), "cpus": os.cpu_count(),
        "profile": dict(profile) if profile else None,
        "migrations": rows,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")
