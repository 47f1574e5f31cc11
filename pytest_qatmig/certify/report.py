"""The certification bundle: ``report.json`` (versioned schema), ``junit.xml``, ``report.md``,
plots, ``run.log`` and ``MANIFEST.sha256``; and the verdict object ``--json`` prints."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..results import PERF_COLUMNS, format_perf_value
from .compare import RegressionLimit, compare_host
from .model import (
    EXIT_CODES,
    INFORMATIONAL,
    REPORT_KIND,
    SCHEMA_VERSION,
    STATUSES,
    Check,
    combine_verdicts,
    problems,
    tally,
    verdict_of,
)

SCHEMA_FILE = Path(__file__).with_name("report-1.schema.json")

#: The seed's table (QEMU's QATzip document): header -> median field.
SEED_HEADERS = ("Total time (ms)", "Downtime (ms)", "Throughput (mbps)", "Pages per second",
                "Send CPU %", "Recv CPU %")


def _checks(host: dict[str, Any]) -> list[Check]:
    return [Check(**c) for c in host["checks"]]


def summary_line(verdict: str, checks: list[Check], label: str) -> str:
    """Nagios-style one-liner: ``QATMIG CERTIFIED - host: 40 passed, 0 failed, ...``."""
    t = tally(c for c in checks if c.level != INFORMATIONAL)
    parts = ", ".join(f"{t[s]} {s.lower()}" for s in STATUSES if t[s] or s in ("PASS", "FAIL"))
    return f"QATMIG {verdict} - {label}: {parts} (required and recommended checks)"


def finalize(
    hosts: list[dict[str, Any]],
    *,
    profile: Any,
    command: list[str],
    created_utc: str,
    baseline: dict[str, Any] | None = None,
    limit: RegressionLimit | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Add comparisons and verdicts to the host sections; build the whole report."""
    from .. import __version__

    for host in hosts:
        if baseline is not None:
            section, cchecks = compare_host(host, baseline, limit)
            host["comparison"] = section
            host["checks"] += [c.to_json() for c in cchecks]
        else:
            host.setdefault("comparison", None)
        checks = _checks(host)
        host["verdict"] = verdict_of(checks)
        host["exit_code"] = EXIT_CODES[host["verdict"]]
        host["tally"] = tally(checks)
        host["summary"] = summary_line(host["verdict"], checks, host["name"])
    verdict = combine_verdicts(h["verdict"] for h in hosts)
    all_checks = [c for h in hosts for c in _checks(h)]
    label = hosts[0]["name"] if len(hosts) == 1 else f"{len(hosts)} hosts"
    try:
        text = Path(profile.path).read_bytes()
        sha = hashlib.sha256(text).hexdigest()
    except OSError:
        sha = None
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": REPORT_KIND,
        "tool": {"name": "qatmig certify", "version": __version__},
        "created_utc": created_utc,
        "command": command,
        "profile": {"name": profile.name, "path": str(profile.path), "sha256": sha,
                    "description": profile.host.description, "hardware": profile.hardware},
        "verdict": verdict,
        "exit_code": EXIT_CODES[verdict],
        "summary": summary_line(verdict, all_checks, label),
        "hosts": hosts,
        "notes": list(notes or []),
        "artifacts": {},
    }


def verdict_object(report: dict[str, Any], out_dir: Path | str | None) -> dict[str, Any]:
    """What ``--json`` prints: the verdict, why, and where the bundle is."""
    return {
        "verdict": report["verdict"],
        "exit_code": report["exit_code"],
        "summary": report["summary"],
        "report_dir": None if out_dir is None else str(out_dir),
        "profile": report["profile"]["name"],
        "hosts": [
            {"name": h["name"], "verdict": h["verdict"], "exit_code": h["exit_code"],
             "problems": [{"id": c.id, "status": c.status, "message": c.message.splitlines()[0]
                           if c.message else "", "fix": c.fix}
                          for c in problems(_checks(h))]}
            for h in report["hosts"]
        ],
    }


# ------------------------------------------------------------------------------ validation
def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def validate(report: dict[str, Any]) -> str | None:
    """Validate against the JSON Schema: None when valid (or jsonschema is absent: then a
    note says so), else the first error."""
    try:
        import jsonschema
    except ImportError:
        return None
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    e = errors[0]
    where = "/".join(str(p) for p in e.absolute_path) or "(root)"
    return f"report.json does not match its schema at {where}: {e.message}"


