"""``qatmig certify``: options, the progress display and the exit status.

Registered by ``qatmig_engine.cli.certify`` (the ``qatmig`` command); everything heavier is
imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

from ..profile import profile_path

EPILOG = """\
stages (in order):
  1. host checks: QAT endpoints present and up, dc service, driver/vfio state, libqatzip
     version, a QATzip session probe per ready device, memlock limit, hugepages (when the
     profile asks) -- each failure says how to fix it
  2. the conformance suite (pytest --pyargs qatmig_conformance) against each --impl, with
     pytest-xdist: one worker per ready QAT device
  3. the profile's benchmark cases, each checked against its thresholds (median of runs)

examples:
  qatmig certify --profile fixtures/hosts/software-only.yaml -o out/
  qatmig certify --profile lab.yaml -o out/ --impl reference --impl qemu:/usr/bin/qemu-system-x86_64
  qatmig certify --profile lab.yaml -o new/ --compare old/report.json --max-regression 10%
  qatmig certify --profile lab.yaml -o fleet/ --hosts ssh=qat1//python=/opt/q/bin/python \\
      ssh=qat2//python=/opt/q/bin/python
  qatmig certify --init-profile lab.yaml     # a starting profile from this host

exit status: 0 certified (also with warnings), 1 not certified, 2 could not run.
Files in the output directory: report.json (schema-versioned), report.md, junit.xml, plots/,
run.log, raw/ (the suite's own logs), MANIFEST.sha256. See docs/certify.md.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", metavar="HOST.yaml",
                   help="host profile: expected devices, checks, suite subset, benchmark "
                   "cases and thresholds (fixtures/hosts/ has examples)")
    p.add_argument("-o", "--output", metavar="DIR", default="qatmig-certify",
                   help="report directory (created; default ./qatmig-certify)")
    p.add_argument("--impl", action="append", metavar="SPEC",
                   help="implementation(s) under test, as --qatmig-impl takes them "
                   "(reference, exec:CMD, qemu:PATH, module:factory); repeatable; default: "
                   "the profile's certify.conformance.impl")
    host = p.add_argument_group("which host")
    host.add_argument("--sysfs-root", metavar="DIR",
                      help="sysfs to read (default $QATMIG_SYSFS_ROOT, else /sys)")
    host.add_argument("--dev-root", metavar="DIR",
                      help="/dev for vfio nodes (default $QATMIG_DEV_ROOT, else beside a fake "
                      "sysfs root, else /dev)")
    host.add_argument("--fake-host", metavar="TREE",
                      help="a fake sysfs tree shipped in qatmig_fixtures/sysfs (for trying it)")
    host.add_argument("--library", metavar="PATH",
                      help="libqatzip to load (default $QATMIG_LIBQATZIP, else libqatzip.so.3)")
    host.add_argument("--hosts", nargs="+", metavar="SPEC",
                      help="certify these hosts instead, through execnet gateways: popen, "
                      "ssh=HOST//python=PATH, socket=HOST:PORT; add //id=NAME to name one and "
                      "//env:VAR=VALUE to set its environment (e.g. QATMIG_SYSFS_ROOT)")
    run = p.add_argument_group("what to run")
    run.add_argument("--workers", type=int, metavar="N",
                     help="xdist workers for the suite (default: one per ready QAT device; "
                     "0 = one process)")
    run.add_argument("-k", dest="k", metavar="EXPR", help="suite subset (pytest -k)")
    run.add_argument("-m", dest="m", metavar="EXPR", help="suite subset (pytest -m)")
    run.add_argument("--suite-guest-size", metavar="SIZE",
                     help="guest size for the suite (default: the profile's, else 16M)")
    run.add_argument("--bench-guest-size", metavar="SIZE",
                     help="guest size for the benchmark (default: the profile's)")
    run.add_argument("--repeat", type=int, metavar="N",
                     help="runs per benchmark case (default: the profile's)")
    run.add_argument("--skip-suite", action="store_true",
                     help="leave the suite out (the verdict is then INCOMPLETE at best)")
    run.add_argument("--skip-bench", action="store_true",
                     help="leave the benchmark out (the verdict is then INCOMPLETE at best)")
    base = p.add_argument_group("baselines")
    base.add_argument("--compare", metavar="REPORT",
                      help="a previous report.json (or its directory): show every metric's "
                      "change per benchmark case")
    base.add_argument("--max-regression", metavar="LIMIT",
                      help="fail when a metric got worse than this: 10%% (every metric) or "
                      "throughput_mbps:10%%,send_cpu_percent:25%%")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true",
                     help="print the verdict object (JSON) on stdout")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    out.add_argument("--init-profile", metavar="FILE",
                     help="write a starting profile from this host's devices and exit")
    out.add_argument("--force", action="store_true", help="let --init-profile overwrite FILE")


