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


def check_thresholds(result: Mapping[str, Any], thresholds: Mapping[str, float]) -> PerfVerdict:
    """Compare a result with ``qatmig_perf`` thresholds; each failure is a readable sentence."""
    failures = []
    for key, limit in thresholds.items():
        if limit is None:
            continue
        field_name, kind = PERF_THRESHOLDS[key]
        value = result.get(field_name)
        if value is None:
            # Missing means missing: a limit on a value nobody measured fails, it never passes.
            failures.append(f"{field_name} not reported, cannot check {key}={limit:g}")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or (
            isinstance(value, float) and math.isnan(value)
        ):
            failures.append(f"{field_name} is {value!r}, cannot check {key}={limit:g}")
        elif kind == "min" and value < limit:
            failures.append(f"{field_name} {value:.1f} < {key} {limit:g}")
        elif kind == "max" and value > limit:
            failures.append(f"{field_name} {value:.1f} > {key} {limit:g}")
    return PerfVerdict(dict(thresholds), tuple(failures))


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
            "ok" if not rec.get("failures") else "FAIL",
        ])
    return format_table(headers, rows)
