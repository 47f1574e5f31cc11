#!/usr/bin/env python3
"""Network fuzz soak: recorded sessions replayed mutated into the destination (issue 13).

Every case is one recorded session (fixtures/sessions: every method and dialect; and QEMU 7.2's
golden captures) with one or two structural mutations, replayed over real sockets into the
engine's destination - in this process for most cases, and every ``--listen-every``-th case
into a real ``qatmig listen`` subprocess (catches crashes at exit and tracebacks). Outcomes are
those of :mod:`qatmig_engine.netfuzz`; any of ``completed-wrong``, ``internal-error``, ``hang``
or ``crash`` is a bug, printed with the seed that replays it (``--replay SEED``).

    python benchmarks/net_fuzz.py --cases 300                   # table
    python benchmarks/net_fuzz.py --cases 10000 --jobs 2 --update-docs   # the soak
    python benchmarks/net_fuzz.py --replay 1234                 # one case, verbose
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qatmig_engine import netfuzz as nf

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "benchmarks/net_fuzz.py --cases 10000 --jobs 2 --update-docs"
CODE = ["engine/destination.py", "engine/wire.py", "engine/mainstream.py", "engine/codecs",
        "engine/transport.py", "engine/netfuzz.py", "engine/replay.py", "fixtures/sessions"]


def _chunk(args: tuple[int, int, int, float]) -> list[dict[str, Any]]:
    start, stop, listen_every, timeout = args
    sessions = nf.load_sessions()
    out = []
    with tempfile.TemporaryDirectory(prefix="qatmig-netfuzz-") as tmp:
        for seed in range(start, stop):
            sess, case = nf.make_case(sessions, seed)
            if listen_every and seed % listen_every == 0:
                r = nf.run_case_listen(sess, case, Path(tmp), timeout=timeout)
                where = "listen"
            else:
                r = nf.run_case(sess, case, timeout=timeout)
                where = "in-process"
            out.append({"seed": seed, "session": sess.name, "mutations": case.mutations,
                        "outcome": r.outcome, "seconds": round(r.seconds, 3), "where": where,
                        "error": r.error[:300]})
    out.append({"peak_rss_mib": round(nf.peak_rss_mib(), 1),
                "children_peak_rss_mib": round(nf.children_peak_rss_mib(), 1)})
    return out


def run(cases: int, seed0: int, jobs: int, listen_every: int, timeout: float
        ) -> dict[str, Any]:
    jobs = max(1, jobs)
    step = (cases + jobs * 4 - 1) // (jobs * 4)
    chunks = [(s, min(s + step, seed0 + cases), listen_every, timeout)
              for s in range(seed0, seed0 + cases, step)]
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    rss: list[dict[str, float]] = []
    if jobs == 1:
        parts = map(_chunk, chunks)
    else:
        pool = multiprocessing.get_context("spawn").Pool(jobs)
        parts = pool.imap_unordered(_chunk, chunks)
    for part in parts:
        rss.append(part[-1])
        rows.extend(part[:-1])
        print(f"\r{len(rows)}/{cases} cases", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    counts = {o: 0 for o in nf.OUTCOMES}
    where = {"in-process": 0, "listen": 0}
    by_mut: dict[str, dict[str, int]] = {}
    for r in rows:
        counts[r["outcome"]] += 1
        where[r["where"]] += 1
        for m in r["mutations"]:
            by_mut.setdefault(m, {o: 0 for o in nf.OUTCOMES})[r["outcome"]] += 1
    return {
        "cases": len(rows), "seed0": seed0, "jobs": jobs, "timeout_s": timeout,
        "wall_s": round(time.monotonic() - t0, 1), "where": where, "outcomes": counts,
        "by_mutation": by_mut,
        "max_case_s": max((r["seconds"] for r in rows), default=0.0),
        "peak_rss_mib": max((p["peak_rss_mib"] for p in rss), default=0.0),
        "listen_peak_rss_mib": max((p["children_peak_rss_mib"] for p in rss), default=0.0),
        "bugs": [r for r in rows if r["outcome"] in nf.BUGS],
        "sessions": sorted({r["session"] for r in rows}),
    }


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"{res['cases']} cases ({res['where']['in-process']} into the destination in-process, "
        f"{res['where']['listen']} into a `qatmig listen` subprocess), seeds "
        f"{res['seed0']}..{res['seed0'] + res['cases'] - 1}, {len(res['sessions'])} recorded "
        f"sessions, destination timeout {res['timeout_s']:g} s, {res['wall_s']:.0f} s wall "
        f"with {res['jobs']} processes.",
        "",
        "| outcome | cases | what it means |",
        "|---|---:|---|",
    ]
    meaning = {
        "failed": "a typed error, exit 1 (expected for most mutations)",
        "completed-ok": "completed with the session's RAM (the mutation changed nothing that "
                        "matters)",
        "completed-wrong-undetectable": "completed with other RAM; a mutation changed page "
                                        "data no check covers (raw pages, zlib/zstd/qpl/uadk "
                                        "data, main-channel page bytes)",
        "completed-wrong": "completed with other RAM after a mutation the wire can reveal (bug)",
        "internal-error": "an untyped exception / traceback (bug)",
        "hang": "no result within the timeout (bug)",
        "crash": "a signal or an exit status other than 0/1 (bug)",
    }
    for o in nf.OUTCOMES:
        lines.append(f"| `{o}` | {res['outcomes'][o]} | {meaning[o]} |")
    lines += [
        "",
        f"Longest case {res['max_case_s']:.1f} s; peak RSS {res['peak_rss_mib']:.0f} MiB "
        f"(fuzzing process), {res['listen_peak_rss_mib']:.0f} MiB (largest `qatmig listen`).",
        "",
        "| mutation | " + " | ".join(f"`{o}`" for o in nf.OUTCOMES) + " |",
        "|---|" + "---:|" * len(nf.OUTCOMES),
    ]
    for m in sorted(res["by_mutation"]):
        row = res["by_mutation"][m]
        lines.append(f"| {m} | " + " | ".join(str(row[o]) for o in nf.OUTCOMES) + " |")
    if res["bugs"]:
        lines += ["", "Bugs (replay with `--replay SEED`):", ""]
        lines += [f"* seed {b['seed']} {b['session']} {b['mutations']}: {b['outcome']} "
                  f"{b['error'][:120]}" for b in res["bugs"][:20]]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--jobs", type=int, default=1, help="processes")
    ap.add_argument("--listen-every", type=int, default=25,
                    help="every N-th case goes into a qatmig listen subprocess (0: none)")
    ap.add_argument("--timeout", type=float, default=1.0,
                    help="the destination's idle timeout per case (s)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--update-docs", action="store_true",
                    help="write the table into docs/reliability.md (stamped)")
    ap.add_argument("--replay", type=int, default=None, metavar="SEED")
    args = ap.parse_args()
    if args.replay is not None:
        sessions = nf.load_sessions()
        sess, case = nf.make_case(sessions, args.replay)
        r = nf.run_case(sess, case, timeout=args.timeout)
        print(json.dumps({"seed": args.replay, "session": sess.name,
                          "mutations": case.mutations, "outcome": r.outcome,
                          "error": r.error, "seconds": round(r.seconds, 2)}, indent=2))
        return 1 if r.outcome in nf.BUGS else 0
    from qatmig_engine.docstamp import stamp, write_block

    stamped = stamp(CODE, ROOT)
    res = run(args.cases, args.seed, args.jobs, args.listen_every, args.timeout)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(markdown(res))
    if args.update_docs:
        write_block(ROOT / "docs" / "reliability.md", "net-fuzz", markdown(res),
                    script=SCRIPT, code=CODE, root=ROOT, stamped=stamped,
                    heading="## Network fuzz soak (`benchmarks/net_fuzz.py`)")
    return 1 if res["bugs"] else 0


if __name__ == "__main__":
    sys.exit(main())
