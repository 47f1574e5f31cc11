"""Stage 1: host checks. Each returns :class:`~.model.Check` objects with the fix spelled out.

Everything is read passively (sysfs, rlimits, the library) except the session probe, which
sets up QATzip sessions in a child process. The sysfs root, ``/dev`` and the library are
parameters, so the same checks run against the fake trees in ``qatmig_fixtures/sysfs``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import (
    ERROR,
    FAIL,
    INFORMATIONAL,
    PASS,
    RECOMMENDED,
    REQUIRED,
    SKIP,
    WARN,
    Check,
)
from .profile import CertifyProfile

PROBE_TIMEOUT = 120.0
#: The page size of the hugepages QAT's out-of-tree stack (usdm_drv) allocates.
HUGEPAGE_DIR = "kernel/mm/hugepages/hugepages-2048kB"


@dataclass(frozen=True)
class HostContext:
    """Which host the checks look at: a sysfs root, its /dev, and the libqatzip to load."""

    sysfs_root: str = "/sys"
    dev_root: str = "/dev"
    library: str | None = None  # None: $QATMIG_LIBQATZIP, else the loader's libqatzip.so.3

    def to_json(self) -> dict[str, Any]:
        return {"sysfs_root": self.sysfs_root, "dev_root": self.dev_root,
                "library": self.library or os.environ.get("QATMIG_LIBQATZIP") or None}


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


# ------------------------------------------------------------------------------ inventory
def inventory(ctx: HostContext) -> dict[str, Any]:
    """Read-only facts about the host for the report header (and baseline matching)."""
    uname = platform.uname()
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    cmdline = ""
    try:
        cmdline = Path("/proc/cmdline").read_text().strip()
    except OSError:
        pass
    from .. import __version__

    cpus = os.cpu_count() or 0
    machine_id = hashlib.sha256(
        f"{uname.system}|{uname.machine}|{cpu_model}|{cpus}|{mem_total}".encode()
    ).hexdigest()[:16]
    return {
        **_stack_facts(),
        "hostname": socket.gethostname(),
        "system": uname.system,
        "kernel": uname.release,
        "machine": uname.machine,
        "cpu_model": cpu_model,
        "cpus": cpus,
        "memory_bytes": mem_total,
        "kernel_cmdline": cmdline,
        "iommu_on_cmdline": any(w in cmdline.split() for w in ("intel_iommu=on", "iommu=pt")),
        "python": platform.python_version(),
        "qatmig_version": __version__,
        "machine_id": machine_id,
        "load_average": list(os.getloadavg()),
        "host_context": ctx.to_json(),
    }


QAT_MODULES = ("intel_qat", "qat_4xxx", "qat_420xx", "qat_6xxx", "qat_c62x", "qat_c3xxx",
               "qat_dh895xcc", "qat_4xxxvf", "qat_c62xvf", "usdm_drv", "vfio_pci", "vfio")


def _stack_facts() -> dict[str, Any]:
    """The driver stack as the kernel and the file system show it: QAT modules loaded,
    firmware files with their sha256, and QEMU (its version, and whether it links
    libqatzip, i.e. was built with --enable-qatzip)."""
    modules: list[str] = []
    try:
        for line in Path("/proc/modules").read_text().splitlines():
            name = line.split(" ", 1)[0]
            if name in QAT_MODULES:
                modules.append(name)
    except OSError:
        pass
    firmware = {}
    for fw in sorted(Path("/lib/firmware").glob("qat_*.bin*")):
        try:
            firmware[fw.name] = hashlib.sha256(fw.read_bytes()).hexdigest()
        except OSError:
            continue
    qemu: dict[str, Any] = {"path": None}
    import shutil

    path = shutil.which("qemu-system-x86_64")
    if path:
        qemu["path"] = path
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=20, check=False).stdout
            qemu["version"] = out.splitlines()[0].strip() if out else ""
            ldd = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=20,
                                 check=False).stdout
            qemu["links_libqatzip"] = "libqatzip" in ldd
        except (OSError, subprocess.SubprocessError):
            pass
    return {"qat_modules": modules, "qat_firmware_sha256": firmware, "qemu": qemu}


# ------------------------------------------------------------------------------ device checks
def _pf_fix(bdf: str, what: str) -> str:
    qat = f"/sys/bus/pci/devices/{bdf}/qat"
    if what == "state":
        return f"bring the device up: echo up > {qat}/state"
    return (f"give the PF the dc service while it is down: echo down > {qat}/state; "
            f"echo dc > {qat}/cfg_services; echo up > {qat}/state "
            "(or ServicesEnabled=dc in /etc/sysconfig/qat and restart qat)")


def _driver_fix(d: Any) -> str:
    from qatmig_engine.qat.devices import DEVICE_IDS

    family = DEVICE_IDS[d.device_id][0]
    if d.kind == "pf":
        if d.driver is None:
            if family.pf_module:
                return f"load the kernel driver: modprobe {family.pf_module} (firmware in " \
                       f"/lib/firmware, see docs/qat.md §1.2)"
            return "install and start the out-of-tree QAT driver (service qat_service start)"
        return (f"unbind {d.bdf} from {d.driver} and bind it to its QAT driver "
                f"({family.pf_module or 'out-of-tree package'})")
    if family.in_tree_userspace:
        if d.iommu_group is None:
            return "enable VT-d in the BIOS and boot with intel_iommu=on (iommu=pt)"
        return ("bind the VFs to vfio-pci and create /dev/vfio nodes: systemctl start qat "
                "(qatlib's qat_init.sh); add the user to group qat")
    return "bind the VF to its out-of-tree QAT VF driver (inside the guest)"


def device_checks(prof: CertifyProfile, ctx: HostContext) -> tuple[list[Check], list[Any]]:
    """Endpoints present, driver/vfio, state up, dc service: one check per endpoint each."""
    from qatmig_engine.errors import QatError
    from qatmig_engine.qat.devices import discover

    level = REQUIRED if prof.hardware else INFORMATIONAL
    try:
        devices = discover(ctx.sysfs_root, ctx.dev_root)
    except QatError as exc:
        return [Check("qat.endpoints", "QAT endpoints present", "host", level, ERROR,
                      f"cannot scan for QAT devices: {exc}",
                      "pass the host's sysfs mount (--sysfs-root) or run on the host itself",
                      code="QATMIG_E_SYSFS")], []
    by_bdf = {d.bdf: d for d in devices}
    found = [f"{d.bdf} ({d.family} {d.kind})" for d in devices]
    checks: list[Check] = []
    expected = list(prof.host.expected_devices)
    missing = [b for b in expected if b not in by_bdf]
    ready = [d.bdf for d in devices if d.ready]
    evidence = {"found": [d.to_json() for d in devices], "expected": expected,
                "min_ready": prof.host.min_ready}
    if not prof.hardware:
        checks.append(Check(
            "qat.endpoints", "QAT endpoints present", "host", INFORMATIONAL, PASS,
            (f"{len(devices)} QAT endpoint(s) found: {', '.join(found)}" if devices else
             "no QAT endpoint (none expected: qatzip runs on QATzip's software path)"),
            evidence=evidence))
    elif not devices:
        checks.append(Check(
            "qat.endpoints", "QAT endpoints present", "host", REQUIRED, FAIL,
            f"no QAT endpoint under {Path(ctx.sysfs_root) / 'bus/pci/devices'}"
            + (f"; the profile expects {', '.join(expected)}" if expected else ""),
            "check that the card is seated and enabled in the BIOS (lspci -d 8086:), load its "
            "driver (modprobe qat_4xxx for Gen4) and see docs/qat.md §1",
            code="QATMIG_E_NO_DEVICE", evidence=evidence))
    else:
        want = prof.host.min_ready
        problems = []
        if missing:
            problems.append(f"expected endpoint(s) absent: {', '.join(missing)}")
        if want is not None and len(ready) < want:
            problems.append(f"{len(ready)} ready endpoint(s), the profile wants {want}")
        if not ready and want is None and not expected:
            problems.append("no endpoint is ready for compression")
        others = [d for d in devices if expected and d.bdf not in expected]
        if problems and others:
            problems.append("found instead: " + "; ".join(
                f"{d.bdf} ({d.family} {d.kind}, {'ready' if d.ready else d.reason})"
                for d in others))
        checks.append(Check(
            "qat.endpoints", "QAT endpoints present", "host", REQUIRED,
            FAIL if problems else PASS,
            "; ".join(problems) if problems else
            f"{len(devices)} endpoint(s), {len(ready)} ready: {', '.join(found)}",
            ("see the per-endpoint checks below for what to fix" if problems and devices
             and not missing else
             "check lspci -d 8086: for the missing address (BIOS, slot, driver), or update "
             "devices.expected in the profile" if problems else ""),
            code="QATMIG_E_DEVICE_MISSING" if problems else "", evidence=evidence))
    targets = [by_bdf[b] for b in expected if b in by_bdf] if expected else devices
    # a VF's PF is checked as well, since a VF's readiness depends on it
    extra_pfs = [by_bdf[t.physfn] for t in targets if t.kind == "vf" and t.physfn in by_bdf]
    targets += [p for p in extra_pfs if p not in targets]
    # endpoints the profile does not name are shown, but do not decide the verdict
    for d in targets + [d for d in devices if d not in targets]:
        level = (REQUIRED if prof.hardware else INFORMATIONAL) if d in targets else INFORMATIONAL
        tag = f"[{d.bdf}]"
        dev_ev = d.to_json()
        # driver / vfio
        drv_ok = True
        drv_msg = f"driver {d.driver}"
        if d.kind == "pf":
            if d.driver is None or d.driver == "vfio-pci" or not (
                d.reason == "" or d.reason.startswith(("device is", "no dc service"))
            ):
                drv_ok = False
                drv_msg = d.reason or f"driver {d.driver}"
        else:
            vf_problem = d.reason if not d.reason.startswith("parent PF") else ""
            if vf_problem:
                drv_ok = False
                drv_msg = vf_problem
            else:
                drv_msg = f"driver {d.driver}, iommu group {d.iommu_group}, {d.vfio_node}"
        checks.append(Check(
            f"qat.driver{tag}", f"{d.bdf} driver and vfio state", "host", level,
            PASS if drv_ok else FAIL, drv_msg, "" if drv_ok else _driver_fix(d),
            code="" if drv_ok else "QATMIG_E_DRIVER", evidence=dev_ev))
        if d.kind != "pf":
            continue
        if d.state is None:
            checks.append(Check(f"qat.state{tag}", f"{d.bdf} is up", "host", INFORMATIONAL,
                                SKIP, "qat/state not exposed (QAT 1.x, or a kernel before 6.0): "
                                "check `adf_ctl status` says state: up", evidence=dev_ev))
        else:
            up = d.state == "up"
            checks.append(Check(
                f"qat.state{tag}", f"{d.bdf} is up", "host", level, PASS if up else FAIL,
                f"qat/state is {d.state}", "" if up else _pf_fix(d.bdf, "state"),
                code="" if up else "QATMIG_E_DEVICE_DOWN", evidence=dev_ev))
        if d.cfg_services is None:
            checks.append(Check(f"qat.dc_service{tag}", f"{d.bdf} has the dc service", "host",
                                INFORMATIONAL, SKIP, "qat/cfg_services not exposed: check "
                                "ServicesEnabled includes dc in /etc/<dev>_devN.conf",
                                evidence=dev_ev))
        else:
            ok = bool(d.dc)
            have = ";".join(d.cfg_services) or "nothing"
            checks.append(Check(
                f"qat.dc_service{tag}", f"{d.bdf} has the dc service", "host", level,
                PASS if ok else FAIL, f"cfg_services is '{have}'",
                "" if ok else _pf_fix(d.bdf, "dc"), code="" if ok else "QATMIG_E_NO_DC",
                evidence=dev_ev))
    return checks, devices


# ------------------------------------------------------------------------------ library
def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def library_checks(prof: CertifyProfile, ctx: HostContext) -> tuple[list[Check], Any]:
    from qatmig_engine.qat.binding import probe_library

    level = REQUIRED if prof.hardware else INFORMATIONAL
    info = probe_library(ctx.library)
    ev = info.to_json()
    fix_install = ("install QATzip 1.3 or later and qatlib (libqatzip.so.3 on the loader "
                   "path, check with ldconfig -p | grep libqatzip), or point QATMIG_LIBQATZIP "
                   "(or --library) at it")
    if not info.loaded:
        if prof.hardware:
            return [Check("libqatzip.load", "libqatzip loads", "host", REQUIRED, FAIL,
                          info.error, fix_install, code="QATMIG_E_NO_LIBQATZIP",
                          evidence=ev)], info
        return [Check("libqatzip.load", "libqatzip loads", "host", INFORMATIONAL, PASS,
                      "not installed; not needed: qatzip runs on QATzip's software path, "
                      "which qatmig implements itself", evidence=ev)], info
    checks = [Check("libqatzip.load", "libqatzip loads", "host", level, PASS,
                    f"{info.path or info.requested}", evidence=ev)]
    # no runtime version query exists in QATzip: the binding infers it from symbols
    guess = info.version_guess
    have = (1, 3) if guess.startswith(">= 1.3") else (1, 2)
    if prof.min_libqatzip:
        want = _version_tuple(prof.min_libqatzip)
        ok = have >= want
        checks.append(Check(
            "libqatzip.version", f"libqatzip >= {prof.min_libqatzip}", "host", level,
            PASS if ok else FAIL, f"version {guess} (inferred from its symbols)",
            "" if ok else f"upgrade QATzip to {prof.min_libqatzip} or later",
            code="" if ok else "QATMIG_E_LIBQATZIP_OLD", evidence=ev))
    if info.test_double:
        checks.append(Check(
            "libqatzip.real", "libqatzip is the real library", "host",
            RECOMMENDED if prof.hardware else INFORMATIONAL, WARN,
            f"{info.path} is qatmig's libqatzip test double, not Intel's QATzip",
            "unset QATMIG_LIBQATZIP / --library to certify with the installed QATzip",
            evidence=ev))
    return checks, info


def session_probe_checks(prof: CertifyProfile, ctx: HostContext, devices: list[Any],
                         lib_info: Any) -> list[Check]:
    """One session per ready endpoint, all open at once (see :mod:`.probe`)."""
    level = REQUIRED if prof.hardware else INFORMATIONAL
    ready = [d for d in devices if d.ready]
    if not prof.hardware and not ready:
        return [Check("qat.session_probe", "QATzip session probe", "host", INFORMATIONAL, SKIP,
                      "no ready QAT endpoint: nothing to probe")]
    if not ready or not lib_info.loaded:
        why = "no ready QAT endpoint" if not ready else "libqatzip does not load"
        return [Check("qat.session_probe", "QATzip session probe", "host", level,
                      SKIP if level != REQUIRED else FAIL,
                      f"not run: {why} (see the checks above)",
                      "fix the checks above first", code="QATMIG_E_PROBE_BLOCKED")]
    env = dict(os.environ)
    if ctx.library:
        env["QATMIG_CERTIFY_PROBE_LIBRARY"] = ctx.library
    cmd = [sys.executable, "-m", "pytest_qatmig.certify.probe", str(len(ready))]
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                             env=env, check=False)
    except subprocess.TimeoutExpired:
        return [Check("qat.session_probe", "QATzip session probe", "host", level, FAIL,
                      f"the probe did not finish in {PROBE_TIMEOUT:.0f} s (library hung)",
                      "check the qat service (systemctl status qat) and dmesg for device "
                      "errors", code="QATMIG_E_PROBE_HUNG")]
    dt = time.monotonic() - t0
    if res.returncode != 0:
        how = (f"signal {-res.returncode}" if res.returncode < 0 else
               f"exit status {res.returncode}")
        return [Check("qat.session_probe", "QATzip session probe", "host", level, FAIL,
                      f"the probe process died ({how}): {res.stderr.strip()[-400:]}",
                      "the library crashed setting up a session: check the QATzip/qatlib "
                      "versions match and dmesg", code="QATMIG_E_PROBE_CRASH")]
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [Check("qat.session_probe", "QATzip session probe", "host", level, ERROR,
                      f"unreadable probe output: {res.stdout[-200:]!r}")]
    checks = []
    sessions = out.get("sessions", [])
    for d, s in zip(ready, sessions, strict=False):
        ok = bool(s.get("hw")) and bool(s.get("round_trip"))
        if ok:
            msg = (f"session {s['index'] + 1} of {len(ready)}: hw_session_stat QZ_OK, "
                   f"64 KiB round trip byte-exact ({s.get('compressed_bytes')} B compressed)")
            fix = ""
        elif not s.get("hw"):
            msg = (f"session {s['index'] + 1} of {len(ready)} set up in software mode "
                   f"(hw_session_stat {s.get('hw_session_stat_name', '?')})"
                   + (f": {s['error']}" if s.get("error") else ""))
            fix = ("the library found no free hardware instance: check qatmgr is running "
                   "(systemctl status qat), the user is in group qat, the memlock limit, and "
                   "POLICY / NumberDcInstances give this process one instance per device")
        else:
            msg = f"session {s['index'] + 1} of {len(ready)}: round trip failed: {s.get('error')}"
            fix = "the device returned wrong data: check dmesg and the firmware version"
        checks.append(Check(
            f"qat.session_probe[{d.bdf}]", f"QATzip session on {d.bdf}", "host", level,
            PASS if ok else FAIL, msg, fix, code="" if ok else "QATMIG_E_SESSION",
            evidence=s, duration_s=round(dt, 3)))
    return checks


# ------------------------------------------------------------------------------ limits
def memlock_check(prof: CertifyProfile) -> Check:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    unlimited = soft == resource.RLIM_INFINITY
    have = "unlimited" if unlimited else _fmt_bytes(soft)
    ev = {"soft": None if unlimited else soft, "required": prof.min_memlock}
    if prof.min_memlock is None:
        return Check("host.memlock", "memlock limit", "host", INFORMATIONAL, PASS,
                     f"RLIMIT_MEMLOCK {have} (the profile sets no minimum)", evidence=ev)
    ok = unlimited or soft >= prof.min_memlock
    kib = prof.min_memlock // 1024
    return Check(
        "host.memlock", f"memlock limit >= {_fmt_bytes(prof.min_memlock)}", "host", REQUIRED,
        PASS if ok else FAIL, f"RLIMIT_MEMLOCK is {have}",
        "" if ok else (f"raise it for the user that runs QEMU: ulimit -l {kib} (this shell), "
                       f"'@qat - memlock {kib}' in /etc/security/limits.d/qat.conf, or "
                       f"LimitMEMLOCK={prof.min_memlock} in the service unit"),
        code="" if ok else "QATMIG_E_MEMLOCK", evidence=ev)


def hugepages_check(prof: CertifyProfile, ctx: HostContext) -> Check:
    base = Path(ctx.sysfs_root) / HUGEPAGE_DIR
    values: dict[str, int | None] = {}
    for name in ("nr_hugepages", "free_hugepages"):
        try:
            values[name] = int((base / name).read_text().strip())
        except (OSError, ValueError):
            values[name] = None
    free = values["free_hugepages"]
    desc = ("no 2 MiB hugepage pool" if free is None else
            f"{values['nr_hugepages']} 2 MiB hugepages, {free} free")
    if not prof.hugepages:
        return Check("host.hugepages", "hugepages", "host", INFORMATIONAL, PASS,
                     f"{desc} (not required: the in-tree qatlib stack needs none)",
                     evidence=values)
    ok = free is not None and free >= prof.hugepages
    return Check(
        "host.hugepages", f"{prof.hugepages} free 2 MiB hugepages", "host", REQUIRED,
        PASS if ok else FAIL, desc,
        "" if ok else (f"reserve them: echo {prof.hugepages} > /sys/{HUGEPAGE_DIR}/nr_hugepages"
                       " (and max_huge_pages / max_huge_pages_per_process of usdm_drv)"),
        code="" if ok else "QATMIG_E_HUGEPAGES", evidence=values)


def host_checks(prof: CertifyProfile, ctx: HostContext) -> tuple[list[Check], dict[str, Any]]:
    """Every host check in order; also returns the device and library facts for the report."""
    checks, devices = device_checks(prof, ctx)
    lib_checks, lib_info = library_checks(prof, ctx)
    checks += lib_checks
    checks += session_probe_checks(prof, ctx, devices, lib_info)
    checks.append(memlock_check(prof))
    checks.append(hugepages_check(prof, ctx))
    facts = {"devices": [d.to_json() for d in devices], "library": lib_info.to_json(),
             "ready_devices": [d.bdf for d in devices if d.ready]}
    return checks, facts