# ------------------------------------------------------------------------------ junit
def junit_xml(report: dict[str, Any]) -> bytes:
    """One <testsuite> per host and stage; a check is a <testcase> (FAIL -> <failure>,
    ERROR -> <error>, SKIP -> <skipped>; the fix is in the failure text)."""
    root = ET.Element("testsuites", name="qatmig certify", verdict=report["verdict"])
    for host in report["hosts"]:
        checks = _checks(host)
        stages: dict[str, list[Check]] = {}
        for c in checks:
            stages.setdefault(c.stage, []).append(c)
        for stage, items in stages.items():
            t = tally(items)
            suite = ET.SubElement(
                root, "testsuite", name=f"{host['name']}.{stage}", tests=str(len(items)),
                failures=str(t["FAIL"]), errors=str(t["ERROR"]), skipped=str(t["SKIP"]),
                time=f"{sum(c.duration_s or 0 for c in items):.3f}",
                timestamp=host.get("started_utc", ""), hostname=host["name"])
            props = ET.SubElement(suite, "properties")
            for k, v in (("verdict", host["verdict"]), ("profile", report["profile"]["name"]),
                         ("spec", host.get("spec", ""))):
                ET.SubElement(props, "property", name=k, value=str(v))
            for c in items:
                case = ET.SubElement(suite, "testcase", classname=f"{host['name']}.{stage}",
                                     name=c.id, time=f"{c.duration_s or 0:.3f}")
                cprops = ET.SubElement(case, "properties")
                ET.SubElement(cprops, "property", name="level", value=c.level)
                for key in ("device", "worker"):
                    if c.evidence.get(key):
                        ET.SubElement(cprops, "property", name=f"qat_{key}" if key == "device"
                                      else key, value=str(c.evidence[key]))
                text = c.message + (f"\nFix: {c.fix}" if c.fix else "")
                first = c.message.splitlines()[0] if c.message else c.status
                if c.status == "FAIL":
                    el = ET.SubElement(case, "failure", message=first[:300], type=c.code or "FAIL")
                    el.text = text
                elif c.status == "ERROR":
                    el = ET.SubElement(case, "error", message=first[:300], type=c.code or "ERROR")
                    el.text = text
                elif c.status == "SKIP":
                    ET.SubElement(case, "skipped", message=first[:300])
                else:
                    out = ET.SubElement(case, "system-out")
                    out.text = f"{c.status}: {text}"
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# ------------------------------------------------------------------------------ markdown
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _num(v: Any, digits: int = 1) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_md_escape(str(c)) for c in r) + " |" for r in rows]
    return out


def _thresholds_text(th: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in th.items()) or "-"


def seed_table(cases: list[dict[str, Any]]) -> list[str]:
    """QEMU's QATzip table layout: one row per method/channels, the seed's six columns."""
    rows = []
    for c in cases:
        med = c.get("median") or {}
        label = f"{c['multifd_compression']}" + (f" L{c['level']}" if c.get("level") else "")
        backends = sorted({str(r.get("qat_backend")) for r in c.get("runs", [])
                           if r.get("qat_backend")})
        if backends:
            label += f" ({'/'.join(backends)})"
        how = "qatmig bench" if "run_matrix" in str(c.get("engine")) else "loopback"
        rows.append([label, c["multifd_channels"],
                     *(format_perf_value(f, med.get(f)) for _, f in PERF_COLUMNS),
                     _num(med.get("compression_ratio"), 2), len(c.get("runs", [])), how,
                     _thresholds_text(c.get("thresholds", {})), c["status"]])
    return _table(["method", "channels", *SEED_HEADERS, "ratio", "runs", "measured by",
                   "thresholds", "result"], rows)


def _qemu_text(q: dict[str, Any]) -> str:
    if not q.get("path"):
        return "qemu-system-x86_64 not found"
    linked = q.get("links_libqatzip")
    qz = ("" if linked is None else
          ", links libqatzip (--enable-qatzip)" if linked else ", no libqatzip (no qatzip)")
    return f"{q.get('version') or q['path']}{qz}"


