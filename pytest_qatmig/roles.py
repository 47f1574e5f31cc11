"""Roles: an implementation as a *destination* and a *source*, and pairs built from them.

The suite migrates between two roles that need not be of the same implementation (the cross
matrix: impl -> impl, impl -> peer, peer -> impl). It owns everything that decides the verdict:

* it writes the source's RAM file (a copy of the guest image) and creates the destination's;
* it picks a fresh VM uuid per migration and gives it to both ends;
* every byte between the two ends passes through the validating tap
  (``qatmig_engine.tap.TapProxy`` with a ``TapChecker``); any deviation is reported;
* it reads the destination's RAM file itself and compares its sha256 with the source's; an
  end's own ``verified`` is kept as ``reported_verified`` and never trusted.

The role contract an implementation provides (docs/plugin.md, "Implementations"):

``destination(spec, ctx) -> Incoming``
    start listening on ``127.0.0.1`` (any free port) with the migration parameters ``spec``,
    RAM block ``ctx.ramblock`` of ``ctx.ram_size`` bytes in the file ``ctx.ram``, VM uuid
    ``ctx.uuid``; return once it listens. ``Incoming.address`` is ``(host, port)``,
    ``Incoming.wait(timeout)`` the destination's result mapping once it ended, ``close()``
    releases everything; ``Incoming.machine_type`` (optional) names the exact machine type a
    source must announce (a real QEMU destination wants its own).
``source(spec, ctx, address) -> Mapping``
    migrate the RAM in the file ``ctx.ram`` (written by the suite, never to be modified) to
    ``address``; return the source's result mapping when done (completed or failed).
    With ``ctx.dirty_rate`` > 0 (capability ``dirty-rate``) a workload dirties that many
    pages/s of the source's guest during precopy (never the file ``ctx.ram``: a private
    copy); once the migration ended the source writes the RAM as it was when the guest
    stopped to ``ctx.final_image``: the destination must hold exactly that.
``ctx.extra_ramblocks`` (capability ``ramblocks``)
    further RAM blocks after ``ctx.ramblock``, in the order the source lists them, each a
    :class:`RAMBlockFile` (name, file, size): the source sends them as it sends the first
    (their files are never to be modified; a workload dirties the first block only), the
    destination receives each into its file (which exists with the block's size).
``validate(spec)`` (optional)
    raise ``ValueError`` for parameters the implementation refuses, before anything starts.

This module imports nothing heavy at import time.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import threading
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .adapters import METHODS, PairSpec, guest_path
from .devices import QatDevice
from .results import MigrationResult

#: Directions of the cross matrix, as they appear in test ids.
DIRECTIONS = ("impl-to-impl", "impl-to-peer", "peer-to-impl")
RAMBLOCK = "pc.ram"
#: Seconds a destination gets to finish once its source has failed.
FAILED_SOURCE_GRACE = 10.0
#: Seconds beyond the idle timeout a destination gets to finish after its source completed.
DESTINATION_GRACE = 30.0
#: The statistics a result carries (MigrationResult.REQUIRED), taken from the end that
#: measures them: the source for everything but the destination's CPU.
#: The result key of an end's process measurement: ``{"cpu_s", "t_start", "t_end", "how"}``.
MEASURE_KEY = "process_measure"
CPU_BY_SUITE = ("suite: utime+stime of each end's process (and its children) over the "
                "migration / wall time from the migration's start to the later end")
CPU_BY_IMPL = "implementation: its own report (its ends are not processes the suite sees)"
_SOURCE_FIELDS = (
    "total_time_ms", "downtime_ms", "throughput_mbps", "pages_per_second",
    "transferred_bytes", "normal_pages", "zero_pages", "send_cpu_percent",
)


@dataclass(frozen=True)
class RAMBlockFile:
    """A RAM block whose RAM is a file: QEMU's ``idstr``, the file and its ``used_length``."""

    name: str
    path: Path
    size: int


