"""Public entry points of the engine: a loopback migration, and each end on its own.

* :func:`migrate_loopback` -- source and destination in one process over 127.0.0.1; returns
  one :class:`~qatmig_engine.stats.MigrationStats` with both sides' counters, ``downtime_ms``
  (guest stopped -> destination complete) and ``verified`` (destination RAM == source RAM,
  compared byte for byte).
* :func:`listen` -- serve one incoming migration (``qatmig listen``), RAM of the ``ramblock``
  block in a file.
* :func:`send` -- migrate a guest image to a listening destination (``qatmig send``).

All three return stats whose ``status`` is ``completed`` or ``failed`` (with ``error``); they
raise only for bad arguments (:class:`~qatmig_engine.errors.ParameterError`) before any
connection is made. Nothing here waits longer than ``timeout`` seconds of silence.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import transport
from .destination import Destination
from .errors import ChannelClosed, ParameterError
from .guest import (
    DEFAULT_RAMBLOCK,
    GuestMemory,
    RAMBlock,
    fill_deterministic,
    fill_stale,
    write_block,
)
from .params import MigrationParameters
from .source import DEFAULT_MAX_ITERS, Source
from .stats import MigrationStats
from .workload import Workload

__all__ = [
    "DEFAULT_RAMBLOCK",
    "default_guest",
    "listen",
    "migrate_loopback",
    "send",
]

Progress = Callable[[int], None]
#: Further RAM blocks after the first: ``(name, file)`` pairs, in the order the source lists
#: them (``--add-ramblock NAME=FILE``).
ExtraRAMBlocks = Sequence[tuple[str, "str | os.PathLike[str]"]]


def default_guest(
    size: int, *, corpus: str = "auto", ramblock: str = DEFAULT_RAMBLOCK,
    mode: str = "r", zero_ratio: float = 0.0,
) -> tuple[GuestMemory, str]:
    """The default source guest of ``size`` bytes and the name of its content.

    ``corpus`` ``"filler"``: a quick deterministic mixed-content filler in anonymous memory
    (about 20% zero pages; no cache, for tests). Anything else (``"stand-in"``, ``"silesia"``,
    ``"auto"``, a directory): the cached Silesia guest image of
    :func:`qatmig_engine.silesia.cached_guest_image`, mapped read-only (copy-on-write with a
    workload); its corpus name is reported.
    """
    if corpus == "filler":
        g = GuestMemory([RAMBlock.anonymous(ramblock, size)])
        fill_deterministic(g.blocks[0])
        return g, "filler"
    from .silesia import cached_guest_image, read_image_info

    path = cached_guest_image(size, corpus=corpus, zero_ratio=zero_ratio)
    name = read_image_info(path).corpus
    return GuestMemory.from_image(path, size, name=ramblock, mode=mode), name


def _source_guest(
    guest_image: str | os.PathLike[str] | None, guest_size: int | None, dirty_rate: int,
    ramblock: str, corpus: str, extra_ramblocks: ExtraRAMBlocks = (),
) -> tuple[GuestMemory, str]:
    guest, name = _first_source_block(guest_image, guest_size, dirty_rate, ramblock, corpus)
    try:
        for extra_name, path in extra_ramblocks:
            # Never modified either: the workload dirties the first block only.
            guest.add(RAMBlock.from_file(extra_name, path, None, mode="r"))
    except BaseException:
        guest.close()
        raise
    return guest, name


def _destination_extra_blocks(extra_ramblocks: ExtraRAMBlocks) -> list[RAMBlock]:
    """The destination's further blocks: files that exist with the block's size (their bytes
    are the RAM before the migration, as a ``memory-backend-file`` that already exists)."""
    blocks: list[RAMBlock] = []
    try:
        for name, path in extra_ramblocks:
            try:
                size = os.path.getsize(path)
            except OSError as exc:
                raise ParameterError(
                    f"--add-ramblock {name}={os.fspath(path)}: {exc.strerror or exc}; a "
                    "destination's further block is an existing file of the block's size "
                    f"(e.g. truncate -s 256K {os.fspath(path)})") from None
            if size == 0:
                raise ParameterError(
                    f"--add-ramblock {name}={os.fspath(path)}: the file is empty; give it the "
                    f"block's size first (e.g. truncate -s 256K {os.fspath(path)})")
            blocks.append(RAMBlock.from_file(name, path, size, mode="w", keep_content=True))
    except BaseException:
        for b in blocks:
            b.close()
        raise
    return blocks


def _first_source_block(
    guest_image: str | os.PathLike[str] | None, guest_size: int | None, dirty_rate: int,
    ramblock: str, corpus: str,
) -> tuple[GuestMemory, str]:
    # A workload writes to the source guest: map the image copy-on-write so the file is
    # never modified; without one, read-only.
    mode = "c" if dirty_rate else "r"
    if guest_image is not None:
        g = GuestMemory.from_image(guest_image, guest_size, name=ramblock, mode=mode)
        name = Path(guest_image).name
        if Path(f"{guest_image}.json").is_file():  # a guest image built by qatmig guest build
            try:
                from .silesia import read_image_info

                name = read_image_info(guest_image).corpus
            except Exception:  # the sidecar only improves the label
                pass
        return g, name
    if guest_size is None:
        raise ParameterError("give a guest size (--guest-size) or a guest image (--guest-image)")
    return default_guest(guest_size, corpus=corpus, ramblock=ramblock, mode=mode)


def migrate_loopback(
    guest_size: int | None = None,
    params: MigrationParameters | None = None,
    *,
    guest_image: str | os.PathLike[str] | None = None,
    guest: GuestMemory | None = None,
    destination_image: str | os.PathLike[str] | None = None,
    dirty_rate: int = 0,
    dirty_pattern: str = "random",
    hot_pages: int | None = None,
    timeout: float = transport.DEFAULT_TIMEOUT,
    progress: Progress | None = None,
    ramblock: str = DEFAULT_RAMBLOCK,
    uuid: str | None = None,
    max_iters: int = DEFAULT_MAX_ITERS,
    machine_type: str | None = None,
    corpus: str = "auto",
    verify: bool = True,
    destination_prealloc: bool = False,
    destination_stale: bool = False,
) -> MigrationStats:
    """Migrate a guest over 127.0.0.1 with source and destination in this process.

    The source guest is ``guest`` (caller-owned), else ``guest_image`` (mapped read-only, or
    copy-on-write under a workload), else the default guest of ``guest_size`` bytes. The
    destination's RAM is anonymous memory, or ``destination_image`` for its first block.
    ``dirty_rate`` pages/s are dirtied while the migration runs (``dirty_pattern`` random or
    sequential over ``hot_pages``). ``destination_prealloc`` faults the destination's RAM
    in before the migration starts (QEMU's ``prealloc=on``), so page faults are not timed.
    ``destination_stale`` fills the destination's RAM with non-zero bytes first (what a
    reused destination, e.g. a QEMU whose memory-backend-file already existed, holds), so a
    receiver that skips zero pages cannot verify by luck.
    """
    params = params or MigrationParameters()
    params.validate()
    transport.check_timeout(timeout)
    own_guest = guest is None
    if guest is None:
        guest, corpus_name = _source_guest(guest_image, guest_size, dirty_rate, ramblock, corpus)
    else:
        corpus_name = "caller"
    dst_blocks = []
    for i, b in enumerate(guest.blocks):
        if i == 0 and destination_image is not None:
            blk = RAMBlock.from_file(b.name, destination_image, b.used_length, mode="w")
            if destination_prealloc:
                blk.prefault()
            dst_blocks.append(blk)
        else:
            dst_blocks.append(RAMBlock.anonymous(b.name, b.used_length,
                                                 prealloc=destination_prealloc))
    dst_guest = GuestMemory(dst_blocks)
    if destination_stale:
        for blk in dst_blocks:
            fill_stale(blk)
    workload = None
    try:
        if dirty_rate:
            workload = Workload(guest, dirty_rate, pattern=dirty_pattern, hot_pages=hot_pages)
        dst = Destination(dst_guest, params, host="127.0.0.1", port=0, uuid=uuid,
                          timeout=timeout, progress=None,
                          # Stale RAM is not known to be zero: every zero page must be written.
                          fresh_ram=not destination_stale)
        host, port = dst.address
        dst_stats: list[MigrationStats] = []
        t = threading.Thread(target=lambda: dst_stats.append(dst.run()),
                             name="qatmig-destination", daemon=True)
        t.start()
        src = Source(guest, params, host, port, uuid=uuid, timeout=timeout, workload=workload,
                     machine_type=machine_type, max_iters=max_iters, progress=progress,
                     wait_for_destination=0)
        t0 = time.monotonic()
        s = src.run()
        if s.status != "completed":
            # The source may have failed before connecting (e.g. QAT unavailable): do not let
            # the destination wait out its idle timeout for connections that never come.
            dst.act.cancel.set()
        # The destination ends on its own within the idle timeout; this bound is a backstop.
        t.join(timeout + 10)
        if workload is not None:
            workload.stop()
        d = dst_stats[0] if dst_stats else None
        st = s
        st.role = "both"
        st.corpus = corpus_name
        if d is None:
            st.status = "failed"
            st.error = st.error or "destination did not finish"
            return st
        st.destination = d.destination
        st.wall_seconds_destination = d.wall_seconds_destination
        st.device_state_bytes = d.device_state_bytes
        st.vm_commands = d.vm_commands
        st.tls_peer_dn = d.tls_peer_dn
        st.peak_rss_bytes = d.peak_rss_bytes
        st.guest_mapped_bytes = d.guest_mapped_bytes
        if s.status != "completed" or d.status != "completed":
            st.status = "failed"
            st.error = _root_error(s, d)
            st.error_type = d.error_type if st.error.startswith("destination:") else s.error_type
            st.verified = False
            return st
        end = dst.completed_at or time.monotonic()
        st.total_time_ms = (end - t0) * 1000
        st.wall_seconds_source = max(st.wall_seconds_source, 1e-9)
        if src.stop_time is not None:
            st.downtime_ms = (end - src.stop_time) * 1000
        if verify:
            st.verified = guest.same_content(dst_guest)
        return st
    finally:
        if workload is not None:
            workload.stop()
        dst_guest.close()
        if own_guest:
            guest.close()


def _root_error(s: MigrationStats, d: MigrationStats) -> str:
    """The more telling of the two sides' errors (not the "peer closed" echo of the other)."""
    errs = []
    for side, st in (("destination", d), ("source", s)):
        if st.status != "completed" and st.error:
            errs.append((side, st.error))
    if not errs:
        return "migration failed"
    echo = ("closed by peer", "cancelled", "reset the main channel")
    primary = [e for e in errs if not any(k in e[1] for k in echo)] or errs
    side, msg = primary[0]
    others = [f"{sd}: {m}" for sd, m in errs
              if (sd, m) != (side, msg) and "migration cancelled" not in m]
    return f"{side}: {msg}" + (f" (and {'; '.join(others)})" if others else "")


