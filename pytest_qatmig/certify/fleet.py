"""``--hosts``: the same certification on several hosts through execnet gateways.

execnet (which pytest-xdist runs its workers on) opens a Python interpreter per host from a
gateway spec — ``popen`` (a local process), ``ssh=user@host//python=/opt/venv/bin/python``,
``socket=127.0.0.1:8888`` (a running ``socketserver.py``) — with ``//id=NAME`` to name the host
and ``//env:NAME=VALUE`` to set its environment. Each host runs
:func:`pytest_qatmig.certify.run.certify_host` (qatmig must be installed in that interpreter)
and streams its progress back; the controller writes one combined report.
"""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import fleet_remote
from .model import ERROR, REQUIRED, Check
from .run import utc_now

#: progress(host, kind, text)
FleetProgress = Callable[[str, str, str], None]
HOST_TIMEOUT = 4 * 3600.0


def spec_id(spec: str) -> str | None:
    for part in spec.split("//"):
        if part.startswith("id="):
            return part[3:]
    return None


def error_host(name: str, spec: str, message: str, fix: str) -> dict[str, Any]:
    """A host section for a host that could not be certified at all (INCOMPLETE)."""
    check = Check("fleet.host", f"certification runs on {name}", "run", REQUIRED, ERROR,
                  message, fix, code="QATMIG_E_HOST_UNREACHABLE")
    return {
        "name": name, "spec": spec, "started_utc": utc_now(), "duration_s": 0.0,
        "inventory": {"hostname": "", "kernel": "", "cpus": 0, "machine_id": "",
                      "load_average": [], "host_context": {}},
        "devices": [], "ready_devices": [], "library": {}, "checks": [check.to_json()],
        "conformance": [], "benchmark": {"engine": None, "cases": []}, "notes": [],
    }


def _one_host(index: int, spec: str, opts: dict[str, Any], out_dir: Path,
              progress: FleetProgress, results: list[dict[str, Any] | None]) -> None:
    import execnet

    name = spec_id(spec) or f"host{index}"
    gw = None
    try:
        try:
            gw = execnet.makegateway(spec)
        except Exception as exc:  # execnet raises plain exceptions for every transport
            results[index] = error_host(
                name, spec, f"cannot open an execnet gateway '{spec}': {exc}",
                "check the spec (popen, ssh=HOST//python=PATH, socket=HOST:PORT), that the "
                "host is reachable and that its python has pytest-qatmig installed")
            return
        ch = gw.remote_exec(fleet_remote)
        mine = dict(opts, name=name, spec=spec)
        ch.send(json.dumps(mine))
        while True:
            msg = ch.receive(HOST_TIMEOUT)
            kind = msg[0]
            if kind == "progress":
                progress(name, msg[1], msg[2])
            elif kind == "result":
                report = json.loads(msg[1])
                if not spec_id(spec) and report["inventory"].get("hostname"):
                    report["name"] = f"{report['inventory']['hostname']}-{index}"
                raw = out_dir / "hosts" / _safe(report["name"]) / "raw"
                for rel, text in json.loads(msg[2]).items():
                    dest = raw / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_text(text)
                results[index] = report
                return
            elif kind == "error":
                results[index] = error_host(name, spec, f"the certification crashed on the "
                                            f"host:\n{msg[1]}", "report this as a qatmig bug")
                return
    except Exception as exc:
        results[index] = error_host(
            name, spec, f"lost the host: {type(exc).__name__}: {exc}\n"
            f"{traceback.format_exc(limit=3)}",
            "check the host is reachable and qatmig is installed in its python")
    finally:
        if gw is not None:
            gw.exit()


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "host"


def run_fleet(specs: list[str], opts: dict[str, Any], out_dir: Path,
              progress: FleetProgress) -> list[dict[str, Any]]:
    """Certify every host at once (one thread per gateway); results in the order given."""
    profile_text = Path(opts["profile"]).read_text()
    opts = dict(opts, profile_text=profile_text, profile_name=Path(opts["profile"]).name)
    results: list[dict[str, Any] | None] = [None] * len(specs)
    threads = [threading.Thread(target=_one_host, args=(i, s, opts, out_dir, progress, results),
                                name=f"certify-{i}", daemon=True) for i, s in enumerate(specs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HOST_TIMEOUT + 60)
    out = []
    for i, r in enumerate(results):
        out.append(r if r is not None else error_host(
            spec_id(specs[i]) or f"host{i}", specs[i], "the host did not answer in time",
            "check the host"))
    names = [h["name"] for h in out]
    for i, h in enumerate(out):  # names are keys in the report: make them unique
        if names.count(h["name"]) > 1:
            h["name"] = f"{h['name']}-{i}"
    return out