@dataclass(frozen=True)
class RoleContext:
    """Where one end of a migration runs: its RAM file and what the suite decided for it."""

    ram: Path
    ram_size: int
    uuid: str
    workdir: Path
    timeout: float = 120.0
    device: QatDevice | None = None
    ramblock: str = RAMBLOCK
    #: source only: the machine type the destination wants announced (None = any).
    machine_type: str | None = None
    #: a performance migration: an end that runs as a process adds ``process_measure``
    #: (:data:`MEASURE_KEY`) to its result: the CPU seconds of its process over the migration
    #: and when that window started and ended (``time.monotonic()``).
    measure: bool = False
    #: source only: pages/s a workload dirties during precopy (0 = a static guest); the
    #: source then writes its RAM as it was at stop time to ``final_image``.
    dirty_rate: int = 0
    final_image: Path | None = None
    #: further RAM blocks after ``ramblock`` (capability ``ramblocks``), in the source's order.
    extra_ramblocks: tuple[RAMBlockFile, ...] = ()


@runtime_checkable
class Incoming(Protocol):
    """A destination that listens (returned by ``destination()``)."""

    address: tuple[str, int]

    def wait(self, timeout: float) -> Mapping[str, Any]:
        """The destination's result once its migration ended (completed or failed)."""
        ...

    def close(self) -> None:
        """Stop it (if still running) and release every thread, process, socket and file."""
        ...


@runtime_checkable
class RoleImplementation(Protocol):
    """An implementation that provides the two roles (see the module docstring)."""

    name: str

    def capabilities(self) -> frozenset[str]: ...

    def destination(self, spec: PairSpec, ctx: RoleContext) -> Incoming: ...

    def source(
        self, spec: PairSpec, ctx: RoleContext, address: tuple[str, int]
    ) -> Mapping[str, Any]: ...


def has_roles(impl: Any) -> bool:
    return callable(getattr(impl, "destination", None)) and callable(
        getattr(impl, "source", None)
    )


class Unsupported(Exception):
    """This pair cannot run with these ends (a method or dialect one of them lacks)."""


def common_dialect(spec: PairSpec, *ends: Any) -> str:
    """The dialect both ends speak: ``spec.dialect`` if given, else the newest they share."""
    caps = [frozenset(e.capabilities()) for e in ends]
    if spec.dialect is not None:
        missing = [getattr(e, "name", "?") for e, c in zip(ends, caps, strict=True)
                   if f"dialect:{spec.dialect}" not in c]
        if missing:
            raise Unsupported(f"{', '.join(missing)} lacks dialect:{spec.dialect}")
        return spec.dialect
    from qatmig_engine.dialects import DIALECTS  # oldest to newest

    for d in reversed(list(DIALECTS)):
        if all(f"dialect:{d}" in c for c in caps):
            return d
    raise Unsupported("the two ends share no wire dialect")


# ------------------------------------------------------------------------------ digests
_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGEST_LOCK = threading.Lock()


_CHUNK = 1 << 22