def _host_md(host: dict[str, Any], fleet: bool) -> list[str]:
    h = "###" if fleet else "##"
    lines: list[str] = []
    inv = host.get("inventory", {})
    checks = _checks(host)
    bench = host.get("benchmark") or {}
    if bench.get("cases"):
        lines += [f"{h} Benchmark", "",
                  f"{bench.get('guest_size', 0) >> 20} MiB {bench.get('corpus')} guest, "
                  f"{bench.get('repeat')} run(s) per case, medians over 127.0.0.1 ("
                  "`qatmig bench`: two processes, `qatmig_engine.bench.run_matrix`; loopback: "
                  "both ends in one process, `migrate_loopback`, for cases `qatmig bench` "
                  "cannot express); load average after: "
                  f"{', '.join(f'{x:.2f}' for x in bench.get('load_average_after', []))}.", ""]
        lines += [*seed_table(bench["cases"]), ""]
    comp = host.get("comparison")
    if comp:
        lines += [f"{h} Compared with the baseline", "",
                  f"Baseline: `{comp.get('baseline')}` ({comp.get('baseline_created_utc')}).", ""]
        if comp["rows"]:
            lines += _table(["case", "metric", "baseline", "now", "delta", "regression",
                             "limit", "result"],
                            [[r["case"], r["metric"], _num(r["baseline"]), _num(r["value"]),
                              f"{r['delta_percent']:+.1f}%", f"{r['regression_percent']:+.1f}%",
                              "-" if r["limit_percent"] is None else f"{r['limit_percent']:g}%",
                              r["status"]] for r in comp["rows"]])
        lines += [f"- {n}" for n in comp.get("notes", [])] + [""]
    hc = [c for c in checks if c.stage == "host"]
    lines += [f"{h} Host checks", ""]
    lines += _table(["status", "check", "level", "finding"],
                    [[c.status, f"`{c.id}`", c.level, c.message] for c in hc])
    lines.append("")
    runs = host.get("conformance") or []
    if runs:
        lines += [f"{h} Conformance", ""]
        run_rows = [
            [r["impl"], r["workers"] or "1 (no xdist)",
             *(r["counts"].get(k, 0) for k in ("passed", "failed", "skipped", "xfailed")),
             f"{r['duration_s']:.1f}", r["exit_status"]]
            for r in runs
        ]
        lines += _table(["implementation", "workers", "passed", "failed", "skipped", "xfailed",
                         "seconds", "pytest exit"], run_rows)
        lines.append("")
        per_dev: dict[tuple[str, str], list[int]] = {}
        for r in runs:
            for t in r["tests"]:
                key = (str(t.get("device") or "sw"), str(t.get("worker") or "main"))
                cnt = per_dev.setdefault(key, [0, 0])
                cnt[0] += 1
                cnt[1] += t["outcome"] == "failed"
        if per_dev:
            lines += _table(["device", "worker", "tests", "failed"],
                            [[d, w, n, f] for (d, w), (n, f) in sorted(per_dev.items())])
            lines.append("")
    devs = host.get("devices") or []
    if devs:
        lines += [f"{h} QAT endpoints", ""]
        dev_rows = [
            [d["bdf"], d["kind"], d["family"], d["driver"] or "-", d["state"] or "-",
             d["cfg_services"] or "-", "-" if d["numa_node"] is None else d["numa_node"],
             "yes" if d["ready"] else "no", d["reason"]]
            for d in devs
        ]
        lines += _table(["BDF", "kind", "family", "driver", "state", "services", "NUMA",
                         "ready", "why not"], dev_rows)
        lines.append("")
    lib = host.get("library") or {}
    lines += [f"{h} Host", ""]
    libtext = (lib.get("path") or lib.get("requested") or "-") + (
        f" ({lib.get('version_guess')})" if lib.get("loaded") else
        f" — not loaded: {lib.get('error', '')}")
    lines += _table(["", ""], [
        ["hostname", inv.get("hostname")], ["kernel", inv.get("kernel")],
        ["CPU", f"{inv.get('cpu_model')} ({inv.get('cpus')} CPUs)"],
        ["memory", f"{(inv.get('memory_bytes') or 0) / (1 << 30):.1f} GiB"],
        ["libqatzip", libtext],
        ["sysfs root", inv.get("host_context", {}).get("sysfs_root")],
        ["QAT modules", ", ".join(inv.get("qat_modules") or []) or "none loaded"],
        ["QAT firmware",
         ", ".join(inv.get("qat_firmware_sha256") or {}) or "none in /lib/firmware"],
        ["QEMU", _qemu_text(inv.get("qemu") or {})],
        ["machine_id", inv.get("machine_id")],
        ["load average at start", ", ".join(f"{x:.2f}" for x in inv.get("load_average", []))],
        ["qatmig", inv.get("qatmig_version")],
    ])
    lines.append("")
    return lines


