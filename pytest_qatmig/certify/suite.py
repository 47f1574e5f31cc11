"""Stage 2: the conformance suite, run as ``pytest --pyargs qatmig_conformance`` in a child.

A child process so the suite composes with whatever the suite and the plugin grow (roles,
``exec:`` implementations, cross matrices): certify passes the implementation, the profile,
the host's sysfs root and the worker count, and reads back the events of
:mod:`pytest_qatmig.certify.events` plus pytest's own JUnit XML. With ready QAT devices the run
uses pytest-xdist with one worker per device (the plugin hands each worker its own device).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import HostContext
from .model import ERROR, FAIL, INFORMATIONAL, PASS, RECOMMENDED, REQUIRED, SKIP, WARN, Check
from .profile import CertifyProfile

Progress = Callable[[str], None]
TestProgress = Callable[[int, int | None, str, str], None]  # done, total, nodeid, outcome

#: pytest exit statuses that mean the suite could not run (interrupted, internal error,
#: usage error, no tests collected).
COULD_NOT_RUN = {2: "interrupted", 3: "internal error", 4: "usage error",
                 5: "no tests collected"}


@dataclass
class SuiteRun:
    impl: str
    command: list[str]
    exit_status: int | None
    workers: int
    duration_s: float
    tests: list[dict[str, Any]] = field(default_factory=list)
    log_tail: str = ""
    junit: str = ""  # path of pytest's own JUnit XML
    error: str = ""

    def counts(self) -> dict[str, int]:
        out = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0}
        for t in self.tests:
            out[t["outcome"]] = out.get(t["outcome"], 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"impl": self.impl, "command": self.command, "exit_status": self.exit_status,
                "workers": self.workers, "duration_s": round(self.duration_s, 3),
                "counts": self.counts(), "tests": self.tests, "junit": self.junit,
                "error": self.error, "log_tail": self.log_tail}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "impl"


def xdist_available() -> bool:
    return importlib.util.find_spec("xdist") is not None


def _fold(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per test: one outcome from its phases (a failed setup/teardown fails the test)."""
    tests: dict[str, dict[str, Any]] = {}
    for ev in events:
        if ev.get("event") != "report":
            continue
        t = tests.setdefault(ev["nodeid"], {
            "nodeid": ev["nodeid"], "outcome": "passed", "duration_s": 0.0, "worker": None,
            "device": None, "message": "", "phase": "", "keywords": []})
        t["duration_s"] = round(t["duration_s"] + float(ev.get("duration_s") or 0), 4)
        t["worker"] = ev.get("worker") or t["worker"]
        t["device"] = ev.get("device") or t["device"]
        t["keywords"] = sorted(set(t["keywords"]) | set(ev.get("keywords") or []))
        outcome = ev.get("outcome")
        if outcome == "failed" and t["outcome"] != "failed":
            t.update(outcome="failed", message=ev.get("message", ""), phase=ev["when"])
        elif outcome == "skipped" and t["outcome"] == "passed":
            t.update(outcome="xfailed" if ev.get("xfail") else "skipped",
                     message=ev.get("message", ""), phase=ev["when"])
    return list(tests.values())


def _read_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    try:
        with open(path, encoding="utf-8") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    # only whole lines; a partly written last line is read next time
    end = data.rfind("\n") + 1
    out = []
    for line in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out, offset + len(data[:end].encode())


def run_suite(
    impl: str,
    prof: CertifyProfile,
    ctx: HostContext,
    raw_dir: Path,
    *,
    workers: int,
    k: str = "",
    m: str = "",
    guest_size: str | None = None,
    timeout: float | None = None,
    on_test: TestProgress | None = None,
) -> SuiteRun:
    raw_dir.mkdir(parents=True, exist_ok=True)
    name = slug(impl)
    events = raw_dir / f"conformance-{name}.events.jsonl"
    junit = raw_dir / f"conformance-{name}.junit.xml"
    log = raw_dir / f"conformance-{name}.log"
    ini = raw_dir / "pytest.ini"  # an empty ini: no addopts/conftest of the caller's cwd
    ini.write_text("[pytest]\n")
    events.write_text("")
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "qatmig_conformance",
           "-c", str(ini), "--rootdir", str(raw_dir), "-p", "qatmig",
           "-p", "pytest_qatmig.certify.events", "-p", "no:cacheprovider",
           "--qatmig-impl", impl, "--qatmig-profile", str(prof.path),
           "--qatmig-sysfs-root", ctx.sysfs_root,
           "--qatmig-guest-size", guest_size or prof.suite_guest_size,
           "--junitxml", str(junit), "-o", "junit_family=xunit2", "-q", "-rfEs"]
    if workers > 0 and xdist_available():
        cmd += ["-n", str(workers)]
    else:
        workers = 0
        if xdist_available():
            cmd += ["-p", "no:xdist"]
    if k or prof.suite_k:
        cmd += ["-k", k or prof.suite_k]
    if m or prof.suite_m:
        cmd += ["-m", m or prof.suite_m]
    env = dict(os.environ)
    env["QATMIG_CERTIFY_EVENTS"] = str(events)
    if ctx.library:
        env["QATMIG_LIBQATZIP"] = ctx.library
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    limit = timeout if timeout is not None else prof.suite_timeout
    t0 = time.monotonic()
    run = SuiteRun(impl, cmd, None, workers, 0.0, junit=str(junit))
    collected: int | None = None
    offset = 0
    seen: list[dict[str, Any]] = []
    done_ids: set[str] = set()
    worst: dict[str, str] = {}
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=raw_dir, start_new_session=True)
        try:
            while True:
                try:
                    proc.wait(timeout=0.3)
                    finished = True
                except subprocess.TimeoutExpired:
                    finished = False
                new, offset = _read_events(events, offset)
                for ev in new:
                    seen.append(ev)
                    if ev.get("event") == "collected":
                        collected = int(ev["count"])
                    elif ev.get("event") == "report":
                        nid = ev["nodeid"]
                        if ev.get("outcome") != "passed" and worst.get(nid) != "failed":
                            worst[nid] = ev["outcome"]
                        if ev.get("when") == "teardown" and nid not in done_ids:
                            done_ids.add(nid)
                            if on_test:
                                on_test(len(done_ids), collected, nid, worst.get(nid, "passed"))
                if finished:
                    break
                if time.monotonic() - t0 > limit:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    run.error = f"the suite did not finish in {limit:.0f} s; killed"
                    break
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    run.exit_status = proc.returncode
    run.duration_s = time.monotonic() - t0
    run.tests = _fold(seen)
    try:
        run.log_tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    except OSError:
        pass
    return run


