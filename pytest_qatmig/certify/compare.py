"""``--compare PREVIOUS/report.json`` and ``--max-regression``: per-metric deltas against a
baseline certification, failing the ones that got worse by more than the limit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bench import HIGHER_IS_BETTER
from .model import FAIL, INFORMATIONAL, PASS, RECOMMENDED, REQUIRED, WARN, Check

#: Metrics compared, in the seed's column order.
COMPARED = ("total_time_ms", "downtime_ms", "throughput_mbps", "pages_per_second",
            "send_cpu_percent", "recv_cpu_percent", "compression_ratio")


class CompareError(ValueError):
    """The baseline cannot be read or the regression limit cannot be parsed."""


@dataclass(frozen=True)
class RegressionLimit:
    """``10%`` (every metric) or ``throughput_mbps:10%,send_cpu_percent:25%``."""

    default: float | None
    per_metric: dict[str, float]

    def for_metric(self, metric: str) -> float | None:
        return self.per_metric.get(metric, self.default)

    def to_json(self) -> dict[str, Any]:
        return {"default_percent": self.default, "per_metric_percent": self.per_metric}


def _percent(text: str, where: str) -> float:
    t = text.strip().rstrip("%").strip()
    try:
        value = float(t)
    except ValueError:
        raise CompareError(f"{where}: {text!r} is not a percentage like 10%") from None
    if value < 0:
        raise CompareError(f"{where}: {text!r} must not be negative")
    return value


def parse_max_regression(text: str | None) -> RegressionLimit | None:
    if not text:
        return None
    default: float | None = None
    per: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            metric, value = part.split(":", 1)
            metric = metric.strip()
            if metric not in COMPARED:
                raise CompareError(f"--max-regression: unknown metric {metric!r} "
                                   f"(known: {', '.join(COMPARED)})")
            per[metric] = _percent(value, "--max-regression")
        else:
            default = _percent(part, "--max-regression")
    return RegressionLimit(default, per)


def load_baseline(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise CompareError(f"cannot read the baseline {p}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CompareError(f"the baseline {p} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != "qatmig-certify-report":
        raise CompareError(f"{p} is not a qatmig certify report.json")
    data["_path"] = str(p)
    return data


def _match_host(host: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any] | None:
    hosts = baseline.get("hosts") or []
    for h in hosts:
        if h.get("name") == host.get("name"):
            return h
    return hosts[0] if len(hosts) == 1 else None


def compare_host(host: dict[str, Any], baseline: dict[str, Any],
                 limit: RegressionLimit | None) -> tuple[dict[str, Any], list[Check]]:
    """The comparison section for one host and its checks (FAIL beyond the limit)."""
    base = _match_host(host, baseline)
    section: dict[str, Any] = {"baseline": baseline.get("_path"),
                               "baseline_created_utc": baseline.get("created_utc"),
                               "max_regression": limit.to_json() if limit else None,
                               "rows": [], "notes": []}
    checks: list[Check] = []
    if base is None:
        section["notes"].append(f"no host named {host.get('name')!r} in the baseline")
        checks.append(Check("compare.host", "baseline has this host", "compare", RECOMMENDED,
                            WARN, section["notes"][-1],
                            "compare with a report of the same host (or fleet)"))
        return section, checks
    mine = host.get("inventory", {}).get("machine_id")
    theirs = base.get("inventory", {}).get("machine_id")
    if mine and theirs and mine != theirs:
        checks.append(Check(
            "compare.machine", "baseline is from this machine", "compare", RECOMMENDED, WARN,
            f"machine_id {mine} differs from the baseline's {theirs} (CPU, count or memory "
            "changed): deltas compare different machines",
            "take a new baseline on this machine when the change is intended"))
    base_cases = {c["id"]: c for c in (base.get("benchmark") or {}).get("cases", [])}
    for case in (host.get("benchmark") or {}).get("cases", []):
        old = base_cases.get(case["id"])
        if old is None:
            section["notes"].append(f"case {case['id']} is new (not in the baseline)")
            continue
        for metric in COMPARED:
            now = (case.get("median") or {}).get(metric)
            was = (old.get("median") or {}).get(metric)
            if not isinstance(now, (int, float)) or not isinstance(was, (int, float)):
                continue
            delta = (now - was) / was * 100.0 if was else 0.0
            worse = -delta if HIGHER_IS_BETTER[metric] else delta
            lim = limit.for_metric(metric) if limit else None
            failed = lim is not None and worse > lim
            row = {"case": case["id"], "metric": metric, "baseline": was, "value": now,
                   "delta_percent": round(delta, 2), "regression_percent": round(worse, 2),
                   "limit_percent": lim, "status": FAIL if failed else PASS}
            section["rows"].append(row)
            word = "worse" if worse > 0 else "better"
            msg = (f"{metric} {was:.1f} -> {now:.1f} ({delta:+.1f}%, {abs(worse):.1f}% {word})"
                   + (f", limit {lim:g}%" if lim is not None else ""))
            checks.append(Check(
                f"compare[{case['id']}].{metric}", f"{case['id']} {metric} vs baseline",
                "compare", REQUIRED if lim is not None else INFORMATIONAL,
                FAIL if failed else PASS, msg,
                ("a regression beyond --max-regression: compare the two reports' host "
                 "inventories and load averages, rerun to rule out noise") if failed else "",
                code="QATMIG_E_REGRESSION" if failed else "", evidence=row))
    return section, checks
