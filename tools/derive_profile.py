#!/usr/bin/env python3
"""Derive the performance limits of a host profile from measurements on this host.

    python tools/derive_profile.py                                   # print the perf: section
    python tools/derive_profile.py --write fixtures/hosts/software-only.yaml
    python tools/derive_profile.py --impl qemu:/usr/bin/qemu-system-x86_64 \\
        --methods none,zlib,zstd --channels 2,4 --runs 7 --write my-host.yaml

It runs the conformance suite's performance cells (``qatmig_conformance.test_performance``,
the seed table's metrics per method and channel count) ``--runs`` times in separate pytest
processes, with a profile that limits nothing, and collects every migration from
``--qatmig-perf-report``. For each cell it then sets limits from the *worst* of the runs with
a stated margin for noise:

* floors (throughput Mbps, pages/s): worst / ``--margin``;
* ceilings on time (total ms): worst x ``--margin``; downtime: worst x ``--margin``, at least
  ``--min-downtime-ms`` (a static guest's downtime is a few ms, and one scheduling hiccup on a
  loaded machine is worth more than that);
* ceilings on CPU % (send, recv): worst x ``--cpu-margin``; a ceiling this machine's cores
  could not exceed anyway (``--cpu-cap``, 100 % per CPU) is left out: reported, not asserted.

A floor is never below median / 9 and a time ceiling never above median x 9, so an
implementation 10x slower than the one measured fails every cell; the script refuses to write
limits when the runs spread so much that this rule would put a floor above the worst run.
The section written says when, on which machine, under which load average, with how many
runs and which margins the limits were measured, and keeps the medians and worst values under
``perf.suite.measured`` (the plugin ignores them; tests/test_suite_performance.py checks the
10x rule against them). ``--write`` replaces only the ``perf:`` section of the file: the rest
(devices, certify, their comments) stays as it is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: metric -> (threshold key, "floor" | "ceiling", kind of margin)
LIMITS: dict[str, tuple[str, str, str]] = {
    "throughput_mbps": ("min_mbps", "floor", "margin"),
    "pages_per_second": ("min_pages_per_second", "floor", "margin"),
    "total_time_ms": ("max_total_ms", "ceiling", "margin"),
    "downtime_ms": ("max_downtime_ms", "ceiling", "downtime"),
    "send_cpu_percent": ("max_send_cpu", "ceiling", "cpu"),
    "recv_cpu_percent": ("max_recv_cpu", "ceiling", "cpu"),
}
#: An implementation this many times slower than the median must fail.
SLOWER = 10
#: ... so floors are at least median / GUARD, time ceilings at most median x GUARD.
GUARD = 9


class DeriveError(Exception):
    pass


def run_cells(args: argparse.Namespace, k: int, work: Path) -> list[dict[str, Any]]:
    """One pytest run of the suite's performance cells; its migrations (last attempt each)."""
    prof = work / "measure.yaml"
    prof.write_text(
        "name: measure\nperf:\n  suite:\n"
        f"    guest_size: {args.guest_size}\n"
        f"    channels: [{', '.join(str(c) for c in args.channels)}]\n"
        f"    methods: [{', '.join(args.methods)}]\n"
        "    attempts: 1\n")
    report = work / f"run-{k}.json"
    cmd = [sys.executable, "-m", "pytest", "-p", "qatmig", "--pyargs", "qatmig_conformance",
           "-m", "qatmig_perf", f"--qatmig-impl={args.impl}", f"--qatmig-profile={prof}",
           f"--qatmig-corpus={args.corpus}", f"--qatmig-perf-report={report}", "-q",
           "-p", "no:cacheprovider"]
    cp = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if cp.returncode != 0 or not report.exists():
        raise DeriveError(f"run {k}: pytest exited {cp.returncode}:\n{cp.stdout[-3000:]}"
                          f"\n{cp.stderr[-2000:]}")
    rows = json.loads(report.read_text())["migrations"]
    bad = [r for r in rows if r["verdict"] != "ok"]
    if bad:
        raise DeriveError(f"run {k}: not every migration was valid: {bad[0]['failures']}")
    return rows


