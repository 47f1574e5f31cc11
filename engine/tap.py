"""The validating tap: a TCP proxy that forwards a real migration and checks every byte.

Two layers, as everywhere in this engine:

* :class:`TapChecker` is pure: it is fed the bytes of each connection (in accept order) and
  checks them against the spec — the main channel's header, configuration and RAM section
  (block list, zero-page records, EOS; read through the engine's own
  :class:`~qatmig_engine.mainstream.MainStreamDecoder`), and on every multifd channel the
  init packet, each 1344-byte header (magic, version, flags vs the method, pages_alloc, RAM
  block and offsets inside the block), each payload decompressing to exactly
  ``normal_pages`` x page size with the channel's persistent zlib/zstd state, and one SYNC
  per channel for each EOS of the main stream (7.2 syncs at every section end). QEMU 7.2
  sender quirks (stale fields in empty packets, a SYNC merged into a data packet followed by
  an empty packet with the same packet_num, repeated packet_num, a page sent twice) are
  counted as notes, not errors.
* :class:`TapProxy` is the edge: sockets and threads, one upstream connection per accepted
  one, opened sequentially in accept order (a 7.2 destination takes the first connection as
  the main channel). Every socket wait has a timeout; an idle migration ends the tap with an
  error instead of hanging.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qatmig_engine.constants import MULTIFD_INIT_PACKET_SIZE, QEMU_VM_FILE_MAGIC, TARGET_PAGE_SIZE
from qatmig_engine.dialects import METHOD_FLAGS, get_dialect
from qatmig_engine.errors import (
    MigrationError,
    PacketError,
    PeerTimeout,
    QatmigError,
    StreamError,
    WireError,
    format_location,
)
from qatmig_engine.mainstream import (
    EndOfSection,
    Event,
    MainStreamDecoder,
    MemSize,
    MultifdFlush,
    Page,
    ZeroPage,
)
from qatmig_engine.wire import (
    ALL_COMPRESSION_BITS,
    InitPacket,
    Packet,
    PacketValidator,
    decode_packet,
    duplicate_channel_error,
    packet_len,
    page_count,
    parse_uuid,
)

#: Largest number of bytes a multifd channel may buffer while the main stream's block list
#: has not been seen yet (a 7.2 source sends it before any page; this only bounds memory).
MAX_PENDING = 64 << 20
#: Examples kept per note kind (the count is always exact).
NOTE_EXAMPLES = 3

_METHOD_BY_FLAG = {flag: name for name, flag in METHOD_FLAGS.items()}


# ============================================================================ report types
@dataclass
class Deviation:
    """One violation of the spec, located as precisely as known."""

    message: str
    connection: int
    channel: int | None = None
    packet_num: int | None = None
    field: str | None = None

    def where(self) -> str:
        return format_location(connection=self.connection, channel=self.channel,
                               packet_num=self.packet_num, field=self.field)

    def __str__(self) -> str:
        return f"{self.where()}: {self.message}"


@dataclass
class Note:
    """A tolerated sender quirk: how often it happened, with the first few examples."""

    kind: str
    text: str
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class ChannelStats:
    """Per-connection counters (``role`` main or multifd)."""

    connection: int
    role: str
    channel: int | None = None
    wire_bytes: int = 0
    packets: int = 0
    data_packets: int = 0
    sync_packets: int = 0
    empty_packets: int = 0
    pages: int = 0
    payload_bytes: int = 0
    #: main channel only
    eos: int = 0
    zero_pages: int = 0

    @property
    def page_bytes(self) -> int:
        return self.pages * TARGET_PAGE_SIZE

    @property
    def ratio(self) -> float | None:
        """payload bytes / raw page bytes (1.0 for none)."""
        return self.payload_bytes / self.page_bytes if self.pages else None


@dataclass
class TapReport:
    """What the tap saw: per-channel counters, deviations (errors) and notes."""

    dialect: str
    method: str | None
    machine_type: str | None
    ramblocks: dict[str, int]
    channels: list[ChannelStats]
    errors: list[Deviation]
    notes: list[Note]
    eos: int
    duration_s: float = 0.0
    #: QEMU_VM_COMMAND sections seen on the main channel (QEMU's names, in order).
    commands: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def totals(self) -> dict[str, Any]:
        mf = [c for c in self.channels if c.role == "multifd"]
        pages = sum(c.pages for c in mf)
        payload = sum(c.payload_bytes for c in mf)
        return {
            "connections": len(self.channels),
            "multifd_channels": len(mf),
            "packets": sum(c.packets for c in mf),
            "sync_packets": sum(c.sync_packets for c in mf),
            "pages": pages,
            "payload_bytes": payload,
            "page_bytes": pages * TARGET_PAGE_SIZE,
            "wire_bytes": sum(c.wire_bytes for c in self.channels),
            "ratio": round(payload / (pages * TARGET_PAGE_SIZE), 4) if pages else None,
        }

    def to_json(self) -> dict[str, Any]:
        chans = []
        for c in self.channels:
            d = asdict(c)
            d["page_bytes"] = c.page_bytes
            d["ratio"] = round(c.ratio, 4) if c.ratio is not None else None
            chans.append(d)
        return {
            "ok": self.ok,
            "dialect": self.dialect,
            "multifd_compression": self.method,
            "machine_type": self.machine_type,
            "ramblocks": self.ramblocks,
            "eos": self.eos,
            "commands": self.commands,
            "duration_s": round(self.duration_s, 3),
            "totals": self.totals(),
            "channels": chans,
            "errors": [asdict(e) | {"where": e.where()} for e in self.errors],
            "notes": [asdict(n) for n in self.notes],
        }


class _Notes:
    def __init__(self) -> None:
        self.by_kind: dict[str, Note] = {}

    def add(self, kind: str, text: str, example: str) -> None:
        note = self.by_kind.get(kind)
        if note is None:
            note = self.by_kind[kind] = Note(kind, text)
        note.count += 1
        if len(note.examples) < NOTE_EXAMPLES:
            note.examples.append(example)


# ============================================================================ main channel
class MainStreamChecker:
    """The main channel, checked through the engine's own :class:`MainStreamDecoder`.

    The decoder is the one parser of the QEVM stream (header, CONFIGURATION, the RAM
    section's block list, records, EOS and footers); this class turns its events into tap
    counters, notes and RAM/expected-image checks. Whatever follows the RAM section's END
    footer (device sections, EOF, VMDESCRIPTION) is counted as opaque device-state bytes.
    """

    def __init__(self, tap: TapChecker, connection: int) -> None:
        self.tap = tap
        self.stats = ChannelStats(connection=connection, role="main")
        self.decoder = MainStreamDecoder(tap.dialect, page_size=tap.page_size)
        self.flushes = 0
        self.failed = False

    @property
    def machine_type(self) -> str | None:
        return self.decoder.machine_type

    @property
    def ram_done(self) -> bool:
        """The RAM section's END footer was read (all RAM of the migration arrived)."""
        return self.decoder.ram_end

    def feed(self, data: bytes | memoryview) -> None:
        self.stats.wire_bytes += len(data)
        if self.failed:
            return
        events: list[Event] = []
        try:
            self.decoder.feed(data, events)
        finally:
            # events decoded before a malformed item still count (and may free multifd
            # channels waiting for the block list) before the deviation is reported
            for ev in events:
                self._event(ev)

    def _event(self, ev: Event) -> None:
        t = type(ev)
        tap = self.tap
        if t is ZeroPage:
            self.stats.zero_pages += 1
            tap._zero_page(ev.block, ev.offset, ev.fill)  # type: ignore[union-attr]
        elif t is Page:
            tap._main_page(ev.block, ev.offset, ev.data)  # type: ignore[union-attr]
        elif t is EndOfSection:
            self.stats.eos += 1
        elif t is MultifdFlush:  # the decoder admits it only in 8.1+ per-round dialects
            self.flushes += 1
        elif t is MemSize:
            tap._blocks_known(dict(ev.blocks))  # type: ignore[union-attr]


# ============================================================================ multifd channel
class MultifdChannelChecker:
    """Init packet, headers and payloads of one multifd connection."""

    def __init__(self, tap: TapChecker, connection: int) -> None:
        self.tap = tap
        self.stats = ChannelStats(connection=connection, role="multifd")
        self.buf = bytearray()
        self.pos = 0
        self.state = "init"
        self.channel: int | None = None
        self.packet: Packet | None = None
        self.validator: PacketValidator | None = None
        self.decompressor: Any = None
        self.last: Packet | None = None
        self.failed = False

    @property
    def syncs(self) -> int:
        return self.stats.sync_packets

    def feed(self, data: bytes | memoryview) -> None:
        self.stats.wire_bytes += len(data)
        if self.failed:
            return
        self.buf += data
        self.process()

    def process(self) -> None:
        if self.failed:
            return
        plen = self.tap.packet_len
        try:
            while True:
                avail = len(self.buf) - self.pos
                if self.state == "init":
                    if avail < MULTIFD_INIT_PACKET_SIZE:
                        break
                    self._init(memoryview(self.buf)[self.pos : self.pos + 64])
                    self.pos += MULTIFD_INIT_PACKET_SIZE
                    self.state = "header"
                elif self.state == "header":
                    if avail < plen:
                        break
                    pkt = decode_packet(
                        memoryview(self.buf)[self.pos : self.pos + plen],
                        self.tap.dialect, self.tap.page_size, channel=self.channel,
                    )
                    if (pkt.normal_pages or pkt.zero_pages) and not self.tap.blocks_known:
                        if avail > MAX_PENDING:
                            raise StreamError(
                                "multifd pages arrived but the main channel's RAM block list "
                                f"was not seen after {MAX_PENDING} bytes", field="ramblock")
                        break  # wait for the main stream's block list
                    self.pos += plen
                    self._header(pkt)
                    self.state = "payload" if pkt.payload_len else "header"
                    if self.state == "header":
                        self._done(pkt)
                else:
                    pkt = self.packet
                    assert pkt is not None  # state invariant, not input validation
                    n = pkt.payload_len
                    if avail < n:
                        break
                    self._payload(pkt, memoryview(self.buf)[self.pos : self.pos + n])
                    self.pos += n
                    self.state = "header"
                    self._done(pkt)
        except WireError as exc:
            self._fail(exc)
        except QatmigError as exc:  # CodecError / PayloadSizeError
            self._fail(exc, fld="payload")
        finally:
            if self.pos > (1 << 20) or self.pos == len(self.buf):
                del self.buf[: self.pos]
                self.pos = 0

    def _fail(self, exc: QatmigError, fld: str | None = None) -> None:
        self.failed = True
        self.buf = bytearray()
        self.pos = 0
        pkt = self.packet
        self.tap._error(
            str(exc), self.stats.connection,
            channel=getattr(exc, "channel", None) if self.channel is None else self.channel,
            packet_num=getattr(exc, "packet_num", None) or (pkt.packet_num if pkt else None),
            fld=getattr(exc, "field", None) or fld,
        )

    def at_boundary(self) -> bool:
        return self.state == "header" and len(self.buf) == self.pos

    # ---------------------------------------------------------------- steps
    def _init(self, raw: memoryview) -> None:
        init = InitPacket.decode(raw, expected_uuid=self.tap.uuid, channels=self.tap.channels)
        if init.channel_id in self.tap._channel_ids:
            raise duplicate_channel_error(init.channel_id)
        self.tap._channel_ids.add(init.channel_id)
        if bytes(raw[25:64]) != bytes(39):
            self.tap.notes.add("init-reserved", "init packet reserved bytes not zero",
                               f"channel {init.channel_id}")
        self.channel = init.channel_id
        self.stats.channel = init.channel_id

    def _header(self, pkt: Packet) -> None:
        tap = self.tap
        ch = self.channel
        self.packet = pkt
        self.stats.packets += 1
        where = f"channel {ch} packet {pkt.packet_num}"
        if pkt.reserved != bytes(len(pkt.reserved)):
            raise PacketError(f"reserved header bytes are not zero: {pkt.reserved.hex()}",
                              channel=ch, packet_num=pkt.packet_num, field="reserved")
        comp = pkt.flags & ALL_COMPRESSION_BITS
        if pkt.normal_pages and tap.method is None:
            tap._set_method(_METHOD_BY_FLAG.get(comp, f"unknown flag {comp:#x}"))
        if self.validator is None and tap.method is not None:
            self.validator = PacketValidator(
                tap.dialect, tap.method, tap.ramblocks, tap.page_size, channel=ch,
            )
            if tap.method != "none":
                from qatmig_engine.codecs import get_codec

                self.decompressor = get_codec(tap.method).new_decompressor(
                    page_size=tap.page_size, channel=ch or 0)
        if self.validator is not None:
            self.validator.check(pkt)
        # --- offsets: page aligned; ascending where the sender keeps them so (7.2). With
        # 9.0+ multifd zero-page detection QEMU swaps zero pages to the end in place, so a
        # later normal page takes a freed slot: there, no page may appear twice instead.
        offs = pkt.normal_offsets
        ascending = not tap.dialect.has_zero_pages
        for i, off in enumerate(offs):
            if off % tap.page_size:
                raise PacketError(f"offset[{i}] {off:#x} is not page aligned", channel=ch,
                                  packet_num=pkt.packet_num, field="offset")
            if ascending and i and off <= offs[i - 1]:
                raise PacketError(f"offset[{i}] {off:#x} is not above offset[{i - 1}] "
                                  f"{offs[i - 1]:#x}", channel=ch, packet_num=pkt.packet_num,
                                  field="offset")
        if not ascending:
            seen: set[int] = set()
            for off in (*offs, *pkt.zero_offsets):
                if off in seen:
                    raise PacketError(f"page offset {off:#x} appears twice in one packet",
                                      channel=ch, packet_num=pkt.packet_num, field="offset")
                seen.add(off)
        # --- packet_num: never decreases on a channel; repeats are a 7.2 quirk
        last = self.last
        if last is not None:
            if pkt.packet_num < last.packet_num:
                raise PacketError(f"packet_num {pkt.packet_num} after {last.packet_num} on the "
                                  "same channel", channel=ch, packet_num=pkt.packet_num,
                                  field="packet_num")
            if pkt.packet_num == last.packet_num:
                if last.sync and not pkt.normal_pages and not pkt.flags:
                    tap.notes.add("sync-then-empty-repeat",
                                  "SYNC packet (often carrying pages) followed by an empty "
                                  "packet with flags 0 and the same packet_num (7.2 sender)",
                                  where)
                else:
                    tap.notes.add("repeated-packet-num", "repeated packet_num on a channel",
                                  where)
        if pkt.sync:
            if pkt.normal_pages:
                tap.notes.add("sync-with-data", "SYNC flag on a packet that carries pages "
                              "(<= 9.0 sender)", where)
        if not pkt.normal_pages:
            self.stats.empty_packets += 1
            if pkt.next_packet_size:
                tap.notes.add("stale-next-packet-size", "empty packet keeps a stale "
                              "next_packet_size; no payload follows (7.2 sender)",
                              f"{where}: {pkt.next_packet_size}")
            if pkt.ramblock:
                tap.notes.add("stale-ramblock", "empty packet keeps a stale RAM block name",
                              f"{where}: {pkt.ramblock}")
        if pkt.stale_slots:
            tap.notes.add("stale-offsets", "unused offset slots hold stale offsets "
                          "(<= 9.0 sender)", f"{where}: {pkt.stale_slots} slots")
        if pkt.pages_alloc != tap.page_count and tap.dialect.name == "qemu-7.2":
            tap.notes.add("pages-alloc", f"pages_alloc is not {tap.page_count}",
                          f"{where}: {pkt.pages_alloc}")
        if pkt.normal_pages:
            self.stats.data_packets += 1
            self.stats.pages += pkt.normal_pages
        if pkt.zero_pages:  # 9.0+: zero pages travel as offsets only
            self.stats.zero_pages += pkt.zero_pages
            tap._zero_offsets(self, pkt)

    def _payload(self, pkt: Packet, payload: memoryview) -> None:
        tap = self.tap
        self.stats.payload_bytes += len(payload)
        want = pkt.normal_pages * tap.page_size
        if self.decompressor is not None:
            pages = self.decompressor.decompress(payload, pkt.normal_pages)
            if len(pages) != want:
                raise PacketError(
                    f"payload decompressed to {len(pages)} bytes, expected {want} "
                    f"({pkt.normal_pages} pages)", channel=self.channel,
                    packet_num=pkt.packet_num, field="payload")
        else:
            pages = payload
            if len(pages) != want:
                raise PacketError(f"payload has {len(pages)} bytes, expected {want}",
                                  channel=self.channel, packet_num=pkt.packet_num,
                                  field="payload")
        tap._pages(self, pkt, pages)

    def _done(self, pkt: Packet) -> None:
        if pkt.sync:
            self.stats.sync_packets += 1
            self.tap._synced()
        self.last = pkt
        self.packet = None


# ============================================================================ coordinator
class TapChecker:
    """Checks one migration, fed connection by connection (connection 0 = first accepted).

    ``method`` (multifd-compression) is learnt from the first data packet when not given.
    ``ram`` maps block names to writable buffers the tap rebuilds RAM into (valid for a guest
    that does not run during migration, e.g. ``-S``); ``expect`` maps block names to the
    bytes every received page must equal.
    """

    def __init__(
        self,
        *,
        dialect: str = "qemu-7.2",
        method: str | None = None,
        channels: int | None = None,
        uuid: str | bytes | None = None,
        page_size: int = TARGET_PAGE_SIZE,
        ram: MutableMapping[str, Any] | None = None,
        expect: dict[str, Any] | None = None,
        max_errors: int = 20,
    ) -> None:
        self.dialect = get_dialect(dialect)
        if method is not None:
            self.dialect.method_flag(method)
        self.method = method
        self.channels = channels
        self.uuid = parse_uuid(uuid) if uuid is not None else None
        self.page_size = page_size
        self.packet_len = packet_len(page_size)
        self.page_count = page_count(page_size)
        self.ram = ram
        self.expect = expect
        self.max_errors = max_errors
        self.errors: list[Deviation] = []
        self.notes = _Notes()
        self.conns: dict[int, MainStreamChecker | MultifdChannelChecker] = {}
        self._pre: dict[int, bytearray] = {}
        self._ended: set[int] = set()
        self._channel_ids: set[int] = set()
        self.main: MainStreamChecker | None = None
        self.ramblocks: dict[str, int] = {}
        self.blocks_known = False
        # duplicate-page ledger: round -> set of (block, offset)
        self._ledger: dict[int, set[tuple[str, int]]] = {}
        self.started = time.monotonic()
        self.finished_at: float | None = None

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
            self._error(str(exc), connection, fld=exc.field,
                        channel=getattr(conn, "channel", None))

    def _open(self, connection: int, first4: bytes) -> MainStreamChecker | MultifdChannelChecker:
        if self.dialect.channel_by_magic:
            is_main = first4[:4] == struct.pack(">I", QEMU_VM_FILE_MAGIC)
        else:
            # <= 7.2 destinations: the first accepted connection is the main channel, whatever
            # order the connections' first bytes reach the checker in.
            is_main = connection == 0
        conn: MainStreamChecker | MultifdChannelChecker
        if is_main:
            if self.main is not None:
                self._error("a second main channel (QEVM) connection", connection, fld="magic")
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
               packet_num: int | None = None, fld: str | None = None) -> None:
        if len(self.errors) < self.max_errors:
            self.errors.append(Deviation(message, connection, channel, packet_num, fld))

    def _blocks_known(self, blocks: dict[str, int]) -> None:
        self.ramblocks.update(blocks)
        self.blocks_known = True
        for conn in self.conns.values():
            if isinstance(conn, MultifdChannelChecker):
                conn.process()

    def _set_method(self, method: str) -> None:
        if method not in METHOD_FLAGS:
            raise PacketError(f"data packet with an unknown compression flag ({method})",
                              field="flags")
        self.dialect.method_flag(method)
        self.method = method

    def _synced(self) -> None:
        # A round's ledger can go once every channel is past it; without the channel count
        # (or before every channel connected) keep it: one entry per page sent.
        mf = [c for c in self.conns.values() if isinstance(c, MultifdChannelChecker)]
        if self.channels is None or len(mf) < self.channels:
            return
        low = min(c.syncs for c in mf)
        for k in [k for k in self._ledger if k < low]:
            del self._ledger[k]

    def _zero_page(self, block: str, addr: int, fill: int) -> None:
        if fill:
            self.notes.add("zero-fill", "RAM_SAVE_FLAG_ZERO record with a non-zero fill byte",
                           f"{block}@{addr:#x}: {fill:#x}")
        if self.ram is not None and block in self.ram:
            self.ram[block][addr : addr + self.page_size] = bytes([fill]) * self.page_size
        exp = self.expect.get(block) if self.expect else None
        if exp is not None and exp[addr : addr + self.page_size] != bytes([fill]) * self.page_size:
            self._error(f"zero-page record for {block}@{addr:#x} but the expected page is not "
                        "zero", self.main.stats.connection if self.main else 0, fld="ram")

    def _main_page(self, block: str, addr: int, data: bytes) -> None:
        self.notes.add("main-page", "normal page on the main channel (not via multifd)",
                       f"{block}@{addr:#x}")
        if self.ram is not None and block in self.ram:
            self.ram[block][addr : addr + self.page_size] = data

    def _zero_offsets(self, ch: MultifdChannelChecker, pkt: Packet) -> None:
        ps = self.page_size
        zero = bytes(ps)
        buf = self.ram.get(pkt.ramblock) if self.ram is not None else None
        exp = self.expect.get(pkt.ramblock) if self.expect else None
        for off in pkt.zero_offsets:
            if off % ps:
                raise PacketError(f"zero-page offset {off:#x} is not page aligned",
                                  channel=ch.channel, packet_num=pkt.packet_num, field="offset")
            if buf is not None:
                buf[off : off + ps] = zero
            if exp is not None and exp[off : off + ps] != zero:
                raise PacketError(f"zero page {pkt.ramblock}@{off:#x} is not zero in the "
                                  "expected image", channel=ch.channel,
                                  packet_num=pkt.packet_num, field="zero_pages")

    def _pages(self, ch: MultifdChannelChecker, pkt: Packet, pages: Any) -> None:
        ps = self.page_size
        rnd = ch.syncs
        seen = self._ledger.setdefault(rnd, set())
        buf = self.ram.get(pkt.ramblock) if self.ram is not None else None
        exp = self.expect.get(pkt.ramblock) if self.expect else None
        mv = memoryview(pages)
        for i, off in enumerate(pkt.normal_offsets):
            key = (pkt.ramblock, off)
            if key in seen:
                self.notes.add("page-sent-twice", "a page sent twice in one sync round "
                               "(7.2 sender race; writes are idempotent)",
                               f"channel {ch.channel} packet {pkt.packet_num}: "
                               f"{pkt.ramblock}@{off:#x}")
            else:
                seen.add(key)
            page = mv[i * ps : (i + 1) * ps]
            if buf is not None:
                buf[off : off + ps] = page
            if exp is not None and exp[off : off + ps] != page:
                raise PacketError(f"page {pkt.ramblock}@{off:#x} (offset[{i}]) differs from "
                                  "the expected image", channel=ch.channel,
                                  packet_num=pkt.packet_num, field="payload")

    # ---------------------------------------------------------------- result
    def finish(self) -> TapReport:
        """Whole-migration checks (EOF at packet boundaries, SYNC vs EOS); the report."""
        self.finished_at = time.monotonic()
        for idx, pre in self._pre.items():
            self._error(f"connection closed after {len(pre)} bytes, before its magic", idx,
                        fld="magic")
        main = self.main
        if main is None:
            if self.conns or self._pre:
                self._error("no main channel", 0, fld="magic")
        else:
            mi = main.stats.connection
            if not main.failed:
                dec = main.decoder
                if not dec.header_seen:
                    self._error("main channel ended before the QEVM header", mi, fld="magic")
                elif not dec.ram_end:
                    self._error(f"main channel ended inside the RAM section "
                                f"({dec.where()}, {main.stats.eos} EOS seen)", mi,
                                fld="ram")
        mf = [c for c in self.conns.values() if isinstance(c, MultifdChannelChecker)]
        for c in mf:
            if c.failed:
                continue
            if c.state == "init":
                self._error("multifd connection ended before its init packet", c.stats.connection,
                            fld="init")
            elif not c.at_boundary() and not self.blocks_known:
                self._error(f"{len(c.buf) - c.pos} bytes left unchecked: the main channel's "
                            "RAM block list never arrived", c.stats.connection,
                            channel=c.channel, fld="ramblock")
            elif not c.at_boundary():
                pkt = c.packet
                inside = "payload" if c.state == "payload" else "header"
                self._error(
                    f"multifd channel ended inside a {inside} ({len(c.buf) - c.pos} bytes "
                    "left over)", c.stats.connection,
                    channel=c.channel, packet_num=pkt.packet_num if pkt else None,
                    fld="next_packet_size" if c.state == "payload" else "header")
        if self.channels is not None and main is not None:
            ids = sorted(self._channel_ids)
            if ids != list(range(self.channels)):
                self._error(f"multifd channel ids {ids}, expected 0..{self.channels - 1}",
                            main.stats.connection, fld="id")
        if main is not None and not main.failed and main.ram_done:
            rounds = main.stats.eos if self.dialect.flush_after_each_section else main.flushes
            what = "EOS" if self.dialect.flush_after_each_section else "MULTIFD_FLUSH"
            for c in mf:
                if not c.failed and c.syncs != rounds:
                    self._error(
                        f"{c.syncs} SYNC packets for {rounds} {what} on the main channel "
                        "(expected one SYNC per channel per round)", c.stats.connection,
                        channel=c.channel, fld="flags")
        chans = sorted((c.stats for c in self.conns.values()), key=lambda s: s.connection)
        return TapReport(
            dialect=self.dialect.name, method=self.method,
            machine_type=main.machine_type if main else None,
            ramblocks=dict(self.ramblocks), channels=chans, errors=list(self.errors),
            notes=list(self.notes.by_kind.values()), eos=main.stats.eos if main else 0,
            duration_s=self.finished_at - self.started,
            commands=list(main.decoder.commands) if main else [],
        )


