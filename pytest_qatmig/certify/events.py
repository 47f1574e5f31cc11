"""A tiny pytest plugin ``qatmig certify`` loads into its conformance run (``-p``).

On the controller (or in a run without xdist) it appends one JSON line per test phase to the
file named by ``$QATMIG_CERTIFY_EVENTS``: the progress display reads it while the suite runs,
and the report takes outcomes, durations, the xdist worker and the QAT device of every test
from it. Does nothing when the variable is unset.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

ENV = "QATMIG_CERTIFY_EVENTS"


def _write(config: pytest.Config, record: dict[str, Any]) -> None:
    path = os.environ.get(ENV)
    if not path or hasattr(config, "workerinput"):
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_Events(config), "qatmig-certify-events")


class _Events:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.announced = False

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not hasattr(self.config, "workerinput") and session.items:
            self.announced = True
            _write(self.config, {"event": "collected", "count": len(session.items)})

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if not self.announced:  # every worker collects the same items (load scheduling)
            self.announced = True
            _write(self.config, {"event": "collected", "count": len(ids)})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        node = getattr(report, "node", None)
        workerinput = getattr(node, "workerinput", None) or {}
        device = workerinput.get("qatmig_device")
        for key, value in report.user_properties:
            if key == "qatmig_migration" and isinstance(value, dict):
                device = value.get("device", device)
        message = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
        elif report.failed:
            # the assertion/exception line first (the full text starts with xdist's
            # "[gw0] linux -- Python ..." header under xdist), then the end of the traceback
            crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", "") or ""
            text = "\n".join(line for line in report.longreprtext.splitlines()
                             if not line.startswith("[gw"))
            message = (crash + "\n" if crash else "") + text[-4000:]
        _write(self.config, {
            "event": "report",
            "nodeid": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "duration_s": round(report.duration, 4),
            "worker": getattr(report, "worker_id", None) or workerinput.get("workerid"),
            "device": device,
            "keywords": sorted(k for k in report.keywords if k in ("qat_hw", "qatmig_perf")),
            "xfail": hasattr(report, "wasxfail"),
            "message": message,
        })