def data_extents(f: Any, size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the data in the open file ``f`` (SEEK_DATA/SEEK_HOLE): the rest
    is holes, zero without being read. The whole file when the file system cannot tell."""
    fd = f.fileno()
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if start >= size:
                break
            out.append((start, end))
            pos = end
    except (OSError, AttributeError):
        return [(0, size)]
    return out


def _pieces(f: Any, size: int) -> Any:
    """The file's bytes in order as (offset, bytes or None for a zero run) pieces."""
    pos = 0
    for start, end in data_extents(f, size):
        if start > pos:
            yield pos, start - pos, None
        f.seek(start)
        o = start
        while o < end:
            chunk = f.read(min(_CHUNK, end - o))
            if not chunk:
                break
            yield o, len(chunk), chunk
            o += len(chunk)
        pos = end
    if pos < size:
        yield pos, size - pos, None


def file_digest(path: Path, *, cache: bool = False) -> str:
    """sha256 of a file (``cache``: remembered per path, size and mtime, for guest images).
    Holes of a sparse file are hashed as the zeros they are, without being read."""
    st = os.stat(path)
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    if cache:
        with _DIGEST_LOCK:
            if key in _DIGESTS:
                return _DIGESTS[key]
    h = hashlib.sha256()
    zero = bytes(_CHUNK)
    with open(path, "rb") as f:
        for _, n, chunk in _pieces(f, st.st_size):
            if chunk is not None:
                h.update(chunk)
                continue
            while n > 0:
                h.update(zero[: min(n, _CHUNK)])
                n -= _CHUNK
    digest = h.hexdigest()
    if cache:
        with _DIGEST_LOCK:
            _DIGESTS[key] = digest
    return digest


def _union(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(a + b):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def ram_mismatch(expected: Path, got: Path, page: int = 4096) -> dict[str, Any]:
    """Where two RAM files differ: the first differing page's offset and how many differ.
    Where both files have a hole they are equal (a sparse guest is not read in full)."""
    first = None
    count = 0
    sa, sb = os.path.getsize(expected), os.path.getsize(got)
    size = max(sa, sb)
    with open(expected, "rb") as a, open(got, "rb") as b:
        for start, end in _union(data_extents(a, sa), data_extents(b, sb)):
            start -= start % page
            a.seek(start)
            b.seek(start)
            o = start
            while o < end:
                n = min(_CHUNK, end - o + (-(end - o)) % page)
                ca, cb = a.read(n), b.read(n)
                if ca != cb:
                    for p in range(0, max(len(ca), len(cb)), page):
                        if ca[p : p + page] != cb[p : p + page]:
                            count += 1
                            if first is None:
                                first = o + p
                o += n
        if sa != sb:  # the longer file's tail differs from nothing
            tail = (size - min(sa, sb) + page - 1) // page
            count += tail
            if first is None:
                first = min(sa, sb)
    return {"pages_differing": count, "first_offset": None if first is None else hex(first)}


class SparseImage:
    """A RAM image file the judge slices pages from (``img[a:b]``); pages in holes are
    returned as zeros without being read (a 4 GiB sparse guest stays unread)."""

    def __init__(self, path: Path, size: int, page: int = 4096) -> None:
        import mmap

        self.page = page
        self.zero = bytes(page)
        with open(path, "rb") as f:
            self.data = bytearray(-(-size // page))
            for start, end in data_extents(f, size):
                first, last = start // page, -(-end // page)
                self.data[first:last] = b"\x01" * (last - first)
            self.mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else None

    def __getitem__(self, key: slice) -> bytes:
        start = key.start or 0
        if key.stop - start == self.page and not start % self.page \
                and not self.data[start // self.page]:
            return self.zero
        return self.mm[key] if self.mm is not None else b""

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()


def same_content(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (holes in both are not read)."""
    return os.path.getsize(a) == os.path.getsize(b) and not ram_mismatch(a, b)["pages_differing"]


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy a RAM image keeping its holes (a 4 GiB sparse guest stays a few MiB on disk)."""
    size = os.path.getsize(src)
    with open(src, "rb") as f, open(dst, "wb") as out:
        for off, _, chunk in _pieces(f, size):
            if chunk is not None:
                out.seek(off)
                out.write(chunk)
        out.truncate(size)


def guest_digest(blocks: list[tuple[str, str | None]]) -> str | None:
    """The digest of a guest: its one block's sha256, or for several blocks the sha256 of
    ``name<TAB>sha256`` lines in the source's order (None if a block has none)."""
    if any(d is None for _, d in blocks):
        return None
    if len(blocks) == 1:
        return blocks[0][1]
    return hashlib.sha256("".join(f"{n}\t{d}\n" for n, d in blocks).encode()).hexdigest()


def _destination_file(path: Path, size: int, fill: int | None) -> None:
    """The destination's RAM file: ``size`` zero bytes (sparse), or ``fill`` bytes."""
    with open(path, "wb") as f:
        if fill:
            chunk = bytes([fill]) * min(size, 1 << 22)
            for pos in range(0, size, len(chunk)):
                f.write(chunk[: size - pos])
        f.truncate(size)


class _Block:
    """One RAM block of a migration the suite judges: the guest's file, the two ends' copies
    and, once judged, what each holds."""

    def __init__(self, name: str, image: Path, size: int, src: Path, dst: Path) -> None:
        self.name, self.image, self.size, self.src, self.dst = name, image, size, src, dst
        self.want = ""
        #: what the destination must hold when it is not the image (a workload's final RAM)
        self.expected: Path | None = None
        self.expected_digest: str | None = None
        self.src_after: str | None = None
        self.got: str | None = None
        self.mismatch: dict[str, Any] | None = None

    @property
    def must_hold(self) -> str:
        """The digest the destination's copy must have: the final RAM's, else the image's."""
        return self.expected_digest or self.want

    def judge_files(self) -> None:
        # Equal files take the image's digest without hashing them again (a sparse 4 GiB
        # guest is compared over its data only).
        if self.src.exists():
            self.src_after = (self.want if same_content(self.image, self.src)
                              else file_digest(self.src))
        expected = self.expected or self.image
        if self.dst.exists():
            self.got = (self.must_hold if same_content(expected, self.dst)
                        else file_digest(self.dst))
            if self.got != self.must_hold:
                self.mismatch = ram_mismatch(expected, self.dst)


def _mismatch(blocks: list[_Block]) -> dict[str, Any] | None:
    """``ram_mismatch`` of the result: the one block's, or with several blocks the first
    differing block's figures, its name and every differing block's."""
    differing = {b.name: b.mismatch for b in blocks if b.mismatch is not None}
    if not differing or len(blocks) == 1:
        return next(iter(differing.values()), None)
    name, first = next(iter(differing.items()))
    return {**first, "ramblock": name,
            "pages_differing": sum(int(m["pages_differing"]) for m in differing.values()),
            "per_ramblock": differing}


# ------------------------------------------------------------------------------ the pair
class RolePair:
    """A source of ``src`` and a destination of ``dst`` (possibly different implementations),
    judged by the suite: RAM written and read by the suite, every byte through the tap."""

    def __init__(
        self, src: Any, dst: Any, spec: PairSpec, *, workdir: Path,
        device: QatDevice | None = None, direction: str = "impl-to-impl",
        judge: bool = True, measure: bool = False,
    ) -> None:
        if spec.level is not None and spec.compression not in ("zlib", "zstd", "qatzip"):
            raise ValueError(
                f"level={spec.level} given but multifd-compression {spec.compression!r} has "
                "no level (zlib, zstd and qatzip do)"
            )
        if judge and any(spec.options.get(k) for k in ("tls_creds", "tls-creds")):
            raise ValueError(
                "tls_creds: the suite judges every byte between the two ends and cannot read "
                "TLS channels; migrate over TLS with qatmig_engine.api or `qatmig listen/send "
                "--tls-creds` (docs/engine.md, TLS), whose own tests are tests/test_tls*.py")
        self.src = src
        self.dst = dst
        self.workdir = workdir
        self.device = device
        self.direction = direction
        self.judge = judge
        self.measure = measure
        # What an end cannot do skips (Unsupported); what it refuses is a ValueError.
        missing = []
        for role, end in (("source", src), ("destination", dst)):
            caps = frozenset(end.capabilities())
            if spec.compression in METHODS and spec.compression not in caps:
                missing.append(f"{role} {getattr(end, 'name', '?')} lacks {spec.compression}")
            if spec.max_bandwidth and "max-bandwidth" not in caps and role == "source":
                missing.append(f"source {getattr(end, 'name', '?')} lacks max-bandwidth")
        if missing:
            raise Unsupported("; ".join(missing))
        self.spec = replace(spec, dialect=common_dialect(spec, src, dst))
        for end in {id(src): src, id(dst): dst}.values():
            check = getattr(end, "validate", None)
            if callable(check):
                check(self.spec)
        self.source = {"role": "source", "implementation": getattr(src, "name", "?")}
        self.destination = {"role": "destination", "implementation": getattr(dst, "name", "?")}
        self.results: list[MigrationResult] = []
        self.reports: list[Any] = []

    def migrate(self, guest: Any, *, timeout: float = 120.0,
                destination_fill: int | None = None, dirty_rate: int = 0,
                cut: Any = None) -> MigrationResult:
        """Migrate ``guest`` source -> tap -> destination; the verdict is the suite's.

        ``guest``: a guest image (its one RAM block, ``pc.ram``), or a ``GuestImage`` with
        ``extra_ramblocks`` (both ends need capability ``ramblocks``): every block is written,
        compared and judged on its own. ``destination_fill``: the destination's RAM files
        start filled with this byte instead of zeros (a destination that skips zero pages then
        keeps stale bytes, as on a reused host). ``dirty_rate``: pages/s the source's workload
        dirties during precopy; the destination must then equal the source's RAM at stop time
        (its ``final_image``, of the first block), and the result's
        ``workload_pages_changed`` says how many pages that differs from the image in (0 =
        the workload never wrote: nothing was tested). ``cut``: a
        :class:`qatmig_engine.tap.ChannelCut` -- the tap kills one connection mid-run (the
        result's ``channel_cut`` says which, None if it never carried enough); the tap is in
        the path then even without the judge."""
        from qatmig_engine.tap import TapChecker, TapProxy

        image = guest_path(guest, several_blocks=True)
        size = image.stat().st_size
        n = len(self.results)
        blocks = [_Block(RAMBLOCK, image, size, self.workdir / f"src-{n}.ram",
                         self.workdir / f"dst-{n}.ram")]
        for i, b in enumerate(getattr(guest, "extra_ramblocks", ())):
            blocks.append(_Block(b.name, Path(b.path), int(b.size),
                                 self.workdir / f"src-{n}.block{i + 1}.ram",
                                 self.workdir / f"dst-{n}.block{i + 1}.ram"))
        if len(blocks) > 1:
            for role, end in (("source", self.src), ("destination", self.dst)):
                if "ramblocks" not in frozenset(end.capabilities()):
                    raise Unsupported(
                        f"{role} {getattr(end, 'name', '?')} lacks ramblocks (a guest of "
                        f"{len(blocks)} RAM blocks; exec: --add-ramblock NAME=FILE)")
        first = blocks[0]
        src_dir = self.workdir / f"src-{n}"
        dst_dir = self.workdir / f"dst-{n}"
        final_ram = self.workdir / f"final-{n}.ram" if dirty_rate else None
        if dirty_rate and "dirty-rate" not in frozenset(self.src.capabilities()):
            raise Unsupported(f"source {getattr(self.src, 'name', '?')} lacks dirty-rate (a "
                              "workload dirtying its guest during precopy)")
        vm_uuid = str(uuidlib.uuid4())
        for b in blocks:
            b.want = file_digest(b.image, cache=True)
        incoming: Any = None
        proxy: Any = None
        report: Any = None
        src_res: Mapping[str, Any] = {}
        dst_res: Mapping[str, Any] = {}
        errors: list[str] = []
        fw_before: int | None = None
        views: dict[str, SparseImage] = {}
        changed: int | None = None
        try:
            for b in blocks:
                sparse_copy(b.image, b.src)
                _destination_file(b.dst, b.size, destination_fill)
            src_dir.mkdir()
            dst_dir.mkdir()
            extra_dst = tuple(RAMBlockFile(b.name, b.dst, b.size) for b in blocks[1:])
            extra_src = tuple(RAMBlockFile(b.name, b.src, b.size) for b in blocks[1:])
            dctx = RoleContext(ram=first.dst, ram_size=size, uuid=vm_uuid, workdir=dst_dir,
                               timeout=timeout, device=self.device, measure=self.measure,
                               extra_ramblocks=extra_dst)
            incoming = self.dst.destination(self.spec, dctx)
            address = tuple(incoming.address)
            fw_before = self._fw_requests()
            if self.judge or cut is not None:
                from qatmig_engine.judge.expect import Expectations

                checker = None
                if self.judge:
                    # On a ready QAT device the source's library cuts each qzCompress call
                    # into 64 KiB requests, one gzip-ext member each (qatzip.md §1.2): QEMU's
                    # layout there.
                    hw = (self.spec.compression == "qatzip" and self.device is not None
                          and bool(getattr(self.device, "hw_ready", False)))
                    # The guest's layout: its blocks, and (blocks no workload writes) their
                    # bytes, which the last copy of every page must equal (holes read as
                    # zeros, unread).
                    for b in blocks:
                        if not (dirty_rate and b is first):
                            views[b.name] = SparseImage(b.image, b.size)
                    checker = TapChecker(
                        Expectations(qatzip_hw_chunks=hw,
                                     ramblocks={b.name: b.size for b in blocks},
                                     other_ramblocks=bool(getattr(self.src, "other_ramblocks",
                                                                  False))),
                        dialect=self.spec.dialect, method=self.spec.compression,
                        channels=self.spec.channels, uuid=vm_uuid, level=self.spec.level,
                        source=views or None)
                proxy = TapProxy(("127.0.0.1", 0), (address[0], int(address[1])), checker,
                                 timeout=timeout, cut=cut)
                address = ("127.0.0.1", proxy.start())
            sctx = RoleContext(ram=first.src, ram_size=size, uuid=vm_uuid, workdir=src_dir,
                               timeout=timeout, device=self.device,
                               machine_type=getattr(incoming, "machine_type", None),
                               measure=self.measure,
                               dirty_rate=dirty_rate, final_image=final_ram,
                               extra_ramblocks=extra_src)
            try:
                src_res = dict(self.src.source(self.spec, sctx, (address[0], int(address[1]))))
            except Unsupported:
                raise
            except Exception as exc:  # an end that crashes is a failed migration, not a hang
                src_res = {"status": "failed", "error": f"source raised {exc!r}"}
            # A source that failed may never have connected: do not wait out the
            # destination's idle timeout for channels that will not come.
            src_ok = src_res.get("status") == "completed"
            try:
                dst_res = dict(incoming.wait(timeout + DESTINATION_GRACE if src_ok
                                             else FAILED_SOURCE_GRACE))
            except Exception as exc:
                dst_res = {"status": "failed", "error": f"destination raised {exc!r}"}
            if proxy is not None:
                if not src_ok:
                    proxy.close()  # nothing more will come; do not wait for connections
                try:
                    report = proxy.wait(timeout if src_ok else FAILED_SOURCE_GRACE)
                except Exception as exc:
                    errors.append(f"tap: {exc}")
        finally:
            if incoming is not None:
                incoming.close()
            if proxy is not None:
                proxy.close()
            for view in views.values():
                view.close()
            try:
                if final_ram is not None:
                    if final_ram.exists() and final_ram.stat().st_size == size:
                        first.expected = final_ram
                        first.expected_digest = file_digest(final_ram)
                        changed = ram_mismatch(image, final_ram)["pages_differing"]
                    else:
                        errors.append(f"the source wrote no final RAM image of {size} bytes "
                                      "(its RAM at stop time; exec: send --final-image)")
                for b in blocks:
                    b.judge_files()
            finally:
                for b in blocks:
                    b.src.unlink(missing_ok=True)
                    b.dst.unlink(missing_ok=True)
                if final_ram is not None:
                    final_ram.unlink(missing_ok=True)
                for d in (src_dir, dst_dir):
                    shutil.rmtree(d, ignore_errors=True)
        if report is not None:
            self.reports.append(report)
            errors += [str(e) for e in report.errors]
        want = guest_digest([(b.name, b.want) for b in blocks])
        final = (guest_digest([(b.name, b.must_hold) for b in blocks])
                 if first.expected_digest is not None else None)
        got = guest_digest([(b.name, b.got) for b in blocks])
        src_after = guest_digest([(b.name, b.src_after) for b in blocks])
        result = self._result(src_res, dst_res, want, got, src_after, errors, report,
                              final=final)
        if final_ram is not None:
            result = MigrationResult({**result, "dirty_rate": dirty_rate,
                                      "workload_pages_changed": changed})
        mismatch = _mismatch(blocks)
        if mismatch is not None:
            result = MigrationResult({**result, "ram_mismatch": mismatch})
        if len(blocks) > 1:
            result = MigrationResult({**result, "ramblocks": {
                b.name: {"size": b.size, "source_digest": b.must_hold,
                         "destination_digest": b.got, "source_unchanged": b.src_after == b.want}
                for b in blocks}})
        if cut is not None:
            result = MigrationResult({**result, "channel_cut": proxy.cut_done if proxy else None})
        if self._fw_counted():
            fw_after = self._fw_requests()
            result = MigrationResult({**result, "qat_fw_requests": None if (
                fw_before is None or fw_after is None) else fw_after - fw_before})
        self.results.append(result)
        return result

    def _fw_counted(self) -> bool:
        """A qatzip migration on a worker that owns a ready device: count its firmware
        requests (pytest_qatmig.qat_evidence)."""
        d = self.device
        return (self.spec.compression == "qatzip" and d is not None
                and bool(getattr(d, "hw_ready", False)))

    def _fw_requests(self) -> int | None:
        if not self._fw_counted():
            return None
        from .qat_evidence import fw_requests

        assert self.device is not None
        return fw_requests(self.device.bdf, self.device.sysfs_root or "/sys")

    def _result(
        self, src: Mapping[str, Any], dst: Mapping[str, Any], want: str, got: str | None,
        src_after: str | None, wire_errors: list[str], report: Any, final: str | None = None,
    ) -> MigrationResult:
        """``final``: digest of the source's RAM at stop time (a guest that ran), which the
        destination must equal instead of the image."""
        both = src.get("status") == "completed" and dst.get("status") == "completed"
        # The source's own fields first (an implementation may report more than the
        # required ones), then what only the destination measures, then the suite's verdict.
        fields: dict[str, Any] = {k: v for k, v in src.items() if not isinstance(v, dict)}
        for k in _SOURCE_FIELDS:
            fields.setdefault(k, None)
        fields["recv_cpu_percent"] = dst.get("recv_cpu_percent")
        if self.measure:
            fields.update(process_cpu(src, dst))
        errs = [f"{side}: {r.get('error')}" for side, r in (("source", src), ("destination", dst))
                if r.get("status") != "completed"]
        fields.update(
            status="completed" if both else "failed",
            error="; ".join(errs) or None,
            verified=bool(both and got == (final or want) and src_after == want),
            reported_verified={"source": src.get("verified"), "destination": dst.get("verified")},
            source_digest=final or want,
            destination_digest=got,
            source_unchanged=src_after == want,
            direction=self.direction,
            source_implementation=getattr(self.src, "name", "?"),
            destination_implementation=getattr(self.dst, "name", "?"),
            multifd_channels=self.spec.channels,
            multifd_compression=self.spec.compression,
            compression_level=self.spec.level,
            dialect=self.spec.dialect,
            source_result=dict(src),
            destination_result=dict(dst),
            wire_errors=wire_errors,
            wire=report.to_json() if report is not None else None,
        )
        return MigrationResult(fields)

    def close(self) -> None:
        # migrate() closes both ends, the tap and the RAM files before returning.
        pass


def process_cpu(src: Mapping[str, Any], dst: Mapping[str, Any]) -> dict[str, Any]:
    """Send/recv CPU % measured by the suite when both ends ran as processes it measured
    (each end's ``process_measure``), the same way for every implementation: CPU seconds of
    the end's process over the migration / the wall time from the migration's start to the
    later end. The ends' own figures are kept as ``reported_send_cpu_percent`` and
    ``reported_recv_cpu_percent``. Otherwise the ends' reports stay, and say so."""
    ms, md = src.get(MEASURE_KEY), dst.get(MEASURE_KEY)
    out: dict[str, Any] = {"reported_send_cpu_percent": src.get("send_cpu_percent"),
                           "reported_recv_cpu_percent": dst.get("recv_cpu_percent")}
    if not (isinstance(ms, Mapping) and isinstance(md, Mapping)):
        out["cpu_measured_by"] = CPU_BY_IMPL
        return out
    try:
        wall = max(float(ms["t_end"]), float(md["t_end"])) - float(ms["t_start"])
        send, recv = float(ms["cpu_s"]), float(md["cpu_s"])
    except (KeyError, TypeError, ValueError):
        out["cpu_measured_by"] = CPU_BY_IMPL
        return out
    wall = max(wall, 1e-6)
    out.update(send_cpu_percent=round(100 * send / wall, 1),
               recv_cpu_percent=round(100 * recv / wall, 1),
               send_cpu_seconds=round(send, 4), recv_cpu_seconds=round(recv, 4),
               measured_wall_ms=round(wall * 1000, 1),
               cpu_measured_by=f"{CPU_BY_SUITE} (source: {ms.get('how')}; destination: "
                               f"{md.get('how')})")
    return out


class RolesAsPair:
    """``pair()`` of a roles implementation: its own source to its own destination."""

    def __init__(self, impl: Any) -> None:
        self.impl = impl

    def __call__(self, spec: PairSpec, *, device: QatDevice, workdir: Path) -> RolePair:
        return RolePair(self.impl, self.impl, spec, workdir=workdir, device=device)
