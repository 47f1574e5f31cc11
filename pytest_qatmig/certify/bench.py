"""Stage 3: the profile's benchmark subset, each case checked against its thresholds.

The measuring is behind :class:`BenchEngine` (one migration -> the engine's stats JSON), so the
stage does not care what runs it: :class:`LoopbackBench` uses the engine's
``qatmig_engine.api.migrate_loopback``. A case runs ``repeat`` times; thresholds are checked on
the **median** of each metric (one noisy run on a shared machine does not decide), and every
run must be ``verified`` (destination RAM == source RAM).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..results import PERF_COLUMNS, PERF_THRESHOLDS, check_thresholds
from .checks import HostContext
from .model import ERROR, FAIL, PASS, REQUIRED, Check
from .profile import BenchCase, CertifyProfile

Progress = Callable[[str], None]

#: The metrics recorded per case (the seed's columns + ratio and bytes).
METRICS = (*tuple(f for _, f in PERF_COLUMNS), "compression_ratio", "transferred_bytes")
#: For baselines: is a larger value better?
HIGHER_IS_BETTER = {"throughput_mbps": True, "pages_per_second": True,
                    "compression_ratio": True, "total_time_ms": False, "downtime_ms": False,
                    "send_cpu_percent": False, "recv_cpu_percent": False,
                    "transferred_bytes": False}


class BenchEngine(Protocol):
    """Measures one case ``repeat`` times; one stats dict (the engine's JSON names) per run.
    Raises ``MigrationError`` when a run did not complete with the destination RAM equal."""

    name: str

    def measure(self, case: BenchCase, *, repeat: int, guest_size: int, corpus: str,
                ctx: HostContext, timeout: float) -> list[dict[str, Any]]: ...


class LoopbackBench:
    """Both ends in this process over 127.0.0.1 (``qatmig_engine.api.migrate_loopback``):
    every parameter of a case (levels, the QAT backend, the host's sysfs root and library)."""

    name = "qatmig_engine.api.migrate_loopback"

    def measure(self, case: BenchCase, *, repeat: int, guest_size: int, corpus: str,
                ctx: HostContext, timeout: float) -> list[dict[str, Any]]:
        from qatmig_engine.api import migrate_loopback
        from qatmig_engine.params import MigrationParameters

        out = []
        for _ in range(repeat):
            params = MigrationParameters(**case.params)
            if case.compression == "qatzip":
                params.extra["qat_sysfs_root"] = ctx.sysfs_root
                params.extra["qat_dev_root"] = ctx.dev_root
                if ctx.library:
                    params.extra["qat_library"] = ctx.library
            stats = dict(migrate_loopback(guest_size, params, corpus=corpus,
                                          timeout=timeout).to_json())
            out.append(stats)
            if stats.get("status") != "completed" or stats.get("verified") is not True:
                break
        return out


class MatrixBench:
    """``qatmig bench``'s measurement (``qatmig_engine.bench.run_matrix``): source and
    destination in two processes, CPU per process, the same guest image for every case.
    It takes a method, channels and a link; so it measures the cases that need nothing else
    (default level, no QAT: qatzip cases need the backend, sysfs root and library)."""

    name = "qatmig bench (qatmig_engine.bench.run_matrix)"

    @staticmethod
    def can_measure(case: BenchCase) -> bool:
        from qatmig_engine.params import MigrationParameters

        defaults = MigrationParameters()
        if case.compression == "qatzip":
            return False
        known = {"multifd_compression", "multifd_channels", "max_bandwidth", "dialect",
                 "multifd_zlib_level", "multifd_zstd_level"}
        if set(case.params) - known:
            return False
        return all(case.params.get(k, getattr(defaults, k)) == getattr(defaults, k)
                   for k in ("multifd_zlib_level", "multifd_zstd_level"))

    def measure(self, case: BenchCase, *, repeat: int, guest_size: int, corpus: str,
                ctx: HostContext, timeout: float) -> list[dict[str, Any]]:
        from qatmig_engine.bench import Matrix, parse_impl, run_matrix

        dialect = case.params.get("dialect")
        impl = parse_impl(f"engine@{dialect}" if dialect else "engine")
        guest = "silesia" if corpus in ("stand-in", "silesia", "auto") else corpus
        m = Matrix(impls=[impl], methods=[case.compression], channels=[case.channels],
                   bandwidths=[int(case.params.get("max_bandwidth") or 0)], size=guest_size,
                   guest=guest, repeat=repeat, timeout=timeout)
        result = run_matrix(m)
        out = []
        for r in result["runs"]:
            # the engine's own total time and mbps (transferred bytes, QEMU's meaning), as the
            # loopback cases report them; CPU = each process's CPU seconds over the wall time
            wall = r["wall_s"] or float("nan")
            total_ms = r.get("reported_total_ms") or wall * 1000
            out.append({
                "status": "completed", "verified": True,  # run_matrix raises otherwise
                "total_time_ms": total_ms, "downtime_ms": r["downtime_ms"],
                "throughput_mbps": r.get("reported_mbps"),
                "pages_per_second": guest_size / 4096 / (total_ms / 1000),
                "send_cpu_percent": 100 * r["src_cpu_s"] / wall,
                "recv_cpu_percent": 100 * r["dst_cpu_s"] / wall,
                "compression_ratio": None, "transferred_bytes": r.get("wire_bytes"),
                "corpus": result["meta"]["guest"]["description"],
            })
        return out


def engine_for(case: BenchCase) -> BenchEngine:
    """``qatmig bench``'s measurement when it can express the case, else the loopback."""
    return MatrixBench() if MatrixBench.can_measure(case) else LoopbackBench()


@dataclass
class CaseResult:
    case: BenchCase
    runs: list[dict[str, Any]] = field(default_factory=list)
    median: dict[str, float | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    error: str = ""
    duration_s: float = 0.0
    engine: str = ""

    def to_json(self) -> dict[str, Any]:
        c = self.case
        return {
            "id": c.id, "multifd_compression": c.compression, "multifd_channels": c.channels,
            "level": c.level, "params": c.params, "thresholds": c.thresholds,
            "median": self.median, "runs": self.runs, "failures": self.failures,
            "error": self.error, "duration_s": round(self.duration_s, 3),
            "engine": self.engine,
            "status": ERROR if self.error else (FAIL if self.failures else PASS),
        }


def _median(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(nums) if nums else None


def run_case(engine: BenchEngine, case: BenchCase, prof: CertifyProfile, ctx: HostContext,
             *, repeat: int, guest_size: int, progress: Progress | None = None) -> CaseResult:
    from qatmig_engine.errors import MigrationError

    res = CaseResult(case, engine=engine.name)
    t0 = time.monotonic()
    if progress:
        progress(f"{case.id}: {repeat} run(s) with {engine.name}")
    try:
        runs = engine.measure(case, repeat=repeat, guest_size=guest_size,
                              corpus=prof.bench_corpus, ctx=ctx, timeout=prof.bench_timeout)
    except MigrationError as exc:  # a run failed: the host (or engine) did not migrate
        runs = []
        res.failures.append(f"a run did not complete with equal RAM: {str(exc)[:1500]}")
    except Exception as exc:  # any other crash: the case could not be measured
        runs = []
        res.error = f"{type(exc).__name__}: {exc}"
    for i, stats in enumerate(runs):
        keep = {k: stats.get(k) for k in (*METRICS, "status", "verified", "error",
                                          "qat_backend", "qat_fallback_reasons", "corpus",
                                          "dialect", "normal_pages", "zero_pages")}
        res.runs.append(keep)
        if stats.get("status") != "completed" or stats.get("verified") is not True:
            res.failures.append(
                f"run {i + 1}: status {stats.get('status')}, verified {stats.get('verified')}"
                + (f": {stats.get('error')}" if stats.get("error") else ""))
    res.duration_s = time.monotonic() - t0
    if res.runs:
        res.median = {m: _median([r.get(m) for r in res.runs]) for m in METRICS}
    if not res.error and not res.failures:
        verdict = check_thresholds(res.median, case.thresholds)
        res.failures += [f"median {f}" for f in verdict.failures]
        if case.wants_hardware:
            backends = {r.get("qat_backend") for r in res.runs}
            if backends != {"hw"}:
                reasons = sorted({x for r in res.runs for x in (r.get("qat_fallback_reasons")
                                                                  or [])})
                res.failures.append(
                    f"ran on qat_backend {', '.join(sorted(map(str, backends)))}, the profile "
                    "requires hw" + (f": {'; '.join(reasons)}" if reasons else ""))
    return res


def bench_checks(results: list[CaseResult]) -> list[Check]:
    checks = []
    for r in results:
        c = r.case
        ev = r.to_json()
        title = (f"{c.compression} {c.channels} ch" + (f" L{c.level}" if c.level else "")
                 + " meets its thresholds")
        if r.error:
            checks.append(Check(f"bench[{c.id}]", title, "benchmark", REQUIRED, ERROR,
                                f"could not measure: {r.error}",
                                "see the error; rerun with qatmig migrate and these parameters",
                                code="QATMIG_E_BENCH", evidence=ev, duration_s=r.duration_s))
            continue
        med = r.median
        shown = ", ".join(
            f"{k} {med[f]:.1f}" for k, (f, _) in PERF_THRESHOLDS.items()
            if k in c.thresholds and med.get(f) is not None)
        if r.failures:
            hw = any("requires hw" in f for f in r.failures)
            fix = ("make the hardware checks above pass so the case runs on QAT" if hw else
                   "find what slows the host (other load, CPU frequency, NUMA placement of the "
                   "device vs the CPUs) or, if this host is simply slower, set thresholds "
                   "from a baseline run in the profile")
            checks.append(Check(f"bench[{c.id}]", title, "benchmark", REQUIRED, FAIL,
                                "; ".join(r.failures), fix, code="QATMIG_E_THRESHOLD",
                                evidence=ev, duration_s=r.duration_s))
        else:
            n = len(r.runs)
            checks.append(Check(f"bench[{c.id}]", title, "benchmark", REQUIRED, PASS,
                                f"median of {n} run(s): {shown or 'no thresholds set'}",
                                evidence=ev, duration_s=r.duration_s))
    return checks
