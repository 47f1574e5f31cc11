"""The seed's benchmark matrix, for the engine and for real QEMUs, in one run (``qatmig bench``).

QEMU's QATzip document compares methods with one table: per (method, channels, link) the total
time, downtime, throughput (Mbps), pages/s, send CPU % and recv CPU %. :func:`run_matrix`
produces that table on this host for every implementation given, on the same guest image and
in the same run, so ratios between implementations mean something on a noisy machine:

* ``engine`` / ``engine@DIALECT``: two processes running ``api.listen`` / ``api.send`` (what
  ``qatmig listen`` / ``qatmig send`` run), whole-guest digests off;
* ``qemu:PATH``: two ``qemu-system-x86_64`` (TCG, ``-S``, RAM in a /dev/shm file).

Every implementation is measured the same way: wall time from the start of the migration until
both ends completed, and CPU seconds = utime+stime of each end's process over the migration
(``/proc/<pid>/stat`` for QEMU, ``getrusage`` around the api call in the engine processes;
process start-up excluded on both). Every run must end ``completed`` with the destination RAM
equal to the source byte for byte, or the matrix stops with an error. Throughput and pages/s
are the guest RAM over the wall time (the same formula for every implementation); QEMU's own
``mbps`` and the engine's own figures stay in the JSON.

The I/O-free parts (parsing, aggregation, tables, CSV) are plain functions so that they can be
tested without running a migration; plots need matplotlib (``pip install 'pytest-qatmig[bench]'``)
and are imported lazily.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .constants import TARGET_PAGE_SIZE
from .dialects import DEFAULT_DIALECT, DIALECTS
from .errors import MigrationError, ParameterError, QemuError

#: ``--max-bandwidth`` value meaning "no limit" (QEMU gets 100 GiB/s, the engine 0).
UNLIMITED = 0

#: The seed table's links: 1 Gbit/s, 10 Gbit/s (= 1.25 GB/s); plus unlimited.
SEED_LINKS = ("unlimited", "1Gbit", "10Gbit")

_BW_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(bit|b|B|Bps|bps)?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_DEC = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_bandwidth(text: str) -> int:
    """A ``--max-bandwidth`` item in bytes/s: ``unlimited`` (0), ``512M`` (binary, bytes/s, as
    QEMU's ``max-bandwidth``), ``1.25G``, or a link speed in bits: ``10Gbit`` = 1.25e9 B/s."""
    t = text.strip()
    if t.lower() in ("unlimited", "0", "none", "inf"):
        return UNLIMITED
    m = _BW_RE.match(t)
    if not m:
        raise ParameterError(f"cannot parse bandwidth '{text}' (examples: unlimited, 512M, "
                             "1.25G bytes/s; 10Gbit for a 10 Gbit/s link)")
    value, unit, suffix = float(m.group(1)), m.group(2).lower(), m.group(3) or ""
    if suffix in ("bit", "bps"):
        out = value * _DEC[unit] / 8
    else:
        out = value * _UNITS[unit]
    if out < 1:
        raise ParameterError(f"bandwidth '{text}' is below 1 byte/s")
    return int(out)


def format_bandwidth(bw: int) -> str:
    """``0`` -> ``unlimited``; a whole Gbit/s link -> ``10Gbit``; else MiB/s."""
    if bw == UNLIMITED:
        return "unlimited"
    bits = bw * 8
    if bits % 1_000_000_000 == 0:
        return f"{bits // 1_000_000_000}Gbit"
    if bits % 1_000_000 == 0:
        return f"{bits // 1_000_000}Mbit"
    return f"{bw / (1 << 20):g}MiB/s"


def split_list(text: str) -> list[str]:
    """``"2,4, 8"`` -> ``["2", "4", "8"]`` (empty items dropped)."""
    return [x.strip() for x in text.split(",") if x.strip()]


# ------------------------------------------------------------------------ implementations
@dataclass(frozen=True)
class Impl:
    """One implementation in the matrix (both ends of each migration run it)."""

    kind: str  # "engine" | "qemu"
    dialect: str
    label: str
    path: str | None = None
    version: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_VERSION_RE = re.compile(r"version (\d+)\.(\d+)")


def dialect_for_version(version: str) -> str:
    """The engine dialect a QEMU of this ``--version`` line speaks: the newest dialect whose
    release is not newer than it (``QEMU emulator version 10.0.2`` -> the newest known)."""
    m = _VERSION_RE.search(version)
    if not m:
        raise ParameterError(f"cannot read a QEMU version from {version!r}")
    have = (int(m.group(1)), int(m.group(2)))
    best: tuple[tuple[int, int], str] | None = None
    for name in DIALECTS:
        mm = re.fullmatch(r"qemu-(\d+)\.(\d+)", name)
        if not mm:
            continue
        rel = (int(mm.group(1)), int(mm.group(2)))
        if rel <= have and (best is None or rel > best[0]):
            best = (rel, name)
    if best is None:
        raise ParameterError(f"{version}: older than every dialect the engine speaks "
                             f"({', '.join(DIALECTS)})")
    return best[1]


def short_version(version: str) -> str:
    """``QEMU emulator version 7.2.22 (Debian …)`` -> ``7.2``."""
    m = _VERSION_RE.search(version)
    return f"{m.group(1)}.{m.group(2)}" if m else version


def parse_impl(spec: str, *, version_of: Callable[[str], str] | None = None) -> Impl:
    """``engine``, ``engine@qemu-7.2`` or ``qemu:PATH`` (PATH: a qemu-system-x86_64 or a
    ready-to-run wrapper for it). ``version_of(path)`` returns its ``--version`` line."""
    s = spec.strip()
    if s == "engine" or s.startswith("engine@"):
        dialect = s.partition("@")[2] or DEFAULT_DIALECT
        if dialect not in DIALECTS:
            raise ParameterError(f"--impl {spec}: unknown dialect '{dialect}' (choose one of "
                                 f"{', '.join(DIALECTS)})")
        return Impl("engine", dialect, f"engine ({dialect})")
    if s.startswith("qemu:") or s == "qemu":
        from .qemu.process import find_qemu, qemu_version

        path = find_qemu(s.partition(":")[2] or None)
        if path is None:
            raise ParameterError(f"--impl {spec}: not an executable qemu-system-x86_64 (for the "
                                 "system QEMU: apt-get install qemu-system-x86)")
        try:
            version = (version_of or qemu_version)(path)
        except QemuError as exc:
            raise ParameterError(f"--impl {spec}: {exc}") from None
        return Impl("qemu", dialect_for_version(version), f"QEMU {short_version(version)}",
                    path, version)
    raise ParameterError(f"--impl {spec!r}: expected engine, engine@DIALECT or qemu:PATH")


def default_impls(qemus: Sequence[str]) -> list[str]:
    """``engine`` plus ``qemu:PATH`` for every QEMU given."""
    return ["engine", *[f"qemu:{q}" for q in qemus]]


def resolve_impls(specs: Sequence[str], *,
                  version_of: Callable[[str], str] | None = None) -> list[Impl]:
    """Parse ``--impl`` items. A plain ``engine`` next to QEMUs becomes one engine per dialect
    those QEMUs speak (QEMU 7.2 and QEMU 10.0 are each compared with the engine they would
    meet on the wire); ``engine@DIALECT`` is kept as given. Engines first, then QEMUs."""
    parsed = [(s.strip(), parse_impl(s, version_of=version_of)) for s in specs]
    qemus = [i for _s, i in parsed if i.kind == "qemu"]
    engines: list[Impl] = []
    for s, i in parsed:
        if i.kind != "engine":
            continue
        if s == "engine" and qemus:
            engines += [Impl("engine", q.dialect, f"engine ({q.dialect})") for q in qemus]
        else:
            engines.append(i)
    out: list[Impl] = []
    for i in [*sorted(engines, key=lambda i: i.dialect), *qemus]:
        if i.label in {o.label for o in out}:
            continue
        out.append(i)
    return out


def baseline_for(engine: Impl, impls: Sequence[Impl]) -> list[Impl]:
    """The QEMUs an engine row is compared with: every QEMU speaking its dialect (the pairs
    of :func:`resolve_impls`); with none, every QEMU."""
    qemus = [i for i in impls if i.kind == "qemu"]
    same = [q for q in qemus if q.dialect == engine.dialect]
    return same or qemus


# ------------------------------------------------------------------------ measurements
@dataclass
class RunResult:
    """One migration of the matrix."""

    impl: str
    method: str
    channels: int
    max_bandwidth: int
    repeat: int
    wall_s: float
    src_cpu_s: float
    dst_cpu_s: float
    downtime_ms: float | None
    reported_total_ms: float | None
    reported_mbps: float | None
    wire_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Cell:
    """The median of the repeats of one (implementation, method, channels, link)."""

    impl: str
    method: str
    channels: int
    max_bandwidth: int
    size: int
    runs: int
    wall_s: float
    wall_s_min: float
    wall_s_max: float
    src_cpu_s: float
    dst_cpu_s: float
    cpu_s_spread: float
    downtime_ms: float | None
    wire_bytes: int | None = None
    ratios: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        return self.wall_s * 1000

    @property
    def throughput_mbps(self) -> float:
        """Guest RAM moved per second, in Mbit/s (the same formula for every implementation)."""
        return self.size * 8 / self.wall_s / 1e6 if self.wall_s else 0.0

    @property
    def wire_mbps(self) -> float | None:
        return (self.wire_bytes * 8 / self.wall_s / 1e6
                if self.wire_bytes is not None and self.wall_s else None)

    @property
    def pages_per_second(self) -> float:
        return self.size / TARGET_PAGE_SIZE / self.wall_s if self.wall_s else 0.0

    @property
    def send_cpu_percent(self) -> float:
        return 100 * self.src_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def recv_cpu_percent(self) -> float:
        return 100 * self.dst_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_s(self) -> float:
        return self.src_cpu_s + self.dst_cpu_s

    @property
    def cpu_s_per_gib(self) -> float:
        return self.cpu_s / (self.size / (1 << 30))

    def key(self) -> tuple[str, int, int]:
        return (self.method, self.channels, self.max_bandwidth)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for k in ("total_ms", "throughput_mbps", "wire_mbps", "pages_per_second",
                  "send_cpu_percent", "recv_cpu_percent", "cpu_s", "cpu_s_per_gib"):
            out[k] = getattr(self, k)
        return out


def aggregate(runs: Sequence[RunResult], size: int) -> Cell:
    """Median of the repeats of one cell, with the spread (max - min) of wall and CPU."""
    if not runs:
        raise ValueError("no runs to aggregate")
    r0 = runs[0]
    walls = [r.wall_s for r in runs]
    cpus = [r.src_cpu_s + r.dst_cpu_s for r in runs]
    downs = [r.downtime_ms for r in runs if r.downtime_ms is not None]
    wires = [r.wire_bytes for r in runs if r.wire_bytes is not None]
    return Cell(
        impl=r0.impl, method=r0.method, channels=r0.channels, max_bandwidth=r0.max_bandwidth,
        size=size, runs=len(runs), wall_s=statistics.median(walls), wall_s_min=min(walls),
        wall_s_max=max(walls), src_cpu_s=statistics.median(r.src_cpu_s for r in runs),
        dst_cpu_s=statistics.median(r.dst_cpu_s for r in runs),
        cpu_s_spread=max(cpus) - min(cpus),
        downtime_ms=statistics.median(downs) if downs else None,
        wire_bytes=int(statistics.median(wires)) if wires else None,
    )


RATIO_KEYS = ("wall_s", "src_cpu_s", "dst_cpu_s", "cpu_s")


def add_ratios(cells: list[Cell], impls: Sequence[Impl]) -> None:
    """Each engine cell gets ``ratios[<QEMU label>]`` = engine ÷ that QEMU for wall time and
    CPU seconds (source, destination, both) of the same (method, channels, link)."""
    by = {(c.impl, *c.key()): c for c in cells}
    labels = {i.label: i for i in impls}
    for c in cells:
        impl = labels.get(c.impl)
        if impl is None or impl.kind != "engine":
            continue
        for base in baseline_for(impl, impls):
            b = by.get((base.label, *c.key()))
            if b is None:
                continue
            c.ratios[base.label] = {
                k: (getattr(c, k) / getattr(b, k)) if getattr(b, k) else None
                for k in RATIO_KEYS
            }


# ------------------------------------------------------------------------ output
SEED_HEADERS = ["method", "channels", "max-bandwidth", "total ms", "downtime ms",
                "throughput Mbps", "pages/s", "send CPU %", "recv CPU %", "CPU-s/GiB",
                "wall spread"]


def _fmt(x: float | None, nd: int = 0) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def seed_rows(cells: Iterable[Cell]) -> list[list[str]]:
    """Rows in the seed table's layout (one implementation), plus CPU-s per GiB and the
    spread (min-max) of the repeats' wall time."""
    rows = []
    for c in cells:
        rows.append([c.method, str(c.channels), format_bandwidth(c.max_bandwidth),
                     _fmt(c.total_ms), _fmt(c.downtime_ms), _fmt(c.throughput_mbps),
                     _fmt(c.pages_per_second), _fmt(c.send_cpu_percent),
                     _fmt(c.recv_cpu_percent), _fmt(c.cpu_s_per_gib, 2),
                     f"{c.wall_s_min:.2f}-{c.wall_s_max:.2f} s"])
    return rows


def ratio_headers(baselines: Sequence[str]) -> list[str]:
    out = []
    for b in baselines:
        out += [f"wall ÷ {b}", f"send CPU ÷ {b}", f"recv CPU ÷ {b}", f"CPU ÷ {b}"]
    return out


def ratio_cells(c: Cell, baselines: Sequence[str]) -> list[str]:
    out = []
    for b in baselines:
        r = c.ratios.get(b)
        for k in RATIO_KEYS:
            v = r.get(k) if r else None
            out.append("–" if v is None else f"{v:.2f}x")
    return out


def tables(result: dict[str, Any], render: Callable[[Sequence[str], list[list[str]]], str]
           ) -> list[tuple[str, str]]:
    """(title, table) per implementation, the seed layout plus ratio columns."""
    cells = [cell_from_json(c) for c in result["cells"]]
    out = []
    for impl in result["impls"]:
        mine = [c for c in cells if c.impl == impl["label"]]
        bases = sorted({b for c in mine for b in c.ratios})
        rows = [r + ratio_cells(c, bases) for r, c in zip(seed_rows(mine), mine, strict=True)]
        title = impl["label"] + (f" — {impl['version']}" if impl.get("version") else "")
        out.append((title, render(SEED_HEADERS + ratio_headers(bases), rows)))
    return out


def cells_above(result: dict[str, Any], limit: float = 1.0) -> list[str]:
    """Every engine cell whose total CPU or wall ratio to its QEMU is above ``limit``, as
    ``engine (qemu-10.0) zstd x2 unlimited vs QEMU 10.0: CPU 1.21x (send 1.18x, recv
    1.28x), wall 1.59x``."""
    out = []
    for c in (cell_from_json(d) for d in result["cells"]):
        for base, r in sorted(c.ratios.items()):
            cpu, wall = r.get("cpu_s"), r.get("wall_s")
            if (cpu or 0) <= limit and (wall or 0) <= limit:
                continue
            def x(v: float | None) -> str:
                return "–" if v is None else f"{v:.2f}x"

            out.append(f"{c.impl} {c.method} x{c.channels} {format_bandwidth(c.max_bandwidth)} "
                       f"vs {base}: CPU {x(cpu)} (send {x(r.get('src_cpu_s'))}, recv "
                       f"{x(r.get('dst_cpu_s'))}), wall {x(wall)}")
    return out


def markdown_table(headers: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def cell_from_json(d: dict[str, Any]) -> Cell:
    names = {f for f in Cell.__dataclass_fields__}
    return Cell(**{k: v for k, v in d.items() if k in names})


CSV_FIELDS = ["impl", "method", "channels", "max_bandwidth", "size", "runs", "total_ms",
              "wall_s_min", "wall_s_max", "downtime_ms", "throughput_mbps", "wire_mbps",
              "pages_per_second", "send_cpu_percent", "recv_cpu_percent", "src_cpu_s",
              "dst_cpu_s", "cpu_s", "cpu_s_per_gib", "cpu_s_spread", "wire_bytes"]


def to_csv(result: dict[str, Any]) -> str:
    """One row per cell; ratio columns ``<key> vs <QEMU label>`` for the engine rows."""
    cells = [cell_from_json(c) for c in result["cells"]]
    bases = sorted({b for c in cells for b in c.ratios})
    fields = CSV_FIELDS + [f"{k} vs {b}" for b in bases for k in RATIO_KEYS]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for c in cells:
        j = c.to_json()
        row = {k: j.get(k) for k in CSV_FIELDS}
        for b in bases:
            for k in RATIO_KEYS:
                row[f"{k} vs {b}"] = (c.ratios.get(b) or {}).get(k)
        w.writerow(row)
    return buf.getvalue()


def write_plots(result: dict[str, Any], folder: Path) -> list[Path]:
    """PNG plots (one per link): throughput, send CPU-s and recv CPU-s per method and channel
    count, every implementation side by side. Needs matplotlib (imported here, lazily)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [cell_from_json(c) for c in result["cells"]]
    labels = [i["label"] for i in result["impls"]]
    written = []
    for bw in sorted({c.max_bandwidth for c in cells}):
        mine = [c for c in cells if c.max_bandwidth == bw]
        groups = sorted({(c.method, c.channels) for c in mine},
                        key=lambda g: (result["methods"].index(g[0])
                                       if g[0] in result["methods"] else 99, g[1]))
        fig, axes = plt.subplots(1, 3, figsize=(max(15.0, 1.6 * len(groups)), 4.5))
        width = 0.8 / max(1, len(labels))
        metrics = (("throughput_mbps", "guest throughput (Mbit/s)"),
                   ("src_cpu_s", "send CPU-s (source process)"),
                   ("dst_cpu_s", "recv CPU-s (destination process)"))
        for ax, (metric, title) in zip(axes, metrics, strict=True):
            for k, label in enumerate(labels):
                ys = []
                for g in groups:
                    c = next((c for c in mine if c.impl == label
                              and (c.method, c.channels) == g), None)
                    ys.append(getattr(c, metric) if c is not None else 0.0)
                ax.bar([x + k * width for x in range(len(groups))], ys, width, label=label)
            ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(groups))])
            ax.set_xticklabels([f"{m}\n{ch} ch" for m, ch in groups], fontsize=8)
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=8)
        meta = result["meta"]
        fig.suptitle(f"{meta['guest']['description']}, link {format_bandwidth(bw)}; "
                     f"median of {meta['repeat']}; load avg {meta['loadavg_before'][0]:.2f}"
                     f"→{meta['loadavg_after'][0]:.2f}", fontsize=10)
        fig.tight_layout()
        path = folder / f"bench-{format_bandwidth(bw).replace('/', '_')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------------ the guest
@dataclass
class Guest:
    """The source RAM image every implementation migrates."""

    path: Path
    size: int
    kind: str
    description: str


def prepare_guest(kind: str, size: int, workdir: Path, *, zero_ratio: float = 0.0,
                  seed: int = 1, progress: Callable[[int], None] | None = None) -> Guest:
    """``silesia`` (real corpus when present, else the calibrated stand-in; cached, then copied
    to ``workdir``), ``mixed`` (the interop tests' mixed-page image) or a path to an image."""
    dest = workdir / "src.img"
    if kind == "mixed":
        from .qemu.image import write_image

        write_image(str(dest), size, seed=seed)
        return Guest(dest, size, "mixed",
                     f"{size >> 20} MiB mixed image (~20% zero, 40% text, 30% random, "
                     "10% sparse pages)")
    if kind == "silesia":
        from .silesia import cached_guest_image, open_corpus

        corpus = open_corpus("auto")
        src = cached_guest_image(size, corpus, zero_ratio, seed, progress=progress)
        shutil.copyfile(src, dest)
        return Guest(dest, size, "silesia",
                     f"{size >> 20} MiB Silesia guest ({corpus.name}, {zero_ratio:.0%} zero "
                     "pages)")
    path = Path(kind)
    if not path.is_file():
        raise ParameterError(f"--guest {kind}: expected silesia, mixed or an image file")
    if path.stat().st_size != size:
        raise ParameterError(f"--guest {kind}: its size {path.stat().st_size} is not "
                             f"--guest-size {size}")
    shutil.copyfile(path, dest)
    return Guest(dest, size, str(path), f"{size >> 20} MiB image {path.name}")


# ------------------------------------------------------------------------ the matrix
@dataclass
class Matrix:
    """What ``qatmig bench`` runs."""

    impls: list[Impl]
    methods: list[str]
    channels: list[int]
    bandwidths: list[int]
    size: int
    guest: str = "silesia"
    zero_ratio: float = 0.0
    repeat: int = 1
    count_wire: bool = False
    timeout: float = 600.0

    def cells(self) -> list[tuple[Impl, str, int, int]]:
        return [(i, m, c, b) for b in self.bandwidths for m in self.methods
                for c in self.channels for i in self.impls]

    def validate(self) -> None:
        from .dialects import get_dialect

        if not self.impls:
            raise ParameterError("--impl: nothing to run")
        if self.repeat < 1:
            raise ParameterError("--repeat must be at least 1")
        for i in self.impls:
            for m in self.methods:
                if i.kind == "qemu" and m not in ("none", "zlib", "zstd"):
                    raise ParameterError(
                        f"--impl {i.label}: QEMU as packaged by Debian has no '{m}' "
                        "(only none, zlib, zstd); drop it from --multifd-compression or "
                        "--impl")
                get_dialect(i.dialect).method_flag(m)
        for c in self.channels:
            if not 1 <= c <= 255:
                raise ParameterError(f"--channels {c}: multifd-channels is 1..255")


def _one(impl: Impl, guest: Guest, dst: str, method: str, channels: int, bw: int,
         workdir: str, tap: bool, timeout: float) -> Any:
    from .qemu import interop
    from .qemu.process import UNLIMITED_BANDWIDTH

    Path(dst).unlink(missing_ok=True)
    if impl.kind == "qemu":
        return interop.qemu_to_qemu(
            str(guest.path), dst, guest.size, method, channels, workdir=workdir, tap=tap,
            check=False, binary=impl.path, poll=0.01,
            max_bandwidth=bw or UNLIMITED_BANDWIDTH, timeout=timeout)
    return interop.engine_to_engine_measured(
        str(guest.path), dst, guest.size, method, channels, workdir=workdir, tap=tap,
        dialect=impl.dialect, max_bandwidth=bw, timeout=timeout)


def _result(impl: Impl, run: Any, method: str, channels: int, bw: int, k: int) -> RunResult:
    if not (run.completed and run.ram_equal):
        raise MigrationError(f"{impl.label} {method} x{channels} link {format_bandwidth(bw)}: "
                             f"{run.summary()}\n{run.log[-2000:]}")
    if impl.kind == "qemu":
        ram = run.source.get("ram", {})
        down, total, mbps = (run.source.get("downtime"), run.source.get("total-time"),
                             ram.get("mbps"))
    else:
        down, total, mbps = (run.source.get("downtime_ms"), run.source.get("total_time_ms"),
                             run.source.get("throughput_mbps"))
    return RunResult(impl.label, method, channels, bw, k, run.wall_s, run.src_cpu_s or 0.0,
                     run.dst_cpu_s or 0.0, down, total, mbps, run.wire_bytes)


def run_matrix(m: Matrix, *, on_run: Callable[[str], None] | None = None,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every cell ``repeat`` times (repeats interleaved across implementations, so a
    change in machine load hits all of them alike) and return the result document."""
    m.validate()
    log = log or (lambda s: None)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    stamped = _stamp()
    load0 = os.getloadavg()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    runs: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="qatmig-bench-", dir=base) as d:
        work = Path(d)
        log(f"preparing the {m.size >> 20} MiB {m.guest} guest")
        guest = prepare_guest(m.guest, m.size, work, zero_ratio=m.zero_ratio)
        dst = str(work / "dst.img")
        for k in range(m.repeat):
            for impl, method, ch, bw in m.cells():
                what = f"{impl.label} {method} x{ch} {format_bandwidth(bw)} #{k + 1}"
                run = _one(impl, guest, dst, method, ch, bw, d, False, m.timeout)
                r = _result(impl, run, method, ch, bw, k)
                if m.count_wire and k == 0:
                    counted = _one(impl, guest, dst, method, ch, bw, d, True, m.timeout)
                    r.wire_bytes = counted.wire_bytes
                runs.append(r)
                log(f"{what}: {r.wall_s:.2f} s, CPU {r.src_cpu_s:.2f} + {r.dst_cpu_s:.2f} s")
                if on_run is not None:
                    on_run(what)
    cells = []
    for impl, method, ch, bw in m.cells():
        mine = [r for r in runs if (r.impl, r.method, r.channels, r.max_bandwidth)
                == (impl.label, method, ch, bw)]
        cells.append(aggregate(mine, m.size))
    add_ratios(cells, m.impls)
    return {
        "meta": {
            "started": started, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "loadavg_before": list(load0), "loadavg_after": list(os.getloadavg()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(), "repeat": m.repeat,
            "guest": {"kind": guest.kind, "size": m.size, "description": guest.description,
                      "zero_ratio": m.zero_ratio},
            "stamp": stamped,
            "cpu_method": "utime+stime of each end's process over the migration "
                          "(/proc/<pid>/stat for QEMU, until it reports completed; getrusage "
                          "from the call of api.send/api.listen until the migration ended, "
                          "before the guest is unmapped, for the engine); start-up and "
                          "tear-down excluded",
        },
        "impls": [i.to_json() for i in m.impls],
        "methods": m.methods, "channels": m.channels, "max_bandwidth": m.bandwidths,
        "runs": [r.to_json() for r in runs],
        "cells": [c.to_json() for c in cells],
    }


def write_outputs(result: dict[str, Any], folder: Path, *, plots: bool = True) -> list[Path]:
    """``results.json``, ``results.csv``, ``tables.md`` and (with matplotlib) the PNGs."""
    import json

    from .cli._common import format_table

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    p = folder / "results.json"
    p.write_text(json.dumps(result, indent=2) + "\n")
    written.append(p)
    p = folder / "results.csv"
    p.write_text(to_csv(result))
    written.append(p)
    p = folder / "tables.md"
    p.write_text(markdown_report(result))
    written.append(p)
    p = folder / "tables.txt"
    p.write_text("\n\n".join(f"{t}\n{tab}" for t, tab in tables(result, format_table)) + "\n")
    written.append(p)
    if plots:
        written += write_plots(result, folder)
    return written


def markdown_report(result: dict[str, Any], plot_dir: str | None = None,
                    plot_prefix: str = "") -> str:
    """The tables as Markdown, with what was measured and how noisy the machine was."""
    meta = result["meta"]
    la0, la1 = meta["loadavg_before"], meta["loadavg_after"]
    lines = [
        f"Measured {meta['started']} – {meta['finished']} by `qatmig bench` on the shared "
        f"{meta['machine']} machine, Python {meta['python']}; load average {la0[0]:.2f} before, "
        f"{la1[0]:.2f} after (above ~1, other work competed for the two cores: absolute times "
        "are noisy, ratios within the run are the figure to read). "
        f"Guest: {meta['guest']['description']}; median of {meta['repeat']} repeat(s), "
        "repeats interleaved across implementations; every run ended `completed` with the "
        "destination RAM equal to the source byte for byte. CPU: " + meta["cpu_method"] + ". "
        "Throughput and pages/s: guest RAM ÷ wall time, the same formula for every "
        "implementation. Ratios: engine ÷ the QEMU speaking the same dialect.",
        "",
    ]
    for (title, tab) in tables(result, markdown_table):
        lines += [f"**{title}**", "", tab, ""]
    above = cells_above(result)
    if above:
        lines += ["Engine ÷ QEMU above 1.0× in this run (total CPU-s or wall time): "
                  + "; ".join(above) + ".", ""]
    elif any(c.get("ratios") for c in result["cells"]):
        lines += ["Engine ÷ QEMU at or below 1.0× in every cell of this run, total CPU-s and "
                  "wall time.", ""]
    scaling = scaling_markdown(result)
    if scaling:
        lines += [scaling, ""]
        lines += [prediction_markdown(result), ""]
    if plot_dir is not None:
        for bw in result["max_bandwidth"]:
            name = f"bench-{format_bandwidth(bw).replace('/', '_')}.png"
            if plot_prefix:
                name = f"{plot_prefix}-{name}"
            lines += [f"![{format_bandwidth(bw)}]({plot_dir}/{name})", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------ scaling model
@dataclass
class ScalingFit:
    """CPU-s per GiB of one end of one (implementation, method) as ``per_gib + per_channel·n``.

    ``per_gib`` is the work per byte (compression, copies, syscalls: it does not depend on the
    channel count); ``per_channel`` is what each extra channel adds per GiB (its thread, its
    socket, its share of the per-round SYNCs). ``residual`` is the largest relative error of
    the fit on the measured channel counts: the check of the model.
    """

    impl: str
    method: str
    side: str  # "send" | "recv"
    per_gib: float
    per_channel: float
    channels: list[int]
    measured: list[float]
    residual: float

    def predict(self, channels: int) -> float:
        return self.per_gib + self.per_channel * channels


def _fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    if len(set(xs)) < 2:
        return statistics.fmean(ys), 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def scaling_fits(result: dict[str, Any]) -> list[ScalingFit]:
    """Fit the model on the unthrottled cells of ``result`` (one fit per implementation,
    method and end), when at least two channel counts were measured."""
    cells = [cell_from_json(c) for c in result["cells"] if c["max_bandwidth"] == UNLIMITED]
    out = []
    for impl in [i["label"] for i in result["impls"]]:
        for method in result["methods"]:
            mine = sorted((c for c in cells if c.impl == impl and c.method == method),
                          key=lambda c: c.channels)
            if len({c.channels for c in mine}) < 2:
                continue
            gib = mine[0].size / (1 << 30)
            for side, attr in (("send", "src_cpu_s"), ("recv", "dst_cpu_s")):
                xs = [c.channels for c in mine]
                ys = [getattr(c, attr) / gib for c in mine]
                a, b = _fit(xs, ys)
                res = max(abs(a + b * x - y) / y for x, y in zip(xs, ys, strict=True) if y)
                out.append(ScalingFit(impl, method, side, a, b, xs, ys, res))
    return out


def predict_host(fits: Sequence[ScalingFit], impl: str, method: str, *, channels: int,
                 link_bytes_s: float, ratio: float, cores: int) -> dict[str, Any]:
    """The seed host from this machine's fits: raw (guest) GB/s, send and recv CPU %, and
    ``bound``, what limits the throughput (``send CPU``, ``recv CPU`` or ``link``).

    Each channel's thread compresses at ``1 / send CPU-s per byte`` at most (one core), the
    channels share ``cores``, and the wire carries ``raw / ratio`` at most ``link_bytes_s``:
    raw = min(link × ratio, min(channels, cores) / send CPU-s per byte, same for recv)."""
    f = {x.side: x for x in fits if x.impl == impl and x.method == method}
    send_s = f["send"].predict(channels) / (1 << 30)  # CPU-s per guest byte
    recv_s = f["recv"].predict(channels) / (1 << 30)
    par = min(channels, cores)
    limits = {"send CPU": par / send_s, "recv CPU": par / recv_s, "link": link_bytes_s * ratio}
    bound = min(limits, key=lambda k: limits[k])
    raw = limits[bound]
    return {"raw_gb_s": raw / 1e9, "wire_mbps": raw / ratio * 8 / 1e6,
            "send_cpu_percent": 100 * raw * send_s, "recv_cpu_percent": 100 * raw * recv_s,
            "bound": bound}


@dataclass(frozen=True)
class HostSpec:
    """A host to predict: multifd channels, the link in bytes/s and the cores both ends have."""

    channels: int = 8
    link_bytes_s: float = 1.25e9
    cores: int = 16

    def describe(self) -> str:
        return (f"{self.channels} channels, {format_bandwidth(int(self.link_bytes_s))} link, "
                f"{self.cores} cores per end")


#: The host of QEMU's QATzip document (docs/devel/migration/qatzip-compression.rst): 8 multifd
#: channels over a 10 Gbit/s link, a 16-vCPU guest on hosts with at least that many cores.
SEED_HOST = HostSpec()

#: That document's published figures per method: (throughput Mbit/s, send CPU %, recv CPU %).
#: qatzip ran on 4 QAT devices, which no software measurement here can predict.
SEED_FIGURES: dict[str, tuple[float, float, float]] = {
    "qatzip": (10467, 160, 360), "zstd": (8579, 810, 340), "none": (10848, 45, 85),
}


def parse_host(text: str) -> HostSpec:
    """``--predict-host`` as ``CHANNELS,LINK,CORES``, e.g. ``8,10Gbit,16`` (the seed's host)."""
    parts = split_list(text)
    try:
        channels, cores = int(parts[0]), int(parts[2])
        if len(parts) != 3 or channels < 1 or cores < 1:
            raise ValueError
        link = parse_bandwidth(parts[1])
    except (ValueError, IndexError, ParameterError):
        raise ParameterError(f"--predict-host {text!r}: expected CHANNELS,LINK,CORES with a "
                             "link in bits or bytes/s, e.g. 8,10Gbit,16 (the seed's host)") \
            from None
    if link == UNLIMITED:
        raise ParameterError(f"--predict-host {text!r}: the link must be a speed, not unlimited")
    return HostSpec(channels, float(link), cores)


def measured_ratio(result: dict[str, Any], impl: str, method: str) -> float | None:
    """Guest bytes ÷ wire bytes of ``impl``/``method`` (median over its cells), when the run
    counted the wire (``--count-wire``); None otherwise."""
    ratios = sorted(c["size"] / c["wire_bytes"] for c in result["cells"]
                    if c["impl"] == impl and c["method"] == method and c.get("wire_bytes"))
    return statistics.median(ratios) if ratios else None


def predictions(result: dict[str, Any], host: HostSpec = SEED_HOST) -> list[dict[str, Any]]:
    """:func:`predict_host` for every fitted (implementation, method) of ``result``.

    The wire's compression ratio comes from the run's counted wire bytes; without them the
    prediction assumes the link never binds (said in ``bound``)."""
    fits = scaling_fits(result)
    out = []
    for impl, method in dict.fromkeys((f.impl, f.method) for f in fits):
        ratio = measured_ratio(result, impl, method)
        assumed = ratio is None and method == "none"
        if assumed:
            ratio = 1.0  # no compression: exact for a guest without zero pages
        p = predict_host(fits, impl, method, channels=host.channels,
                         link_bytes_s=host.link_bytes_s if ratio else float("inf"),
                         ratio=ratio or 1.0, cores=host.cores)
        bound = p["bound"] if ratio else f"{p['bound']} (link not applied: no --count-wire)"
        out.append({"impl": impl, "method": method, **p, "ratio": ratio,
                    "ratio_assumed": assumed, "bound": bound,
                    "wire_mbps": p["wire_mbps"] if ratio else None,
                    "seed": SEED_FIGURES.get(method) if host == SEED_HOST else None})
    return out


def host_of(result: dict[str, Any]) -> HostSpec:
    """The host ``result`` is to be predicted for (``--predict-host``; the seed's by default)."""
    host = result.get("meta", {}).get("predict_host")
    return HostSpec(**host) if host else SEED_HOST


def prediction_markdown(result: dict[str, Any], host: HostSpec | None = None) -> str:
    host = host or host_of(result)
    rows = predictions(result, host)
    if not rows:
        return ""
    seed = host == SEED_HOST
    lines = [
        f"Predicted for {'the seed host (' if seed else 'a host with '}{host.describe()}"
        f"{')' if seed else ''} from the fits above: each channel's thread uses at most one "
        "core, the channels share the cores, and the wire carries guest bytes ÷ the "
        "compression ratio measured on this run's wire (`--count-wire`). `bound` = what "
        "limits the throughput."
        + (" `seed` = QEMU's published figures for that host (4 QAT devices for qatzip)."
           if seed else ""),
        "",
        "| implementation | method | wire ratio | bound | guest GB/s | wire Mbit/s | "
        "send CPU % | recv CPU % |" + (" seed Mbit/s | seed send CPU % | seed recv CPU % |"
                                        if seed else ""),
        "|---|---|---:|---|---:|---:|---:|---:|" + ("---:|---:|---:|" if seed else ""),
    ]
    for r in rows:
        ratio = (f"{r['ratio']:.2f}{' (assumed)' if r['ratio_assumed'] else ''}"
                 if r["ratio"] else "not counted")
        wire = f"{r['wire_mbps']:.0f}" if r["wire_mbps"] is not None else "-"
        line = (f"| {r['impl']} | {r['method']} | {ratio} | {r['bound']} | "
                f"{r['raw_gb_s']:.2f} | {wire} | {r['send_cpu_percent']:.0f} | "
                f"{r['recv_cpu_percent']:.0f} |")
        if seed:
            s = r["seed"]
            line += (f" {s[0]:.0f} | {s[1]:.0f} | {s[2]:.0f} |" if s else " - | - | - |")
        lines.append(line)
    return "\n".join(lines)


def scaling_markdown(result: dict[str, Any]) -> str:
    fits = scaling_fits(result)
    if not fits:
        return ""
    lines = [
        "Scaling model, fitted on the unthrottled cells above: CPU-s per GiB of each end = "
        "`per GiB + per channel × channels` (least squares over the channel counts measured; "
        "`worst error` = the largest relative miss of the fit on them).",
        "",
        "| implementation | method | end | per GiB (CPU-s) | per channel (CPU-s/GiB) | "
        "measured by channel count | worst error |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for f in fits:
        meas = ", ".join(f"{c}: {y:.2f}" for c, y in zip(f.channels, f.measured, strict=True))
        lines.append(f"| {f.impl} | {f.method} | {f.side} | {f.per_gib:.2f} | "
                     f"{f.per_channel:+.3f} | {meas} | {f.residual:.0%} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------ docs
#: What the figures of ``qatmig bench`` describe (docstamp: a change there marks them stale).
#: The engine both ends run and the harness that runs and measures them (engine/qemu); not
#: this module, which only renders raw results (``--from-json`` re-renders them any time).
MEASURED_CODE = (
    "engine/api.py", "engine/source.py", "engine/destination.py", "engine/transport.py",
    "engine/wire.py", "engine/mainstream.py", "engine/guest.py", "engine/codecs",
    "engine/ratelimit.py", "engine/stats.py", "engine/params.py", "engine/dialects.py",
    "engine/qemu",
)
DOCS_BLOCK = "bench"
DOCS_HEADING = "## Engine vs real QEMU, the seed's table (`qatmig bench`)"
PLOT_DIR = "perf"  # under docs/
#: Where --update-docs puts a block of that id when the doc has none yet.
DOCS_HEADINGS = {
    DOCS_BLOCK: DOCS_HEADING,
    "scaling": "## Scaling with the channel count (`qatmig bench --channels 1,2,4,8`)",
}


def _stamp() -> dict[str, str] | None:
    """The docs stamp of the measured code as the measurement starts (None outside a source
    checkout: an installed package has no docs to update)."""
    from . import docstamp

    try:
        return {**docstamp.stamp(MEASURED_CODE), "code": ",".join(MEASURED_CODE)}
    except (OSError, ValueError):
        return None


def _restamp(stamped: dict[str, str] | None, root: Path) -> dict[str, str] | None:
    """A stamp taken over another list of measured code (an older qatmig bench) is recomputed
    for :data:`MEASURED_CODE` as of its clean commit; a dirty or unknown commit stays as is
    (then the block says its code has changed)."""
    from . import docstamp

    if not stamped or stamped.get("code") == ",".join(MEASURED_CODE):
        return stamped
    commit = stamped.get("commit", "")
    if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        return stamped
    try:
        sha = docstamp.code_digest_at(commit, MEASURED_CODE, root)
    except (OSError, ValueError, subprocess.SubprocessError):
        return stamped
    return {**stamped, "code_sha": sha, "code": ",".join(MEASURED_CODE)}


def update_docs(result: dict[str, Any], plots: Sequence[Path], command: str,
                root: Path | None = None, block_id: str = DOCS_BLOCK) -> Path:
    """Write the tables into ``docs/performance.md`` as the stamped block ``block_id`` (see
    :mod:`qatmig_engine.docstamp`) and copy the plots to ``docs/perf/<block_id>-*.png``;
    returns the doc."""
    from . import docstamp

    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", block_id):
        raise ParameterError(f"--docs-id {block_id!r}: lower-case letters, digits and dashes")
    root = root or docstamp.repo_root()
    doc = root / "docs" / "performance.md"
    if not doc.is_file():
        raise ParameterError(f"--update-docs: {doc} not found (run it in a source checkout)")
    (root / "docs" / PLOT_DIR).mkdir(exist_ok=True)
    for p in plots:
        shutil.copyfile(p, root / "docs" / PLOT_DIR / f"{block_id}-{p.name}")
    body = markdown_report(result, plot_dir=PLOT_DIR if plots else None, plot_prefix=block_id)
    heading = DOCS_HEADINGS.get(block_id, f"## `qatmig bench` ({block_id})")
    docstamp.write_block(doc, block_id, body, script=command, code=MEASURED_CODE, root=root,
                         heading=heading, stamped=_restamp(result["meta"].get("stamp"), root))
    return doc