class Display:
    """Progress on stderr: finished steps as lines (also kept for run.log); the running step
    as one transient line, only on a terminal."""

    def __init__(self, quiet: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.log: list[str] = []
        self._status = False

    def __call__(self, kind: str, text: str) -> None:
        if kind == "line":
            self.log.append(text)
        if self.quiet:
            return
        if kind == "status":
            if self.tty:
                cols = 100
                self.stream.write("\r\x1b[2K" + text[:cols])
                self.stream.flush()
                self._status = True
            return
        if self._status:
            self.stream.write("\r\x1b[2K")
            self._status = False
        self.stream.write(text + "\n")
        self.stream.flush()


def _error(msg: str) -> int:
    print(f"qatmig certify: error: {msg}", file=sys.stderr)
    return 2


def _host_opts(args: argparse.Namespace) -> dict[str, str | None]:
    """The explicit host options (None = resolve on the host: see run.resolve_context)."""
    from qatmig_engine.qat.devices import fixture_tree

    if args.fake_host:
        if args.sysfs_root or args.dev_root:
            raise ValueError("use either --fake-host or --sysfs-root/--dev-root, not both")
        sysfs, dev = fixture_tree(args.fake_host)
        return {"sysfs_root": str(sysfs), "dev_root": str(dev)}
    return {"sysfs_root": args.sysfs_root, "dev_root": args.dev_root}


def run(args: argparse.Namespace) -> int:
    from qatmig_engine.errors import QatError

    from ..profile import ProfileError
    from .run import resolve_context

    try:
        host_opts = _host_opts(args)
    except (ValueError, QatError) as exc:
        return _error(str(exc))
    library = args.library or None
    local = resolve_context(dict(host_opts, library=library))
    if not args.hosts and not os.path.isdir(local.sysfs_root):
        return _error(f"sysfs root {local.sysfs_root} is not a directory")
    if args.init_profile:
        from .initprofile import init_profile_text

        dest = Path(args.init_profile)
        if dest.exists() and not args.force:
            return _error(f"{dest} exists (use --force to overwrite it)")
        dest.write_text(init_profile_text(local))
        print(f"wrote {dest}: review it, then qatmig certify --profile {dest} -o DIR",
              file=sys.stderr)
        return 0
    if not args.profile:
        return _error("--profile HOST.yaml is required (or --init-profile FILE to write one)")
    from .compare import CompareError, load_baseline, parse_max_regression
    from .profile import load_certify_profile

    try:
        prof = load_certify_profile(args.profile)
        limit = parse_max_regression(args.max_regression)
        baseline = load_baseline(args.compare) if args.compare else None
    except (ProfileError, CompareError) as exc:
        return _error(str(exc))
    if limit is not None and baseline is None:
        return _error("--max-regression needs --compare PREVIOUS/report.json")
    if args.workers is not None and args.workers < 0:
        return _error("--workers must be 0 or more")
    if args.repeat is not None and args.repeat < 1:
        return _error("--repeat must be 1 or more")
    out_dir = Path(args.output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _error(f"cannot create {out_dir}: {exc.strerror or exc}")
    display = Display(args.quiet)
    opts: dict[str, Any] = {
        "profile": str(profile_path(args.profile).resolve()), **host_opts, "library": library,
        "impls": args.impl, "workers": args.workers, "k": args.k, "m": args.m,
        "suite_guest_size": args.suite_guest_size,
        "bench_guest_size": args.bench_guest_size, "repeat": args.repeat,
        "skip_suite": args.skip_suite, "skip_bench": args.skip_bench,
        "raw_dir": str((out_dir / "raw").resolve()),
    }
    from .report import finalize, verdict_object, write_bundle
    from .run import certify_host, utc_now

    created = utc_now()
    display("line", f"qatmig certify: profile {prof.name} ({args.profile}) -> {out_dir}/")
    notes: list[str] = []
    from .suite import xdist_available

    if not xdist_available():
        notes.append("pytest-xdist is not installed: the suite ran in one process, not one "
                     "worker per device (pip install pytest-xdist)")
    if args.hosts:
        try:
            import execnet  # noqa: F401
        except ImportError:
            return _error("--hosts needs execnet (pip install pytest-xdist, which brings it)")
        from .fleet import run_fleet

        def fleet_progress(host: str, kind: str, text: str) -> None:
            display(kind, f"[{host}] {text}")

        hosts = run_fleet(list(args.hosts), opts, out_dir, fleet_progress)
    else:
        try:
            host = certify_host(dict(opts, name=_local_name()), display)
        except Exception as exc:  # never a traceback for the operator: an INCOMPLETE report
            from .fleet import error_host

            host = error_host(_local_name(), "local", f"{type(exc).__name__}: {exc}\n"
                              f"{traceback.format_exc(limit=4)}", "report this as a qatmig bug")
        hosts = [host]
    report = finalize(hosts, profile=prof, command=["qatmig", "certify", *sys.argv[2:]]
                      if sys.argv[1:2] == ["certify"] else list(sys.argv),
                      created_utc=created, baseline=baseline, limit=limit, notes=notes)
    (out_dir / "run.log").write_text("\n".join(display.log) + "\n")
    write_bundle(report, out_dir)
    display("line", report["summary"])
    display("line", f"report: {out_dir / 'report.md'}")
    if args.json:
        json.dump(verdict_object(report, out_dir), sys.stdout, indent=2)
        sys.stdout.write("\n")
    return int(report["exit_code"])


def _local_name() -> str:
    import socket

    return socket.gethostname() or "localhost"