def check_capture(
    connections: list[bytes], *, chunk: int = 0, **kwargs: Any
) -> TapReport:
    """Run the checker over recorded connections (accept order), offline.

    The main connection is fed first, then each multifd connection; ``chunk`` > 0 feeds in
    pieces of that size (to exercise the incremental parsers).
    """
    tap = TapChecker(**kwargs)
    for idx, data in enumerate(connections):
        step = chunk or max(1, len(data))
        for i in range(0, len(data), step):
            tap.feed(idx, data[i : i + step])
        if not data:
            tap.feed(idx, b"")
        tap.end(idx)
    return tap.finish()


# ============================================================================ proxy edge
def format_report(report: TapReport) -> str:
    """Human-readable summary: one row per connection, then errors and notes."""
    from qatmig_engine.cli._common import format_table

    rows = []
    for c in report.channels:
        rows.append([
            c.connection, c.role, "-" if c.channel is None else c.channel,
            c.packets, c.sync_packets, c.pages, c.payload_bytes, c.wire_bytes,
            f"{c.ratio:.3f}" if c.ratio is not None else "-",
            c.eos if c.role == "main" else "-", c.zero_pages,
        ])
    t = report.totals()
    rows.append(["total", "", "", t["packets"], t["sync_packets"], t["pages"],
                 t["payload_bytes"], t["wire_bytes"],
                 f"{t['ratio']:.3f}" if t["ratio"] is not None else "-", report.eos, ""])
    lines = [
        f"tap: dialect {report.dialect}, multifd-compression {report.method or '?'}, "
        f"machine {report.machine_type or '?'}, {len(report.ramblocks)} RAM blocks, "
        f"{report.duration_s:.2f} s",
        format_table(["conn", "role", "channel", "packets", "sync", "pages", "payload B",
                      "wire B", "ratio", "EOS", "zero pages"], rows),
    ]
    for n in report.notes:
        ex = "; ".join(n.examples)
        lines.append(f"note: {n.text}: {n.count} time(s) (e.g. {ex})")
    if report.errors:
        for e in report.errors:
            lines.append(f"ERROR: {e}")
        lines.append(f"tap: FAILED with {len(report.errors)} deviation(s)")
    else:
        lines.append("tap: OK, every byte checked")
    return "\n".join(lines)


