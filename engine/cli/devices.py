"""``qatmig devices``: QAT endpoints from sysfs, their readiness for qatzip, and libqatzip."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ._common import add_json_flag, format_table, print_json

EPILOG = """\
examples:
  qatmig devices                         # this host: /sys and /dev
  qatmig devices --json
  qatmig devices --fake-host 4xxx_vfs_vfio   # a fake sysfs tree shipped with qatmig
  qatmig devices --sysfs-root /tmp/sys --dev-root /tmp/dev
  qatmig devices --probe                 # also set up one session: does it reach a device?
  QATMIG_LIBQATZIP=/opt/qatzip/lib/libqatzip.so.3 qatmig devices --library-only

A device is READY when QATzip can compress on it: a QAT driver is bound, qat/state is up and
qat/cfg_services has dc (gen 1.x: configured in /etc/<dev>_devN.conf, not visible in sysfs);
a VF must be on vfio-pci with a /dev/vfio/<group> node. Exit status: 0 when at least one
endpoint is ready and libqatzip loads, 3 otherwise (1 on errors). See docs/qat.md.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "devices",
        help="list QAT devices and whether qatzip can use them",
        description="List Intel QAT endpoints (PFs and VFs) found in sysfs, whether each is "
        "ready for QATzip compression (and why not), and whether libqatzip.so.3 loads.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sysfs-root", default=None, metavar="PATH",
                   help="sysfs mount to scan (default /sys)")
    p.add_argument("--dev-root", default=None, metavar="PATH",
                   help="/dev to look for vfio group nodes in (default /dev)")
    p.add_argument("--fake-host", default=None, metavar="TREE",
                   help="use a fake sysfs tree shipped in qatmig_fixtures/sysfs "
                   "(e.g. 4xxx_pf_dc, no_device)")
    p.add_argument("--library", default=None, metavar="PATH",
                   help="libqatzip to load (default: $QATMIG_LIBQATZIP, else libqatzip.so.3)")
    p.add_argument("--library-only", action="store_true",
                   help="only report whether libqatzip loads")
    p.add_argument("--probe", action="store_true",
                   help="also set up one QATzip session to see whether it lands on a device "
                   "(only when an endpoint is ready and the library loads)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ParameterError
    from ..qat.binding import probe_library
    from ..qat.devices import discover, fixture_tree, hardware_problem

    if args.fake_host and (args.sysfs_root or args.dev_root):
        raise ParameterError("use either --fake-host or --sysfs-root/--dev-root, not both")
    if args.fake_host:
        sysfs_root, dev_root = (str(p) for p in fixture_tree(args.fake_host))
    else:
        sysfs_root = args.sysfs_root or "/sys"
        dev_root = args.dev_root or "/dev"
    lib = probe_library(args.library)
    devices = [] if args.library_only else discover(sysfs_root, dev_root)
    problem = "" if args.library_only else hardware_problem(devices, sysfs_root)
    usable = lib.loaded and (args.library_only or not problem)
    probe: str | None = None  # None = not run; "" = hardware session; else why not
    if args.probe and usable and not args.library_only:
        from ..qat.backend import probe_hardware
        from ..qat.binding import load_library

        probe = probe_hardware(load_library(args.library))
        usable = not probe

    if args.json:
        out: dict[str, Any] = {"library": lib.to_json(), "usable": usable}
        if not args.library_only:
            out.update(sysfs_root=sysfs_root, dev_root=dev_root,
                       devices=[d.to_json() for d in devices], problem=problem,
                       session_probe=probe)
        print_json(out, sys.stdout)  # _common binds its default stdout at import
        return 0 if usable else 3

    if not args.library_only:
        if devices:
            rows = [
                (d.bdf, d.kind, d.family, d.generation, d.pci_id, d.driver or "-",
                 d.state or "-", ";".join(d.cfg_services) if d.cfg_services is not None else "-",
                 "-" if d.numa_node is None else d.numa_node,
                 "-" if d.iommu_group is None else d.iommu_group,
                 "yes" if d.ready else "no", d.reason)
                for d in devices
            ]
            print(format_table(("BDF", "KIND", "FAMILY", "GENERATION", "PCI ID", "DRIVER",
                                "STATE", "SERVICES", "NUMA", "IOMMU", "READY", "WHY NOT"),
                               rows))
        else:
            print(f"no QAT devices under {os.path.join(sysfs_root, 'bus/pci/devices')}")
        print()
    if lib.loaded:
        kind = "TEST DOUBLE" if lib.test_double else "loaded"
        print(f"libqatzip: {kind}: {lib.path or lib.requested} (version {lib.version_guess})")
    else:
        print(f"libqatzip: not loadable: {lib.error}")
    if not args.library_only:
        if problem:
            print(f"qatzip hardware: not usable: {problem}")
        elif not lib.loaded:
            print("qatzip hardware: device ready, but libqatzip is missing")
        elif probe is None:
            print("qatzip hardware: a ready endpoint and libqatzip are present "
                  "(the migration probes a session before using it; see --probe)")
        elif probe:
            print(f"qatzip hardware: session probe failed: {probe}")
        else:
            print("qatzip hardware: session probe landed on a device (hw_session_stat QZ_OK)")
        verdict = "software (fallback)"
        if usable:
            verdict = "hardware" if probe == "" else "hardware (after the session probe)"
        print(f"--qat-backend auto would use: {verdict}")
    return 0 if usable else 3
