"""The coordinator: feeds each connection to its checker, keeps the migration-wide state."""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from ..constants import MULTIFD_PACKET_FIXED_SIZE, QEMU_VM_FILE_MAGIC
from ..dialects import METHOD_FLAGS, get_dialect
from ..errors import PacketError, WireError
from ..wire import Packet, packet_len, page_count, parse_uuid
from .expect import Expectations
from .main import MainStreamChecker
from .multifd import MultifdChannelChecker
from .report import BlockPages, Deviation, Notes, TapReport

_UNSET: Any = object()


class TapChecker:
    """Judges one migration, fed connection by connection (connection 0 = first accepted).

    What the suite negotiated comes as :class:`Expectations` (or, as before, keywords: ``dialect``,
    ``method``, ``channels``, ``uuid``, ``page_size``, ``level``, ``ramblocks``, ``every_page``);
    ``method`` is learnt from the first data packet when not given. ``ram`` maps block names
    to writable buffers the judge rebuilds RAM into (later rounds win, whatever order the
    connections are fed in); ``expect`` maps block names to bytes every received page must
    equal (a guest that does not run); ``source`` maps block names to the source's RAM at
    the end of the migration: the last copy of every page must equal it (the final dirty
    round arrived).
    """

    def __init__(
        self,
        expectations: Expectations | None = None,
        *,
        dialect: str = _UNSET,
        method: str | None = _UNSET,
        channels: int | None = _UNSET,
        uuid: str | bytes | None = _UNSET,
        page_size: int = _UNSET,
        level: int | None = _UNSET,
        ramblocks: Mapping[str, int] | None = _UNSET,
        every_page: bool = _UNSET,
        ram: MutableMapping[str, Any] | None = None,
        expect: Mapping[str, Any] | None = None,
        source: Mapping[str, Any] | None = None,
        max_errors: int = 20,
    ) -> None:
        given = {k: v for k, v in (
            ("dialect", dialect), ("method", method), ("channels", channels), ("uuid", uuid),
            ("page_size", page_size), ("level", level), ("ramblocks", ramblocks),
            ("every_page", every_page),
        ) if v is not _UNSET}
        exp = dataclasses.replace(expectations or Expectations(), **given)
        self.expectations = exp
        self.dialect = get_dialect(exp.dialect)
        if exp.method is not None:
            self.dialect.method_flag(exp.method)
        self.method = exp.method
        self.level = exp.level
        self.channels = exp.channels
        self.uuid = parse_uuid(exp.uuid) if exp.uuid is not None else None
        self.page_size = exp.page_size
        self.packet_len = packet_len(exp.page_size)
        self.page_count = page_count(exp.page_size)
        self.qatzip_hw_chunks = exp.qatzip_hw_chunks
        self.ram = ram
        self.expect = expect
        self.source = source
        self.max_errors = max_errors
        self.errors: list[Deviation] = []
        self.errors_dropped = 0
        self.notes = Notes()
        self.conns: dict[int, MainStreamChecker | MultifdChannelChecker] = {}
        self._pre: dict[int, bytearray] = {}
        self._ended: set[int] = set()
        self._channel_ids: set[int] = set()
        self.main: MainStreamChecker | None = None
        self.ramblocks: dict[str, int] = {}
        self.blocks_known = False
        self.pages: dict[str, BlockPages] = {}
        #: packet_num -> (connection, byte offset of its field) of the packet that used it
        #: (QEMU's counter is global to all channels)
        self._packet_nums: dict[int, tuple[int, int]] = {}
        self.started = time.monotonic()
        self.finished_at: float | None = None

    @classmethod
    def from_expectations(cls, expectations: Expectations, **kwargs: Any) -> TapChecker:
        return cls(expectations, **kwargs)

    # ---------------------------------------------------------------- feeding
    def feed(self, connection: int, data: bytes | memoryview) -> None:
        """Bytes received on ``connection`` (accept order, from 0)."""
        conn = self.conns.get(connection)
        if conn is None:
            pre = self._pre.setdefault(connection, bytearray())
            pre += data
            if len(pre) < 4 and not self.dialect.name == "qemu-7.2":
                return
            conn = self._open(connection, bytes(pre[:4]))
            del self._pre[connection]
            data = pre
        try:
            conn.feed(data)
        except WireError as exc:
            conn.failed = True
            at = None
            if isinstance(conn, MainStreamChecker):
                at = conn.error_offset()
                if at is None:
                    at = conn.decoder.bytes_in - len(data) if conn.decoder.bytes_in else 0
            self._error(str(exc), connection, fld=exc.field,
                        channel=getattr(conn, "channel", None), offset=at)

    def _open(self, connection: int, first4: bytes) -> MainStreamChecker | MultifdChannelChecker:
        if self.dialect.channel_by_magic:
            is_main = first4[:4] in (struct.pack(">I", QEMU_VM_FILE_MAGIC),
                                     struct.pack("<I", QEMU_VM_FILE_MAGIC))
        else:
            # <= 7.2 destinations: the first accepted connection is the main channel, whatever
            # order the connections' first bytes reach the checker in.
            is_main = connection == 0
        conn: MainStreamChecker | MultifdChannelChecker
        if is_main:
            if self.main is not None:
                self._error("a second main channel (QEVM) connection", connection, fld="magic",
                            offset=0)
            conn = self.main = MainStreamChecker(self, connection)
        else:
            conn = MultifdChannelChecker(self, connection)
        self.conns[connection] = conn
        return conn

    def end(self, connection: int) -> None:
        """``connection`` reached EOF."""
        self._ended.add(connection)

    # ---------------------------------------------------------------- callbacks
    def _error(self, message: str, connection: int, *, channel: int | None = None,
               packet_num: int | None = None, fld: str | None = None,
               offset: int | None = None) -> None:
        if len(self.errors) < self.max_errors:
            self.errors.append(Deviation(message, connection, channel, packet_num, fld, offset))
        else:
            self.errors_dropped += 1

    def _blocks_known(self, blocks: dict[str, int]) -> None:
        self.ramblocks.update(blocks)
        self.blocks_known = True
        for name, size in blocks.items():
            if name not in self.pages and size % self.page_size == 0:
                self.pages[name] = BlockPages(name, size, self.page_size)
        want = self.expectations.ramblocks
        if want is not None and self.main is not None:
            problems = []
            for name, size in want.items():
                if name not in blocks:
                    problems.append(f"{name!r} missing")
                elif blocks[name] != size:
                    problems.append(f"{name!r} has used_length {blocks[name]:#x}, "
                                    f"expected {size:#x}")
            if not self.expectations.other_ramblocks:
                problems += [f"{n!r} not expected" for n in blocks if n not in want]
            if problems:
                self._error("RAM block list differs from the guest's: " + "; ".join(problems),
                            self.main.stats.connection, fld="block list")
        for conn in list(self.conns.values()):
            if isinstance(conn, MultifdChannelChecker):
                conn.process()

    def _set_method(self, method: str) -> None:
        if method not in METHOD_FLAGS:
            raise PacketError(f"data packet with an unknown compression flag ({method})",
                              field="flags")
        self.dialect.method_flag(method)
        self.method = method

    def _packet_num(self, ch: MultifdChannelChecker, pkt: Packet) -> None:
        num = pkt.packet_num
        seen = self._packet_nums.get(num)
        if seen is None:
            self._packet_nums[num] = (ch.stats.connection, ch.packet_at + 24)
        elif seen[0] != ch.stats.connection:
            other = seen[0]
            oc = self.conns.get(other)
            name = getattr(oc, "channel", None)
            raise PacketError(
                f"packet_num {num} was already used on channel {name} (connection {other}): "
                "QEMU numbers packets with one counter shared by all channels",
                channel=ch.channel, packet_num=num, field="packet_num")

    def _packet_num_gaps(self) -> None:
        """8.0+ senders number every packet (SYNC included) from 0 with one counter, so the
        numbers seen are exactly 0..max (7.2 skips numbers around its repeated packets)."""
        nums = sorted(self._packet_nums)
        prev = -1
        for n in nums:
            if n != prev + 1:
                after = (f"after packet_num {prev} on connection {self._packet_nums[prev][0]}"
                         if prev >= 0 else "at the start")
                conn, at = self._packet_nums[n]
                self._error(
                    f"packet_num {prev + 1}..{n - 1} never appeared ({after}; next is {n} on "
                    f"connection {conn}): QEMU numbers every packet, SYNC included, from 0 "
                    "with one counter shared by all channels", conn, packet_num=n,
                    fld="packet_num", offset=at)
                return
            prev = n

    # ---------------------------------------------------------------- page map
    def _arrive(self, block: str, off: int, rnd: int, data: Any, conn: int,
                channel: int | None, packet_num: int | None, what: str,
                at: int | None = None) -> bool:
        """Record one page copy; returns True when it is the newest copy of that page."""
        bp = self.pages.get(block)
        if bp is None:
            return True
        i = off // self.page_size
        if i >= bp.pages:
            return False
        bp.received += 1
        stamp = bp.last_round[i]
        if stamp == rnd + 1:
            bp.sent_twice += 1
            text = (f"{block}@{off:#x} sent twice in sync round {rnd}"
                    f" ({what}, channel {channel}, packet {packet_num})")
            if self.dialect.name == "qemu-7.2":
                self.notes.add("page-sent-twice", "a page sent twice in one sync round "
                               "(7.2 sender race; writes are idempotent)", text)
            else:
                self._error(text + ": QEMU queues a dirty page once per round", conn,
                            channel=channel, packet_num=packet_num, fld="offset", offset=at)
        if stamp > rnd + 1:
            return False  # an older round's copy, fed after a newer one (offline order)
        bp.last_round[i] = rnd + 1
        if self.source is not None and block in self.source:
            src = self.source[block]
            bp.last_ok[i] = 1 if src[off : off + self.page_size] == data else 0
        return True

    def _zero_page(self, block: str, addr: int, fill: int) -> None:
        main = self.main
        conn = main.stats.connection if main else 0
        if fill:
            self.notes.add("zero-fill", "RAM_SAVE_FLAG_ZERO record with a non-zero fill byte",
                           f"{block}@{addr:#x}: {fill:#x}")
        page = bytes([fill]) * self.page_size
        newest = self._arrive(block, addr, main.round if main else 0, page, conn, None, None,
                              "ZERO record")
        if newest and self.ram is not None and block in self.ram:
            self.ram[block][addr : addr + self.page_size] = page
        exp = self.expect.get(block) if self.expect else None
        if exp is not None and exp[addr : addr + self.page_size] != page:
            self._error(f"zero-page record for {block}@{addr:#x} but the expected page is not "
                        "zero", conn, fld="ram")

    def _main_page(self, block: str, addr: int, data: bytes) -> None:
        main = self.main
        self.notes.add("main-page", "normal page on the main channel (not via multifd)",
                       f"{block}@{addr:#x}")
        newest = self._arrive(block, addr, main.round if main else 0, data,
                              main.stats.connection if main else 0, None, None, "PAGE record")
        if newest and self.ram is not None and block in self.ram:
            self.ram[block][addr : addr + self.page_size] = data

    def _zero_offsets(self, ch: MultifdChannelChecker, pkt: Packet) -> None:
        ps = self.page_size
        zero = bytes(ps)
        buf = self.ram.get(pkt.ramblock) if self.ram is not None else None
        exp = self.expect.get(pkt.ramblock) if self.expect else None
        slot = ch.packet_at + MULTIFD_PACKET_FIXED_SIZE + 8 * pkt.normal_pages
        for j, off in enumerate(pkt.zero_offsets):
            newest = self._arrive(pkt.ramblock, off, ch.syncs, zero, ch.stats.connection,
                                  ch.channel, pkt.packet_num, "zero page", slot + 8 * j)
            if buf is not None and newest:
                buf[off : off + ps] = zero
            if exp is not None and exp[off : off + ps] != zero:
                raise PacketError(f"zero page {pkt.ramblock}@{off:#x} is not zero in the "
                                  "expected image", channel=ch.channel,
                                  packet_num=pkt.packet_num, field="zero_pages")

    def _pages(self, ch: MultifdChannelChecker, pkt: Packet, pages: Any) -> None:
        ps = self.page_size
        rnd = ch.syncs
        buf = self.ram.get(pkt.ramblock) if self.ram is not None else None
        exp = self.expect.get(pkt.ramblock) if self.expect else None
        mv = memoryview(pages)
        for i, off in enumerate(pkt.normal_offsets):
            page = mv[i * ps : (i + 1) * ps]
            newest = self._arrive(pkt.ramblock, off, rnd, page, ch.stats.connection,
                                  ch.channel, pkt.packet_num, "normal page",
                                  ch.packet_at + MULTIFD_PACKET_FIXED_SIZE + 8 * i)
            if buf is not None and newest:
                buf[off : off + ps] = page
            if exp is not None and exp[off : off + ps] != page:
                raise PacketError(f"page {pkt.ramblock}@{off:#x} (offset[{i}]) differs from "
                                  "the expected image", channel=ch.channel,
                                  packet_num=pkt.packet_num, field="payload")

    # ---------------------------------------------------------------- result
    def finish(self) -> TapReport:
        """Whole-migration checks (EOF at packet boundaries, SYNC vs rounds, channel count,
        every page arrived); the report."""
        self.finished_at = time.monotonic()
        for idx, pre in self._pre.items():
            self._error(f"connection closed after {len(pre)} bytes, before its magic", idx,
                        fld="magic", offset=0)
        main = self.main
        if main is None:
            if self.conns or self._pre:
                self._error("no main channel", 0, fld="magic")
        else:
            mi = main.stats.connection
            if not main.failed:
                dec = main.decoder
                if not dec.header_seen:
                    self._error("main channel ended before the QEVM header", mi, fld="magic",
                                offset=0)
                elif not dec.ram_end:
                    self._error(f"main channel ended inside the RAM section "
                                f"({dec.where()}, {main.stats.eos} EOS seen)", mi,
                                fld="ram", offset=dec.bytes_in)
        mf = [c for c in self.conns.values() if isinstance(c, MultifdChannelChecker)]
        for c in mf:
            if c.failed:
                continue
            if c.state == "init":
                self._error("multifd connection ended before its init packet", c.stats.connection,
                            fld="init", offset=c.offset)
            elif not c.at_boundary() and not self.blocks_known and (main is None
                                                                    or not main.failed):
                self._error(f"{len(c.buf) - c.pos} bytes left unchecked: the main channel's "
                            "RAM block list never arrived", c.stats.connection,
                            channel=c.channel, fld="ramblock", offset=c.offset)
            elif not c.at_boundary() and self.blocks_known:
                pkt = c.packet
                inside = "payload" if c.state == "payload" else "header"
                self._error(
                    f"multifd channel ended inside a {inside} ({len(c.buf) - c.pos} bytes "
                    "left over)", c.stats.connection,
                    channel=c.channel, packet_num=pkt.packet_num if pkt else None,
                    fld="next_packet_size" if c.state == "payload" else "header",
                    offset=c.offset)
        if self.channels is not None and main is not None:
            ids = sorted(self._channel_ids)
            # a channel rejected at its init packet already has its deviation
            if ids != list(range(self.channels)) and all(c.channel is not None or not c.failed
                                                         for c in mf):
                self._error(f"multifd channel ids {ids}, expected 0..{self.channels - 1}",
                            main.stats.connection, fld="id")
            if len(mf) != self.channels:
                self._error(f"{len(mf)} multifd connection(s) seen, multifd-channels is "
                            f"{self.channels}", main.stats.connection, fld="channels")
        ram_done = main is not None and not main.failed and main.ram_done
        if ram_done:
            assert main is not None
            rounds = main.round
            what = "EOS" if self.dialect.flush_after_each_section else "MULTIFD_FLUSH"
            for c in mf:
                if not c.failed and c.syncs != rounds:
                    self._error(
                        f"{c.syncs} SYNC packets for {rounds} {what} on the main channel "
                        "(expected one SYNC per channel per round)", c.stats.connection,
                        channel=c.channel, fld="flags")
            if not self.dialect.flush_after_each_section and mf and not main.flushes_in_end:
                self._error("no RAM_SAVE_FLAG_MULTIFD_FLUSH in the RAM section's END (the "
                            "stop-and-copy round is never synced before the destination "
                            "completes)", main.stats.connection, fld="flush")
        if (ram_done and self.dialect.name != "qemu-7.2" and self._packet_nums
                and not any(c.failed for c in mf)):
            self._packet_num_gaps()
        clean = ram_done and not any(c.failed for c in mf) and not self.errors
        if clean and self.expectations.every_page:
            for bp in self.pages.values():
                miss = bp.missing()
                if miss:
                    self._error(
                        f"{len(miss)} of {bp.pages} pages of RAM block {bp.name!r} never "
                        f"arrived (first at offset {miss[0] * bp.page_size:#x})",
                        main.stats.connection if main else 0, fld="pages")
        if clean and self.source is not None:
            for bp in self.pages.values():
                stale = bp.stale()
                if stale:
                    self._error(
                        f"{len(stale)} pages of RAM block {bp.name!r} end with a copy that "
                        "differs from the source's final RAM (first at offset "
                        f"{stale[0] * bp.page_size:#x}): pages sent with the wrong bytes, or "
                        "a last dirty round that did not arrive",
                        main.stats.connection if main else 0, fld="pages")
        chans = sorted((c.stats for c in self.conns.values()), key=lambda s: s.connection)
        return TapReport(
            dialect=self.dialect.name, method=self.method,
            machine_type=main.machine_type if main else None,
            ramblocks=dict(self.ramblocks), channels=chans, errors=list(self.errors),
            notes=list(self.notes.by_kind.values()), eos=main.stats.eos if main else 0,
            duration_s=self.finished_at - self.started, pages=dict(self.pages),
            rounds=main.round if main else 0, errors_dropped=self.errors_dropped,
            commands=list(main.decoder.commands) if main else [],
        )


def check_capture(
    connections: list[bytes], expectations: Expectations | None = None, *, chunk: int = 0,
    **kwargs: Any
) -> TapReport:
    """Run the judge over recorded connections (accept order), offline.

    The main connection is fed first, then each multifd connection; ``chunk`` > 0 feeds in
    pieces of that size (to exercise the incremental parsers).
    """
    tap = TapChecker(expectations, **kwargs)
    for idx, data in enumerate(connections):
        step = chunk or max(1, len(data))
        for i in range(0, len(data), step):
            tap.feed(idx, data[i : i + step])
        if not data:
            tap.feed(idx, b"")
        tap.end(idx)
    return tap.finish()