def listen(
    host: str,
    port: int,
    guest_image: str | os.PathLike[str] | None,
    guest_size: int,
    params: MigrationParameters | None = None,
    *,
    ramblock: str = DEFAULT_RAMBLOCK,
    uuid: str | None = None,
    timeout: float = transport.DEFAULT_TIMEOUT,
    progress: Progress | None = None,
    on_ready: Callable[[tuple[str, int]], None] | None = None,
    digest: bool = True,
    prealloc: bool = False,
    on_done: Callable[[MigrationStats], None] | None = None,
    extra_ramblocks: ExtraRAMBlocks = (),
) -> MigrationStats:
    """Serve one incoming migration; the ``ramblock`` block's RAM lives in ``guest_image``
    (anonymous memory if None), each of ``extra_ramblocks`` in its existing file (of the
    block's size; its bytes are kept as the RAM before the migration). Blocks the source
    lists beyond those get anonymous memory. A ``guest_image`` that already has ``guest_size``
    bytes is used as it is (its bytes are the RAM before the migration, as with QEMU's
    ``memory-backend-file``: zero pages are written over stale bytes); any other is created or
    truncated to ``guest_size``.
    ``on_ready(address)`` is called once the socket listens (port 0 picks a free port).
    ``prealloc`` faults the RAM in before listening (QEMU's ``prealloc=on``). ``on_done(stats)``
    is called as soon as the migration has ended, before the guest is digested, flushed and
    unmapped (benchmarks end their measurement there, as QEMU's ends at ``completed``)."""
    params = params or MigrationParameters()
    params.validate()
    transport.check_timeout(timeout)
    fresh = True
    if guest_image is not None:
        try:
            fresh = os.path.getsize(guest_image) != guest_size
        except OSError:
            fresh = True
        blk = RAMBlock.from_file(ramblock, guest_image, guest_size, mode="w", keep_content=True)
    else:
        blk = RAMBlock.anonymous(ramblock, guest_size)
    try:
        extras = _destination_extra_blocks(extra_ramblocks)
    except BaseException:
        blk.close()
        raise
    named = [blk, *extras]
    if prealloc:
        for b in named:
            b.prefault()
    guest = GuestMemory()
    try:
        for b in named:
            guest.add(b)  # a duplicate name is a ParameterError
        dst = Destination(guest, params, host=host, port=port, uuid=uuid, timeout=timeout,
                          ramblock=ramblock, progress=progress,
                          # Kept files are not known to be zero.
                          fresh_ram=fresh and not extras)
        if on_ready is not None:
            on_ready(dst.address)
        st = dst.run()
        if on_done is not None:
            on_done(st)
        if st.status == "completed" and digest:
            st.destination_digest = blk.digest()
            if extras:
                st.ramblock_digests = {b.name: b.digest() for b in named}
        for b in named:
            if b.path is not None:
                b._mm.flush()
        return st
    finally:
        guest.close()
        for b in named:
            if guest.block(b.name) is not b:  # not added (a duplicate name)
                b.close()