class TapProxy:
    """Forward ``listen`` -> ``forward`` connection by connection, feeding a :class:`TapChecker`.

    Upstream connections are opened sequentially in accept order. The tap ends when the
    main connection and every other accepted connection have closed (then ``linger`` s
    without a new connection), or with an error after ``timeout`` s without any byte moving.
    ``record_dir`` keeps each connection's client->server bytes as ``conn-<i>.bin``.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        forward: tuple[str, int],
        checker: TapChecker | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        linger: float = 0.3,
        record_dir: str | os.PathLike[str] | None = None,
        on_connection: Callable[[int], None] | None = None,
    ) -> None:
        self.listen_addr = listen
        self.forward_addr = forward
        self.checker = checker
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.linger = linger
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.on_connection = on_connection
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._open = 0
        self._accepted = 0
        self._last_activity = time.monotonic()
        self._stop = threading.Event()
        self._failure: str | None = None
        self._sock: socket.socket | None = None
        self.bytes_down: list[int] = []
        self._thread: threading.Thread | None = None
        self.report: TapReport | None = None

    def bind(self) -> int:
        """Bind and listen; returns the port (``listen`` port 0 picks a free one)."""
        if self._sock is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(self.listen_addr)
            except OSError as exc:
                s.close()
                raise MigrationError(f"tap: cannot listen on {self.listen_addr[0]}:"
                                     f"{self.listen_addr[1]}: {exc}") from exc
            s.listen(64)
            s.settimeout(0.1)
            self._sock = s
        return int(self._sock.getsockname()[1])

    @property
    def port(self) -> int:
        return self.bind()

    def start(self) -> int:
        """Run in a background thread; returns the listening port. Then :meth:`wait`."""
        port = self.bind()
        self._thread = threading.Thread(target=self._run_safe, name="tap-accept", daemon=True)
        self._thread.start()
        return port

    def wait(self, timeout: float | None = None) -> TapReport:
        """Join the background run (MigrationError if it does not end in ``timeout`` s)."""
        if self._thread is None:
            raise MigrationError("tap: not started")
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.close()
            self._thread.join(5)
            raise PeerTimeout(f"tap: still running after {timeout} s; closed")
        if self.report is None:
            raise MigrationError(f"tap: failed: {self._failure}")
        return self.report

    def _run_safe(self) -> None:
        try:
            self.run()
        except Exception as exc:  # reported by wait(); never lost in a thread
            self._failure = f"{type(exc).__name__}: {exc}"
            self.close()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass
        if self._sock is not None:
            self._sock.close()

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    def run(self) -> TapReport:
        """Accept, forward and check until the migration's connections are all closed."""
        self.bind()
        assert self._sock is not None
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
        self._touch()
        closed_since: float | None = None
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                with self._lock:
                    open_now = self._open
                if self._accepted and open_now == 0:
                    closed_since = closed_since or now
                    if now - closed_since >= self.linger:
                        break
                else:
                    closed_since = None
                if now - self._last_activity > self.timeout:
                    what = ("no connection arrived" if not self._accepted
                            else f"no byte moved on {open_now} open connection(s)")
                    self._failure = f"tap: {what} for {self.timeout:g} s"
                    break
                try:
                    client, _addr = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                self._accept(client)
        finally:
            self.close()
            for t in self._threads:
                t.join(self.timeout + 5)
        if self.checker is not None:
            report = self.checker.finish()
        else:
            # forward-and-count mode: only bytes per connection (connection 0 is main in 7.2)
            report = TapChecker().finish()
            report.channels = [
                ChannelStats(connection=i, role="main" if i == 0 else "multifd", wire_bytes=n)
                for i, n in enumerate(self.bytes_down)
            ]
        if self._failure:
            report.errors.append(Deviation(self._failure, -1, field="timeout"))
        self.report = report
        return report

    def _accept(self, client: socket.socket) -> None:
        idx = self._accepted
        self._accepted += 1
        self._touch()
        try:
            upstream = socket.create_connection(self.forward_addr, timeout=self.connect_timeout)
        except OSError as exc:
            client.close()
            self._failure = (f"tap: cannot connect to {self.forward_addr[0]}:"
                             f"{self.forward_addr[1]} for connection {idx}: {exc}")
            self._stop.set()
            return
        for sk in (client, upstream):
            sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # sends may block this long (a slow destination); reads poll with select()
            sk.settimeout(self.timeout)
        rec = open(self.record_dir / f"conn-{idx}.bin", "wb") if self.record_dir else None
        with self._lock:
            self._socks += [client, upstream]
            self._open += 1
            self.bytes_down.append(0)
        if self.on_connection:
            self.on_connection(idx)
        state = {"down_done": False, "up_done": False}
        down = threading.Thread(target=self._pump_down, args=(idx, client, upstream, rec, state),
                                name=f"tap-{idx}-down", daemon=True)
        up = threading.Thread(target=self._pump_up, args=(idx, upstream, client, state),
                              name=f"tap-{idx}-up", daemon=True)
        self._threads += [down, up]
        down.start()
        up.start()

    def _finish_conn(self, state: dict[str, bool], client: socket.socket,
                     upstream: socket.socket) -> None:
        with self._lock:
            if state["down_done"] and state["up_done"] and not state.get("counted"):
                state["counted"] = True
                self._open -= 1
                for s in (client, upstream):
                    try:
                        s.close()
                    except OSError:
                        pass

    def _readable(self, sk: socket.socket) -> bool:
        try:
            r, _w, _x = select.select([sk], [], [], 0.25)
        except (OSError, ValueError):
            return True  # closed: let recv() report it
        return bool(r)

    def _idle(self) -> bool:
        return time.monotonic() - self._last_activity > self.timeout

    def _check(self, idx: int, data: bytes) -> None:
        assert self.checker is not None
        with self._lock:
            try:
                self.checker.feed(idx, data)
            except Exception as exc:  # a checker bug must not stop the forwarding
                self.checker._error(f"tap checker failed: {type(exc).__name__}: {exc}", idx,
                                    fld="internal")
                conn = self.checker.conns.get(idx)
                if conn is not None:
                    conn.failed = True

    def _pump_down(self, idx: int, client: socket.socket, upstream: socket.socket,
                   rec: Any, state: dict[str, bool]) -> None:
        """source -> destination: forward, record, check."""
        try:
            while not self._stop.is_set():
                if not self._readable(client):
                    if self._idle():
                        break
                    continue
                try:
                    data = client.recv(1 << 20)
                except OSError:
                    break
                if not data:
                    break
                self._touch()
                try:
                    upstream.sendall(data)
                except OSError as exc:
                    self._failure = self._failure or (
                        f"tap: connection {idx}: sending to the destination failed: {exc}")
                    break
                self._touch()
                self.bytes_down[idx] += len(data)
                if rec is not None:
                    rec.write(data)
                if self.checker is not None:
                    self._check(idx, data)
        finally:
            if rec is not None:
                rec.close()
            if self.checker is not None:
                if idx not in self.checker.conns and idx not in self.checker._pre:
                    self._check(idx, b"")
                with self._lock:
                    self.checker.end(idx)
            try:
                upstream.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            state["down_done"] = True
            self._finish_conn(state, client, upstream)

    def _pump_up(self, idx: int, upstream: socket.socket, client: socket.socket,
                 state: dict[str, bool]) -> None:
        """destination -> source (a 7.2 destination never sends; forward anyway)."""
        down_done_at: float | None = None
        try:
            while not self._stop.is_set():
                if not self._readable(upstream):
                    if state["down_done"]:
                        # the source is done: give the destination a moment to close its side
                        down_done_at = down_done_at or time.monotonic()
                        if time.monotonic() - down_done_at > max(self.linger, 2.0):
                            break
                    if self._idle():
                        break
                    continue
                try:
                    data = upstream.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                self._touch()
                try:
                    client.sendall(data)
                except OSError:
                    break
        finally:
            try:
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            state["up_done"] = True
            self._finish_conn(state, client, upstream)