def suite_checks(run: SuiteRun, prof: CertifyProfile) -> list[Check]:
    """The run itself (did it run?) and one check per test."""
    label = f"conformance[{run.impl}]"
    checks: list[Check] = []
    counts = run.counts()
    ev = {"command": run.command, "exit_status": run.exit_status, "counts": counts,
          "workers": run.workers}
    if run.error or run.exit_status in COULD_NOT_RUN or run.exit_status is None or (
        run.exit_status not in (0, 1)
    ):
        why = run.error or COULD_NOT_RUN.get(run.exit_status or -1,
                                             f"pytest exit status {run.exit_status}")
        checks.append(Check(
            f"{label}.run", f"conformance suite runs against {run.impl}", "conformance",
            REQUIRED, ERROR, f"the suite could not run: {why}\n{run.log_tail[-1500:]}",
            "read the suite's log (raw/) — a bad --impl spec, a missing dependency, or an "
            "empty -k/-m selection", code="QATMIG_E_SUITE", evidence=ev))
    else:
        workers = f"{run.workers} xdist worker(s)" if run.workers else "one process"
        checks.append(Check(
            f"{label}.run", f"conformance suite runs against {run.impl}", "conformance",
            REQUIRED, PASS,
            f"{len(run.tests)} test(s) on {workers}: " +
            ", ".join(f"{v} {k}" for k, v in counts.items() if v),
            evidence=ev, duration_s=round(run.duration_s, 3)))
    for t in run.tests:
        tid = f"{label}::{t['nodeid']}"
        title = t["nodeid"].split("::", 1)[-1]
        tev = {k: t[k] for k in ("worker", "device", "duration_s", "phase") if t.get(k)}
        if t["outcome"] == "passed":
            checks.append(Check(tid, title, "conformance", REQUIRED, PASS,
                                f"on {t.get('device') or 'sw'}", evidence=tev,
                                duration_s=t["duration_s"]))
        elif t["outcome"] == "failed":
            rerun = (f"rerun it alone: pytest --pyargs qatmig_conformance --qatmig-impl "
                     f"'{run.impl}' -k '{title.split('[')[0]}'")
            who = ("the host does not match its profile: fix the host checks above"
                   if t["nodeid"].split("::")[0].endswith("test_host.py") else
                   f"the implementation '{run.impl}' does not do what this test requires")
            checks.append(Check(
                tid, title, "conformance", REQUIRED, FAIL,
                f"failed in {t['phase']}: {t['message'].strip()[-1500:]}", f"{who}; {rerun}",
                code="QATMIG_E_CONFORMANCE", evidence=tev, duration_s=t["duration_s"]))
        elif t["outcome"] == "xfailed":
            checks.append(Check(tid, title, "conformance", INFORMATIONAL, SKIP,
                                f"expected failure: {t['message']}", evidence=tev))
        elif "qat_hw" in t["keywords"] and prof.hardware:
            checks.append(Check(
                tid, title, "conformance", REQUIRED, FAIL,
                f"a hardware test skipped on a host that must have QAT: {t['message']}",
                "the worker got no ready QAT device: fix the host checks above; a "
                "certification does not accept a skipped hardware test",
                code="QATMIG_E_HW_SKIPPED", evidence=tev))
        elif "qat_hw" in t["keywords"] or "UNIMPLEMENTED" in t["message"]:
            checks.append(Check(tid, title, "conformance", INFORMATIONAL, SKIP,
                                t["message"], evidence=tev))
        else:
            checks.append(Check(tid, title, "conformance", RECOMMENDED, WARN,
                                f"skipped: {t['message']}",
                                "enable what the skip reason names, or accept the warning",
                                evidence=tev))
    return checks