def send(
    host: str,
    port: int,
    guest_image: str | os.PathLike[str] | None = None,
    params: MigrationParameters | None = None,
    *,
    guest_size: int | None = None,
    guest: GuestMemory | None = None,
    ramblock: str = DEFAULT_RAMBLOCK,
    uuid: str | None = None,
    dirty_rate: int = 0,
    dirty_pattern: str = "random",
    timeout: float = transport.DEFAULT_TIMEOUT,
    progress: Progress | None = None,
    machine_type: str | None = None,
    max_iters: int = DEFAULT_MAX_ITERS,
    wait_for_destination: float | None = None,
    digest: bool = True,
    corpus: str = "auto",
    connect_wait: float = 0.0,
    final_image: str | os.PathLike[str] | None = None,
    on_done: Callable[[MigrationStats], None] | None = None,
    extra_ramblocks: ExtraRAMBlocks = (),
) -> MigrationStats:
    """Migrate a guest (``guest``, else ``guest_image``, else the default guest of
    ``guest_size``, followed by the blocks of ``extra_ramblocks``) to ``host:port``.

    After EOF it waits up to ``wait_for_destination`` seconds (default: ``timeout``) for the
    destination to close the main channel: a reset there means the destination failed, and
    ``send`` reports failed too. ``connect_wait``: seconds to keep retrying while the
    destination refuses connections (still starting). ``final_image``: once the migration
    ended, write the first RAM block as it was when the guest stopped (a workload's writes
    included) to this file -- what the destination must hold (the guest image itself is never
    modified; the workload dirties the first block only, so further blocks must arrive as
    their files are). ``on_done(stats)``: called as soon as the migration has ended, before
    the guest is digested, dumped and unmapped (see :func:`listen`)."""
    params = params or MigrationParameters()
    params.validate()
    transport.check_timeout(timeout)
    own = guest is None
    if guest is None:
        guest, corpus_name = _source_guest(guest_image, guest_size, dirty_rate, ramblock, corpus,
                                           extra_ramblocks)
    else:
        if extra_ramblocks:
            raise ParameterError("extra_ramblocks is for a guest send() builds, not a "
                                 "caller's guest (add the blocks to it)")
        corpus_name = "caller"
    workload = Workload(guest, dirty_rate, pattern=dirty_pattern) if dirty_rate else None
    try:
        src = Source(guest, params, host, port, uuid=uuid, timeout=timeout, workload=workload,
                     machine_type=machine_type, max_iters=max_iters, progress=progress,
                     wait_for_destination=wait_for_destination, connect_wait=connect_wait)
        st = src.run()
        st.corpus = corpus_name
        if st.status == "completed" and src.stop_time is not None and src.end_time is not None:
            st.downtime_ms = (src.end_time - src.stop_time) * 1000
        if on_done is not None:
            on_done(st)
        if digest and st.status == "completed":
            st.source_digest = guest.blocks[0].digest()
            if len(guest.blocks) > 1:
                st.ramblock_digests = {b.name: b.digest() for b in guest.blocks}
        if final_image is not None:
            if workload is not None:
                workload.stop()  # paused since the stop; no write may follow the dump
            write_block(guest.blocks[0], final_image)
        return st
    except ChannelClosed:  # pragma: no cover - run() reports failures in stats
        raise
    finally:
        if workload is not None:
            workload.stop()
        if own:
            guest.close()
