"""Certify one host: host checks, then the conformance suite, then the benchmark subset.

:func:`certify_host` takes plain JSON-able options and a progress callback and returns the
host's section of the report, so the same function runs locally and on a fleet host through
an execnet gateway (:mod:`.fleet`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .checks import HostContext, host_checks, inventory
from .model import ERROR, INFORMATIONAL, REQUIRED, SKIP, Check

#: progress(kind, text): kind "line" (keep it: a finished step) or "status" (transient).
Progress = Callable[[str, str], None]


def _noop(kind: str, text: str) -> None:
    pass


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(check: Check) -> str:
    msg = check.message.splitlines()[0] if check.message else ""
    return f"{check.status:<5} {check.id}  {msg}"[:200]


def resolve_context(opts: dict[str, Any]) -> HostContext:
    """The host's sysfs root, /dev and library: explicit options first, else this host's
    environment (``QATMIG_SYSFS_ROOT``, ``QATMIG_DEV_ROOT``, ``QATMIG_LIBQATZIP``), else
    ``/sys`` and ``/dev``. Resolved on the host itself, so fleet hosts can differ."""
    from ..devices import dev_root_for

    sysfs = opts.get("sysfs_root") or os.environ.get("QATMIG_SYSFS_ROOT") or "/sys"
    dev = opts.get("dev_root") or os.environ.get("QATMIG_DEV_ROOT") or dev_root_for(sysfs)
    return HostContext(sysfs, dev, opts.get("library") or None)


def certify_host(opts: dict[str, Any], progress: Progress = _noop) -> dict[str, Any]:
    """Run every stage on this host; never raises for a host problem (it is a check)."""
    from .bench import bench_checks, engine_for, run_case
    from .profile import load_certify_profile, parse_size
    from .suite import run_suite, suite_checks

    t0 = time.monotonic()
    started = utc_now()
    prof = load_certify_profile(opts["profile"])
    ctx = resolve_context(opts)
    raw_dir = Path(opts["raw_dir"])
    raw_dir.mkdir(parents=True, exist_ok=True)
    checks: list[Check] = []
    notes: list[str] = []
    inv = inventory(ctx)  # before the stages: its load average is the one at the start

    progress("line", "[1/3] host checks")
    try:
        hchecks, facts = host_checks(prof, ctx)
    except Exception as exc:  # a bug or an unreadable host: the stage could not run
        hchecks = [Check("host.checks", "host checks run", "host", REQUIRED, ERROR,
                         f"{type(exc).__name__}: {exc}", "report this as a qatmig bug")]
        facts = {"devices": [], "library": {}, "ready_devices": []}
    for c in hchecks:
        progress("line", "  " + _line(c))
    checks += hchecks
    ready = list(facts.get("ready_devices", []))

    # ---------------------------------------------------------------- conformance
    runs: list[dict[str, Any]] = []
    impls = list(opts.get("impls") or prof.impls)
    if opts.get("skip_suite"):
        checks.append(Check("conformance", "conformance suite", "conformance", REQUIRED, SKIP,
                            "skipped with --skip-suite: the result cannot certify the host"))
        progress("line", "[2/3] conformance suite: skipped (--skip-suite)")
    for n, impl in enumerate(impls if not opts.get("skip_suite") else []):
        workers = opts.get("workers")
        if workers is None:
            workers = len(ready)  # one xdist worker per ready device; none -> one process
        progress("line", f"[2/3] conformance suite against {impl} ({n + 1}/{len(impls)}), "
                 + (f"{workers} worker(s), one device each" if workers else "one process"))

        def on_test(done: int, total: int | None, nodeid: str, outcome: str) -> None:
            progress("status", f"  {done}/{total or '?'} {outcome:<7} {nodeid}")
            if outcome == "failed":
                progress("line", f"  FAIL  {nodeid}")

        run = run_suite(impl, prof, ctx, raw_dir, workers=workers, k=opts.get("k") or "",
                        m=opts.get("m") or "", guest_size=opts.get("suite_guest_size"),
                        on_test=on_test)
        schecks = suite_checks(run, prof)
        progress("line", "  " + _line(schecks[0]))
        checks += schecks
        runs.append(run.to_json())

    # ---------------------------------------------------------------- benchmark
    bench: dict[str, Any] = {"engine": None, "cases": []}
    cases = list(prof.cases)
    if opts.get("skip_bench"):
        checks.append(Check("benchmark", "benchmark subset", "benchmark", REQUIRED, SKIP,
                            "skipped with --skip-bench: the result cannot certify the host"))
        progress("line", "[3/3] benchmark: skipped (--skip-bench)")
    elif not cases:
        checks.append(Check("benchmark", "benchmark subset", "benchmark", INFORMATIONAL, SKIP,
                            "the profile lists no benchmark cases (certify.bench.cases)"))
        progress("line", "[3/3] benchmark: the profile has no cases")
    else:
        guest_size = (parse_size(opts["bench_guest_size"], "--bench-guest-size")
                      if opts.get("bench_guest_size") else prof.bench_guest_size)
        repeat = int(opts.get("repeat") or prof.bench_repeat)
        engines = {c.id: engine_for(c) for c in cases}
        bench.update(engine=", ".join(sorted({e.name for e in engines.values()})),
                     guest_size=guest_size, corpus=prof.bench_corpus, repeat=repeat)
        progress("line", f"[3/3] benchmark: {len(cases)} case(s), {guest_size >> 20} MiB "
                 f"{prof.bench_corpus} guest, {repeat} run(s) each")
        results = []
        for case in cases:
            r = run_case(engines[case.id], case, prof, ctx, repeat=repeat, guest_size=guest_size,
                         progress=lambda text: progress("status", "  " + text))
            results.append(r)
            for c in bench_checks([r]):
                progress("line", "  " + _line(c))
                checks.append(c)
        bench["cases"] = [r.to_json() for r in results]
        bench["load_average_after"] = list(os.getloadavg())

    return {
        "name": opts.get("name") or "",
        "spec": opts.get("spec") or "local",
        "started_utc": started,
        "duration_s": round(time.monotonic() - t0, 3),
        "inventory": inv,
        "devices": facts.get("devices", []),
        "ready_devices": ready,
        "library": facts.get("library", {}),
        "checks": [c.to_json() for c in checks],
        "conformance": runs,
        "benchmark": bench,
        "notes": notes,
    }