def markdown(report: dict[str, Any]) -> str:
    hosts = report["hosts"]
    fleet = len(hosts) > 1
    v = report["verdict"]
    lines = [f"# qatmig certify: {v}", "",
             f"**{v}** (exit status {report['exit_code']}) — profile "
             f"`{report['profile']['name']}`, {len(hosts)} host(s), {report['created_utc']}.",
             "", f"`{report['summary']}`", ""]
    if fleet:
        lines += _table(["host", "verdict", "summary"],
                        [[h["name"], h["verdict"], h["summary"]] for h in hosts])
        lines.append("")
    lines += ["## What failed and how to fix it", ""]
    any_problem = False
    for h in hosts:
        probs = problems(_checks(h))
        for c in probs:
            any_problem = True
            where = f"{h['name']}: " if fleet else ""
            msg = c.message.strip().splitlines()[0] if c.message else ""
            lines.append(f"- **{c.status}** {where}`{c.id}` — {msg}")
            if c.fix:
                lines.append(f"  - Fix: {c.fix}")
    if not any_problem:
        lines.append("Nothing: every required and recommended check passed.")
    lines.append("")
    for n in report.get("notes", []):
        lines.append(f"> Note: {n}")
    if report.get("notes"):
        lines.append("")
    for h in hosts:
        if fleet:
            lines += [f"## Host {h['name']}: {h['verdict']}", "", f"`{h['summary']}`", ""]
        lines += _host_md(h, fleet)
    arts = report.get("artifacts") or {}
    if arts:
        lines += ["## Files", ""] + [f"- `{k}`: {v}" for k, v in arts.items()] + [""]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------ plots
def plots(report: dict[str, Any], out_dir: Path) -> tuple[list[str], str]:
    """One PNG per host with benchmark cases: throughput and send/recv CPU per case.
    Returns (files, note); the note says why there are none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install matplotlib)"
    files = []
    for h in report["hosts"]:
        cases = (h.get("benchmark") or {}).get("cases") or []
        cases = [c for c in cases if c.get("median")]
        if not cases:
            continue
        labels = [c["id"] for c in cases]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        thr = [c["median"].get("throughput_mbps") or 0 for c in cases]
        ax1.bar(labels, thr, color="#4477aa")
        for i, c in enumerate(cases):
            floor = c["thresholds"].get("min_mbps")
            if floor:
                ax1.hlines(floor, i - 0.4, i + 0.4, colors="#cc3311", linestyles="dashed")
        ax1.set_ylabel("throughput (Mbps)")
        ax1.set_title("throughput (dashed: floor)")
        x = range(len(cases))
        ax2.bar([i - 0.2 for i in x], [c["median"].get("send_cpu_percent") or 0 for c in cases],
                width=0.4, label="send", color="#ee7733")
        ax2.bar([i + 0.2 for i in x], [c["median"].get("recv_cpu_percent") or 0 for c in cases],
                width=0.4, label="recv", color="#009988")
        ax2.set_xticks(list(x), labels)
        ax2.set_ylabel("CPU %")
        ax2.set_title("CPU (100% = one core)")
        ax2.legend()
        for ax in (ax1, ax2):
            ax.tick_params(axis="x", labelrotation=20)
        fig.suptitle(f"{h['name']}: {h['verdict']}")
        fig.tight_layout()
        name = f"plots/{_file_slug(h['name'])}-benchmark.png"
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        files.append(name)
    return files, ""


def _file_slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "host"


# ------------------------------------------------------------------------------ bundle
def write_bundle(report: dict[str, Any], out_dir: Path) -> None:
    """Write every file; report.json last but one (validated), MANIFEST.sha256 last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files, note = plots(report, out_dir)
    arts = report["artifacts"]
    arts["report.json"] = "this report (schema pytest_qatmig/certify/report-1.schema.json)"
    arts["report.md"] = "the summary for people"
    arts["junit.xml"] = "every check as a JUnit test case, one suite per host and stage"
    arts["run.log"] = "the progress log"
    arts["raw/"] = "the conformance suite's own logs, events and JUnit XML"
    for f in files:
        arts[f] = "benchmark plot"
    if note:
        report["notes"].append(note)
    problem = validate(report)
    if problem:  # a bug in qatmig, not in the host: say so loudly, keep the bundle
        report["notes"].append(f"INTERNAL: {problem}")
    (out_dir / "junit.xml").write_bytes(junit_xml(report))
    (out_dir / "report.md").write_text(markdown(report))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = []
    for p in sorted(out_dir.rglob("*")):
        if p.is_file() and p.name != "MANIFEST.sha256":
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            lines.append(f"{digest}  {p.relative_to(out_dir)}")
    (out_dir / "MANIFEST.sha256").write_text("\n".join(lines) + "\n")