def _round_floor(x: float) -> float:
    """Down to 2 significant digits (a floor must not creep up by rounding)."""
    if x <= 0:
        return 0.0
    e = 10 ** (math.floor(math.log10(x)) - 1)
    return math.floor(x / e) * e


def _round_ceiling(x: float) -> float:
    if x <= 0:
        return 0.0
    e = 10 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(x / e) * e


def derive(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """cell id -> {"limits": {key: value}, "measured": {metric: {median, worst}}}."""
    cells: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        cid = f"{r['method']}-{r['channels']}ch"
        for metric, value in r["metrics"].items():
            if isinstance(value, (int, float)):
                cells.setdefault(cid, {}).setdefault(metric, []).append(float(value))
    out: dict[str, Any] = {}
    for cid, metrics in cells.items():
        limits: dict[str, float] = {}
        measured: dict[str, dict[str, float]] = {}
        for metric, values in metrics.items():
            key, kind, margin_kind = LIMITS[metric]
            med = statistics.median(values)
            worst = min(values) if kind == "floor" else max(values)
            margin = {"margin": args.margin, "cpu": args.cpu_margin,
                      "downtime": args.margin}[margin_kind]
            if kind == "floor":
                limit = max(worst / margin, med / GUARD)
                if limit > worst:
                    raise DeriveError(
                        f"{cid} {metric}: the runs spread from {worst:g} to {max(values):g}; "
                        f"a floor of median/{GUARD} = {med / GUARD:g} would fail the worst "
                        "run: measure again on a quieter machine or with more runs")
                limit = _round_floor(limit)
            else:
                limit = worst * margin
                if kind == "ceiling" and margin_kind == "cpu" and limit >= args.cpu_cap:
                    # what this machine's cores cannot exceed anyway: reported, not asserted
                    measured[metric] = {"median": round(med, 1), "worst": round(worst, 1),
                                        "runs": len(values), "not_limited": True}
                    continue
                if metric == "downtime_ms":
                    limit = max(limit, args.min_downtime_ms)
                elif metric == "total_time_ms":
                    limit = min(limit, med * GUARD)
                    if limit < worst:
                        raise DeriveError(f"{cid} {metric}: the runs spread too much "
                                          f"({min(values):g}..{worst:g})")
                limit = _round_ceiling(limit)
            limits[key] = limit
            measured[metric] = {"median": round(med, 1), "worst": round(worst, 1),
                                "runs": len(values)}
        out[cid] = {"limits": limits, "measured": measured}
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def perf_section(derived: dict[str, Any], args: argparse.Namespace, meta: dict[str, Any],
                 defaults: str | None) -> str:
    """The ``perf:`` section as YAML text, with the provenance in comments."""
    la0, la1 = meta["load_before"], meta["load_after"]
    lines = [
        "perf:",
        f"  # Derived by `python tools/derive_profile.py {' '.join(meta['argv'])}`",
        f"  # on {meta['date']} ({meta['machine']}, commit {meta['commit']}): {args.runs} runs "
        f"of the suite's",
        f"  # performance cells against --qatmig-impl {args.impl}, {args.guest_size} "
        f"{meta['corpus']} guest;",
        f"  # 1-minute load average {la0:.1f} before, {la1:.1f} after (other work shared the "
        "CPUs).",
        f"  # Margins for noise: floors (Mbps, pages/s) = worst run / {args.margin:g}; total "
        f"ms = worst x {args.margin:g};",
        f"  # downtime = worst x {args.margin:g}, at least {args.min_downtime_ms:g} ms; CPU % "
        f"= worst x {args.cpu_margin:g} (left out at >= {args.cpu_cap:g} %). A floor is never",
        f"  # below median / {GUARD} nor a time ceiling above median x {GUARD}: an "
        f"implementation {SLOWER}x slower fails.",
    ]
    if defaults:
        lines += [f"  defaults: {defaults}          # for other qatmig_perf tests"]
    lines += [
        "  suite:",
        f"    guest_size: {args.guest_size}",
        f"    channels: [{', '.join(str(c) for c in args.channels)}]",
        f"    methods: [{', '.join(args.methods)}]",
        f"    attempts: {args.attempts}                       # a cell passes when one "
        "attempt meets every limit",
        "    cells:",
    ]
    order = list(LIMITS)
    for cid, d in derived.items():
        lim = ", ".join(f"{LIMITS[m][0]}: {d['limits'][LIMITS[m][0]]:g}" for m in order
                        if LIMITS[m][0] in d["limits"])
        lines.append(f"      {cid}: {{{lim}}}")
    lines += ["    # What the limits were derived from (median and worst of the runs); the "
              "plugin does not read it.", "    measured:"]
    for cid, d in derived.items():
        lines.append(f"      {cid}:")
        for m in order:
            if m in d["measured"]:
                v = d["measured"][m]
                lines.append(f"        {m}: {{median: {v['median']:g}, worst: {v['worst']:g}, "
                             f"runs: {v['runs']}}}")
    return "\n".join(lines) + "\n"


def splice(text: str, section: str) -> str:
    """``text`` with its top-level ``perf:`` section (up to the next top-level key or
    top-level comment block before one) replaced by ``section``."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.startswith("perf:")), None)
    if start is None:
        return text.rstrip("\n") + "\n" + section
    # comments directly above perf: belong to it
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " #"):
        end += 1
    # a comment block right before the next key belongs to that key
    while end > start + 1 and lines[end - 1].startswith("#"):
        end -= 1
    return "".join(lines[:start]) + section + "".join(lines[end:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", default="reference", help="--qatmig-impl to measure (reference)")
    ap.add_argument("--runs", type=int, default=5, help="pytest runs of the cells (5)")
    ap.add_argument("--guest-size", default="64M", help="perf.suite.guest_size (64M)")
    ap.add_argument("--corpus", default="stand-in", help="--qatmig-corpus (stand-in)")
    ap.add_argument("--channels", default="2", help="channel counts, comma list (2)")
    ap.add_argument("--methods", default="none,zlib,zstd,qatzip", help="methods, comma list")
    ap.add_argument("--attempts", type=int, default=3,
                    help="perf.suite.attempts written into the profile (3)")
    ap.add_argument("--margin", type=float, default=6.0,
                    help="floors = worst / MARGIN, time ceilings = worst x MARGIN (6)")
    ap.add_argument("--cpu-margin", type=float, default=2.5,
                    help="CPU %% ceilings = worst x CPU_MARGIN (2.5: a quiet machine runs "
                    "faster, so the same CPU seconds are a higher %%)")
    ap.add_argument("--cpu-cap", type=float, default=100.0 * (os.cpu_count() or 1),
                    help="a CPU ceiling at or above this is left out (reported, not asserted):"
                    " this machine's cores cannot exceed it (100 x CPUs)")
    ap.add_argument("--min-downtime-ms", type=float, default=1000.0,
                    help="the downtime ceiling is at least this (1000)")
    ap.add_argument("--defaults", default="{max_downtime_ms: 5000}",
                    help="perf.defaults written as is (for other qatmig_perf tests)")
    ap.add_argument("--write", metavar="PROFILE.yaml",
                    help="replace the perf: section of this profile (else print it)")
    args = ap.parse_args(argv)
    args.channels = [int(c) for c in args.channels.split(",") if c.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.runs < 3:
        ap.error("--runs must be at least 3 (a worst case of one run says nothing)")
    load0 = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qatmig-derive-") as d:
        for k in range(1, args.runs + 1):
            t0 = time.monotonic()
            got = run_cells(args, k, Path(d))
            rows += got
            print(f"run {k}/{args.runs}: {len(got)} migrations in "
                  f"{time.monotonic() - t0:.1f} s, load {os.getloadavg()[0]:.1f}",
                  file=sys.stderr)
    try:
        derived = derive(rows, args)
    except DeriveError as exc:
        print(f"derive_profile: error: {exc}", file=sys.stderr)
        return 1
    corpus = "stand-in" if args.corpus in ("stand-in", "standin") else args.corpus
    meta = {
        "argv": sys.argv[1:] if argv is None else argv,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "commit": _git_commit(), "load_before": load0, "load_after": os.getloadavg()[0],
        "corpus": corpus,
    }
    section = perf_section(derived, args, meta, args.defaults)
    if args.write:
        path = Path(args.write)
        path.write_text(splice(path.read_text() if path.exists() else "", section))
        print(f"wrote the perf: section of {path}", file=sys.stderr)
    else:
        sys.stdout.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
