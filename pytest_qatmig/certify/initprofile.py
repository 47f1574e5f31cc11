"""``qatmig certify --init-profile FILE``: a starting profile from what this host has."""

from __future__ import annotations

import json
import resource
import socket
from typing import Any

from .checks import HostContext


def _yaml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def init_profile_text(ctx: HostContext) -> str:
    """YAML text (with comments) describing this host; thresholds are left for the owner to
    set from a baseline run, except sanity bounds."""
    from qatmig_engine.errors import QatError
    from qatmig_engine.qat.binding import probe_library
    from qatmig_engine.qat.devices import discover

    try:
        devices: list[Any] = discover(ctx.sysfs_root, ctx.dev_root)
    except QatError:
        devices = []
    ready = [d for d in devices if d.ready]
    pfs = [d.bdf for d in ready if d.kind == "pf"]
    expected = pfs or [d.bdf for d in ready]
    lib = probe_library(ctx.library)
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    hw = bool(ready)
    found = ", ".join(f"{d.bdf} ({d.family} {d.kind}, {'ready' if d.ready else d.reason})"
                      for d in devices) or "none"
    channels = 8 if hw else 2
    lines = [
        f"# Host profile written by `qatmig certify --init-profile` on {socket.gethostname()}.",
        f"# QAT endpoints found under {ctx.sysfs_root}: {found}.",
        f"# libqatzip: {lib.path or lib.requested} ({lib.version_guess})" if lib.loaded else
        f"# libqatzip: not loadable ({lib.error.split(';')[0]}).",
        "# Review it, run `qatmig certify --profile THIS -o baseline/` once, then set the",
        "# thresholds below from that baseline's report.md (with a margin for noise).",
        f"name: {json.dumps(socket.gethostname())}",
        "description: " + json.dumps(f"{len(ready)} ready QAT endpoint(s)" if hw else
                                     "no ready QAT endpoint: qatzip on QATzip's software path"),
        "devices:",
        f"  expected: {_yaml_list(expected)}",
    ]
    if hw:
        lines.append(f"  min_ready: {len(expected)}")
    lines += [
        "certify:",
        f"  hardware: {'true' if hw else 'false'}",
    ]
    if hw:
        lines += ['  libqatzip: {min_version: "1.3"}', "  host:",
                  "    min_memlock: 64M    # qatlib wants ~16 MB per VF a process uses",
                  "    hugepages: 0        # set when using the out-of-tree driver stack"]
    else:
        have = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft >> 10} KiB"
        lines += [f"  # memlock here: {have}; no minimum is needed without QAT"]
    lines += [
        "  conformance:",
        "    impl: [reference]",
        "    guest_size: 16M",
        "  bench:",
        "    guest_size: 256M",
        "    corpus: stand-in",
        "    repeat: 3",
        "    defaults: {max_downtime_ms: 5000}",
        "    cases:",
    ]
    if hw:
        lines += [f"      - {{id: qatzip-{channels}ch, multifd-compression: qatzip, "
                  f"multifd-channels: {channels}, multifd-qatzip-level: 1, qat-backend: hw}}"]
    else:
        lines += [f"      - {{id: qatzip-sw-{channels}ch, multifd-compression: qatzip, "
                  f"multifd-channels: {channels}, qat-backend: sw}}"]
    lines += [f"      - {{id: zstd-{channels}ch, multifd-compression: zstd, "
              f"multifd-channels: {channels}, multifd-zstd-level: 1}}",
              "      # add thresholds: {min_mbps: ..., max_send_cpu: ...} to each case"]
    return "\n".join(lines) + "\n"
