"""QEMU's multifd wire format: MultiFDInit_t and MultiFDPacket_t, byte-exact, sans-I/O.

Everything is big-endian. A receiver always reads exactly :func:`packet_len` bytes of header
(320 fixed bytes + one u64 offset slot per page of a full packet: 1344 for 4 KiB pages); a
payload of ``next_packet_size`` bytes follows **iff** ``normal_pages > 0`` (QEMU 7.2 leaves a
stale ``next_packet_size`` in packets without pages and sends no payload after them).

Decoding is split in two steps, as in QEMU's ``multifd_recv_unfill_packet``:

* :func:`decode_packet` checks the structure (magic, version, page counts) with nothing but
  the bytes and the dialect;
* :class:`PacketValidator` checks the packet against the negotiated migration (compression
  flag, RAM block names and sizes, the method's payload bound).

Every failure is a :class:`~qatmig_engine.errors.WireError` subclass whose message is QEMU's
own text where QEMU has one.
"""

from __future__ import annotations

import array
import struct
import threading
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .constants import (
    MULTIFD_FLAG_DEVICE_STATE,
    MULTIFD_FLAG_QATZIP,
    MULTIFD_FLAG_SYNC,
    MULTIFD_INIT_PACKET_SIZE,
    MULTIFD_MAGIC,
    MULTIFD_PACKET_FIXED_SIZE,
    MULTIFD_PACKET_SIZE,
    MULTIFD_VERSION,
    QEMU_VM_FILE_MAGIC,
    RAMBLOCK_IDSTR_LEN,
    TARGET_PAGE_SIZE,
)
from .dialects import METHOD_FLAGS, Dialect, get_dialect
from .errors import InitPacketError, PacketError, UnsupportedDialectFeature, WireError

#: Every compression bit any release defines (9.2+ mask). Checking with the widest mask catches
#: the bits a 7.2/9.0 receiver would silently drop and misread as "none".
ALL_COMPRESSION_BITS = 0x3E
#: Flag bits any release defines.
KNOWN_FLAG_BITS = MULTIFD_FLAG_SYNC | ALL_COMPRESSION_BITS | MULTIFD_FLAG_DEVICE_STATE

_FLAG_NAMES = {flag: name for name, flag in METHOD_FLAGS.items() if flag}

_INIT = struct.Struct(">II16sB7s32s")
_FIXED = struct.Struct(">IIIIIIQII24s256s")
assert _INIT.size == MULTIFD_INIT_PACKET_SIZE and _FIXED.size == MULTIFD_PACKET_FIXED_SIZE

_offsets_structs: dict[int, struct.Struct] = {}


def page_count(page_size: int = TARGET_PAGE_SIZE) -> int:
    """Pages in a full packet (``MULTIFD_PACKET_SIZE / page_size``; 128 for 4 KiB)."""
    if page_size <= 0 or MULTIFD_PACKET_SIZE % page_size:
        raise WireError(f"page size {page_size} does not divide MULTIFD_PACKET_SIZE")
    return MULTIFD_PACKET_SIZE // page_size


def packet_len(page_size: int = TARGET_PAGE_SIZE) -> int:
    """Bytes of a MultiFDPacket_t header on the wire (1344 for 4 KiB pages)."""
    return MULTIFD_PACKET_FIXED_SIZE + 8 * page_count(page_size)


def _offsets_struct(n: int) -> struct.Struct:
    s = _offsets_structs.get(n)
    if s is None:
        s = _offsets_structs[n] = struct.Struct(f">{n}Q")
    return s


def format_uuid(raw: bytes) -> str:
    """QEMU's ``qemu_uuid_unparse`` form (8-4-4-4-12 lower-case hex)."""
    return str(uuidlib.UUID(bytes=bytes(raw)))


def parse_uuid(text: str | bytes | None) -> bytes:
    """16 raw bytes from a uuid string (QEMU's ``-uuid``), raw bytes, or None (all zeros)."""
    if text is None:
        return bytes(16)
    if isinstance(text, bytes | bytearray):
        if len(text) != 16:
            raise WireError(f"a uuid has 16 bytes, got {len(text)}")
        return bytes(text)
    try:
        return uuidlib.UUID(text).bytes
    except ValueError:
        raise WireError(
            f"'{text}' is not a uuid (expected e.g. 12345678-1234-1234-1234-123456789abc)"
        ) from None


def flag_names(flags: int) -> str:
    """``SYNC|ZSTD`` style rendering of a flags word, for reports."""
    names = []
    if flags & MULTIFD_FLAG_SYNC:
        names.append("SYNC")
    for bit, name in sorted(_FLAG_NAMES.items()):
        if flags & bit:
            names.append(name.upper())
    if flags & MULTIFD_FLAG_DEVICE_STATE:
        names.append("DEVICE_STATE")
    rest = flags & ~KNOWN_FLAG_BITS
    if rest:
        names.append(f"0x{rest:x}")
    return "|".join(names) or "NOCOMP"


# ----------------------------------------------------------------------------- init packet
@dataclass(frozen=True)
class InitPacket:
    """MultiFDInit_t: 64 bytes sent once at the start of every multifd channel."""

    channel_id: int
    uuid: bytes = bytes(16)

    def encode(self) -> bytes:
        if not 0 <= self.channel_id <= 255:
            raise InitPacketError(
                f"channel id {self.channel_id} does not fit the init packet's u8 id",
                field="id",
            )
        return _INIT.pack(
            MULTIFD_MAGIC, MULTIFD_VERSION, parse_uuid(self.uuid), self.channel_id,
            bytes(7), bytes(32),
        )

    @classmethod
    def decode(
        cls,
        buf: bytes | bytearray | memoryview,
        *,
        expected_uuid: bytes | None = None,
        channels: int | None = None,
    ) -> InitPacket:
        """Parse and check an init packet as QEMU's ``multifd_recv_initial_packet`` does.

        ``channels`` is the destination's multifd-channels; ids must be ``< channels``
        (QEMU only rejects ``> channels``, an off-by-one this engine does not copy).
        """
        if len(buf) != MULTIFD_INIT_PACKET_SIZE:
            raise InitPacketError(
                f"multifd: init packet has {len(buf)} bytes, expected "
                f"{MULTIFD_INIT_PACKET_SIZE} (peer closed the channel early?)",
                field="length",
            )
        magic, version, raw_uuid, cid, _u1, _u2 = _INIT.unpack(bytes(buf))
        if magic != MULTIFD_MAGIC:
            hint = ""
            if magic == QEMU_VM_FILE_MAGIC:
                hint = (
                    " (this is a main channel: a qemu-7.2 destination takes the first "
                    "connection as the main channel, so the main channel must connect first; "
                    "a source that connects in any order looks like dialect qemu-9.0 or newer)"
                )
            raise InitPacketError(
                f"multifd: received packet magic {magic:x} expected {MULTIFD_MAGIC:x}{hint}",
                field="magic",
            )
        if version != MULTIFD_VERSION:
            raise InitPacketError(
                f"multifd: received packet version {version} expected {MULTIFD_VERSION}",
                field="version",
            )
        if expected_uuid is not None and raw_uuid != parse_uuid(expected_uuid):
            raise InitPacketError(
                f"multifd: received uuid '{format_uuid(raw_uuid)}' and expected uuid "
                f"'{format_uuid(parse_uuid(expected_uuid))}' for channel {cid}",
                channel=cid,
                field="uuid",
            )
        if channels is not None:
            if cid > channels:
                raise InitPacketError(
                    f"multifd: received channel id {cid} is greater than number of "
                    f"channels {channels}",
                    channel=cid,
                    field="id",
                )
            if cid == channels:
                raise InitPacketError(
                    f"multifd: received channel id {cid} but ids run from 0 to {channels - 1} "
                    f"for {channels} channels (check multifd-channels on both sides)",
                    channel=cid,
                    field="id",
                )
        return cls(channel_id=cid, uuid=raw_uuid)


def duplicate_channel_error(channel_id: int) -> InitPacketError:
    """QEMU's error for a second channel announcing an id already set up."""
    return InitPacketError(
        f"multifd: received id '{channel_id}' already setup'", channel=channel_id, field="id"
    )


def identify_channel(first4: bytes) -> str:
    """Role of a new connection from its first 4 bytes (8.0+ destinations peek them).

    Returns ``"main"`` or ``"multifd"``; raises WireError for anything else (10.1+ wording).
    """
    if len(first4) < 4:
        raise WireError("connection closed before its first 4 bytes arrived", field="magic")
    (magic,) = struct.unpack(">I", bytes(first4[:4]))
    if magic == QEMU_VM_FILE_MAGIC:
        return "main"
    if magic == MULTIFD_MAGIC:
        return "multifd"
    if magic >> 16 == 0x1603:  # a TLS record header: handshake, TLS 1.x
        raise WireError(f"unknown channel magic: {magic} (a TLS handshake record: the source "
                        "uses TLS; give this end tls-creds too)", field="magic")
    raise WireError(f"unknown channel magic: {magic}", field="magic")


# ----------------------------------------------------------------------------- packet
@dataclass(slots=True)
class Packet:
    """MultiFDPacket_t (RAM packet header plus offsets)."""

    flags: int
    pages_alloc: int
    normal_pages: int
    next_packet_size: int
    packet_num: int
    zero_pages: int = 0
    ramblock: str = ""
    #: normal page offsets first, then zero page offsets (``normal_pages + zero_pages``).
    offsets: Sequence[int] = ()
    #: Bytes 36..63 as received (reserved; 32..63 in dialects without zero_pages).
    reserved: bytes = b""
    #: How many unused offset slots were non-zero (stale slots from a <= 9.0 sender).
    stale_slots: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def sync(self) -> bool:
        return bool(self.flags & MULTIFD_FLAG_SYNC)

    @property
    def compression_flag(self) -> int:
        return self.flags & ALL_COMPRESSION_BITS

    @property
    def payload_len(self) -> int:
        """Payload bytes that follow this header on the wire."""
        return self.next_packet_size if self.normal_pages else 0

    @property
    def normal_offsets(self) -> Sequence[int]:
        return self.offsets[: self.normal_pages]

    @property
    def zero_offsets(self) -> Sequence[int]:
        return self.offsets[self.normal_pages : self.normal_pages + self.zero_pages]

    def encode(self, dialect: str | Dialect, page_size: int = TARGET_PAGE_SIZE) -> bytes:
        """The ``packet_len(page_size)`` header bytes as a sender of ``dialect`` writes them."""
        d = get_dialect(dialect)
        n = page_count(page_size)
        used = self.normal_pages + self.zero_pages
        if self.flags & MULTIFD_FLAG_DEVICE_STATE:
            raise UnsupportedDialectFeature(
                "device-state packets are not RAM packets", field="flags"
            )
        if self.zero_pages and not d.has_zero_pages:
            raise PacketError(
                f"the {d.name} dialect has no zero_pages field: send zero pages on the main "
                "channel (zero-page-detection legacy)",
                field="zero_pages",
            )
        if not (self.pages_alloc <= n and used <= max(self.pages_alloc, 0)):
            raise PacketError(
                f"packet with pages_alloc {self.pages_alloc}, {self.normal_pages} normal and "
                f"{self.zero_pages} zero pages does not fit {n} slots",
                field="pages_alloc",
            )
        if len(self.offsets) != used:
            raise PacketError(
                f"{len(self.offsets)} offsets given for {used} pages", field="offset"
            )
        name = self.ramblock.encode()
        if len(name) >= RAMBLOCK_IDSTR_LEN:
            raise PacketError(f"RAM block name too long: {self.ramblock!r}", field="ramblock")
        buf = bytearray(MULTIFD_PACKET_FIXED_SIZE + 8 * n)
        _FIXED.pack_into(
            buf, 0, MULTIFD_MAGIC, MULTIFD_VERSION, self.flags, self.pages_alloc,
            self.normal_pages, self.next_packet_size, self.packet_num,
            self.zero_pages if d.has_zero_pages else 0, 0, bytes(24), name,
        )
        if used:
            _offsets_struct(used).pack_into(buf, MULTIFD_PACKET_FIXED_SIZE, *self.offsets)
        return bytes(buf)


def decode_packet(
    buf: bytes | bytearray | memoryview,
    dialect: str | Dialect,
    page_size: int = TARGET_PAGE_SIZE,
    channel: int | None = None,
) -> Packet:
    """Parse a packet header and check what needs nothing but the bytes.

    ``buf`` must hold exactly :func:`packet_len` bytes (a shorter one means the peer closed the
    channel mid-header). Raises :class:`PacketError` with QEMU's wording for ``dialect``.
    """
    d = get_dialect(dialect)
    n = page_count(page_size)
    expected = MULTIFD_PACKET_FIXED_SIZE + 8 * n
    if len(buf) != expected:
        if len(buf) < expected:
            raise PacketError(
                "multifd: unexpected EOF after packet header", channel=channel, field="length"
            )
        raise PacketError(
            f"packet header buffer has {len(buf)} bytes, expected {expected}",
            channel=channel, field="length",
        )
    (magic, version, flags, pages_alloc, normal, nps, num, zero_field, _u32, _u64, rb) = (
        _FIXED.unpack_from(buf, 0)
    )
    old = d.wording == "7"
    if magic != MULTIFD_MAGIC:
        text = (
            f"multifd: received packet magic {magic:x} and expected magic {MULTIFD_MAGIC:x}"
            if old
            else f"multifd: received packet magic {magic:x}, expected {MULTIFD_MAGIC:x}"
        )
        raise PacketError(text, channel=channel, field="magic")
    if version != MULTIFD_VERSION:
        text = (
            f"multifd: received packet version {version} and expected version {MULTIFD_VERSION}"
            if old
            else f"multifd: received packet version {version}, expected {MULTIFD_VERSION}"
        )
        raise PacketError(text, channel=channel, packet_num=num, field="version")
    if flags & MULTIFD_FLAG_DEVICE_STATE:
        raise UnsupportedDialectFeature(
            "multifd: received a device-state packet (flag 0x40: QEMU 10.x VFIO multifd device "
            "state transfer); this engine migrates RAM only — disable device-state transfer "
            "on the source or use a RAM-only guest",
            channel=channel, packet_num=num, field="flags",
        )
    if pages_alloc > n:
        text = (
            f"multifd: received packet with size {pages_alloc} and expected a size of {n}"
            if old
            else f"multifd: received packet with {pages_alloc} pages, expected {n}"
        )
        raise PacketError(text, channel=channel, packet_num=num, field="pages_alloc")
    if normal > pages_alloc:
        text = (
            f"multifd: received packet with {normal} pages and expected maximum pages are "
            f"{pages_alloc}"
            if old
            else f"multifd: received packet with {normal} non-zero pages, which exceeds "
            f"maximum expected pages {pages_alloc}"
        )
        raise PacketError(text, channel=channel, packet_num=num, field="normal_pages")
    if d.has_zero_pages:
        zero = zero_field
        if zero > pages_alloc - normal:
            raise PacketError(
                f"multifd: received packet with {zero} zero pages, expected maximum "
                f"{pages_alloc - normal}",
                channel=channel, packet_num=num, field="zero_pages",
            )
        reserved = bytes(buf[36:64])
    else:
        zero = 0
        reserved = bytes(buf[32:64])
    # QEMU forces the last idstr byte to NUL before using the name.
    name = bytes(rb[:-1]).split(b"\0", 1)[0].decode("latin-1")
    all_slots = _offsets_struct(n).unpack_from(buf, MULTIFD_PACKET_FIXED_SIZE)
    used = normal + zero
    stale = sum(1 for v in all_slots[used:] if v) if used < n else 0
    return Packet(
        flags=flags, pages_alloc=pages_alloc, normal_pages=normal, next_packet_size=nps,
        packet_num=num, zero_pages=zero, ramblock=name, offsets=all_slots[:used],
        reserved=reserved, stale_slots=stale,
    )


def make_sync_packet(
    dialect: str | Dialect, packet_num: int, method: str, page_size: int = TARGET_PAGE_SIZE
) -> Packet:
    """A SYNC-only packet as ``dialect``'s sender writes it (no pages, no payload).

    7.2 keeps pages_alloc and (stale) fields; we write zeros there, which 7.2 accepts.
    9.x sets only the SYNC flag and no compression bit.
    """
    d = get_dialect(dialect)
    d.method_flag(method)
    return Packet(
        flags=MULTIFD_FLAG_SYNC,
        pages_alloc=page_count(page_size) if d.name == "qemu-7.2" else 0,
        normal_pages=0,
        next_packet_size=0,
        packet_num=packet_num,
    )


class PacketValidator:
    """Checks decoded packets against the negotiated migration on one channel.

    ``ramblocks`` maps RAM block names to their used_length in bytes. ``max_payload`` is the
    method's bound (``CodecSpec.max_payload``); pass None to use the method's codec.
    """

    def __init__(
        self,
        dialect: str | Dialect,
        method: str,
        ramblocks: Mapping[str, int],
        page_size: int = TARGET_PAGE_SIZE,
        channel: int | None = None,
        max_payload: object = None,
    ) -> None:
        self.dialect = get_dialect(dialect)
        self.method = method
        self.expected_flag = self.dialect.method_flag(method)
        self.ramblocks = ramblocks
        self.page_size = page_size
        self.channel = channel
        if max_payload is None:
            from .codecs import get_codec

            max_payload = get_codec(method).max_payload
        self._max_payload = max_payload

    def _err(self, text: str, pkt: Packet, fld: str) -> PacketError:
        return PacketError(text, channel=self.channel, packet_num=pkt.packet_num, field=fld)

    def check(self, pkt: Packet) -> None:
        """Raise :class:`PacketError` if ``pkt`` does not fit this migration."""
        ch = self.channel if self.channel is not None else 0
        unknown = pkt.flags & ~KNOWN_FLAG_BITS
        if unknown:
            raise self._err(f"multifd {ch}: unknown flag bits {unknown:x}", pkt, "flags")
        comp = pkt.flags & ALL_COMPRESSION_BITS
        has_data = pkt.normal_pages > 0 or pkt.zero_pages > 0
        # Packets without pages may lack the method bit (7.2 empty packets, 9.x SYNC-only).
        if comp != self.expected_flag and (has_data or comp):
            hint = ""
            if comp & ~self.dialect.compression_mask:
                hint = (
                    f" (bits {comp & ~self.dialect.compression_mask:x} are outside the "
                    f"{self.dialect.name} compression mask {self.dialect.compression_mask:x}: "
                    "a receiver of that release would silently read them as none)"
                )
            raise self._err(
                f"multifd {ch}: flags received {comp:x} flags expected {self.expected_flag:x}"
                f"{hint} — both sides must use the same multifd-compression",
                pkt, "flags",
            )
        if not has_data:
            return
        size = self.ramblocks.get(pkt.ramblock)
        if size is None:
            raise self._err(f"multifd: unknown ram block {pkt.ramblock}", pkt, "ramblock")
        limit = size - self.page_size
        if pkt.offsets and max(pkt.offsets) > limit:
            bad = next(o for o in pkt.offsets if o > limit)
            raise self._err(f"multifd: offset too long {bad} (max {size:x})", pkt, "offset")
        if pkt.normal_pages:
            bound = self._max_payload(pkt.normal_pages, self.page_size)
            nps = pkt.next_packet_size
            if nps > bound:
                if self.expected_flag == MULTIFD_FLAG_QATZIP:
                    text = f"multifd {ch}: received unexpectedly large packet"
                else:
                    text = (
                        f"multifd {ch}: next_packet_size {nps} exceeds the {self.method} bound "
                        f"of {bound} bytes for {pkt.normal_pages} pages"
                    )
                raise self._err(text, pkt, "next_packet_size")
            if self.method == "none" and nps != pkt.normal_pages * self.page_size:
                raise self._err(
                    f"multifd {ch}: next_packet_size {nps} is not normal_pages x page size "
                    f"({pkt.normal_pages * self.page_size})",
                    pkt, "next_packet_size",
                )
            if nps == 0:
                raise self._err(
                    f"multifd {ch}: packet with {pkt.normal_pages} normal pages has no payload",
                    pkt, "next_packet_size",
                )


class PacketOrder:
    """Checks a destination makes where QEMU's receiver is silent (the reference is strict here).

    Shared by every multifd channel of one migration (thread-safe):

    * ``packet_num`` strictly grows on a channel (QEMU takes every packet's number from one
      counter shared by all channels); the one repeat QEMU 7.2 really sends - an empty packet
      with flags 0 after a SYNC packet, same number - is accepted. A data packet's number is
      unique across the channels of a round and above every number of the rounds before;
    * offsets are page aligned and a page appears once per packet (QEMU 7.2 - 10.x only check
      ``offset <= block length - page size`` and would write an unaligned page across two);
    * a page arrives once per round over the multifd channels, except in the qemu-7.2 dialect,
      whose sender really sends the last page of a full packet again (a race; writes are
      idempotent).

    A violation raises :class:`PacketError` naming the channel, the packet_num and the field.
    """

    def __init__(self, dialect: str | Dialect, page_size: int = TARGET_PAGE_SIZE) -> None:
        self.dialect = get_dialect(dialect)
        self.page_size = page_size
        self.pages_once_per_round = self.dialect.name != "qemu-7.2"
        #: QEMU 7.2 skips numbers (its counter also moves for packets it never sends): gaps
        #: are checked in the later dialects only.
        self.contiguous_numbers = self.dialect.name != "qemu-7.2"
        self._lock = threading.Lock()
        self._last: dict[int, tuple[int, bool]] = {}  # channel -> previous (packet_num, sync)
        self._round_nums: dict[int, int] = {}  # data packet_num -> channel, this round
        self._floor = -1  # highest data packet_num of the rounds already closed
        self._round_all: set[int] = set()  # every packet_num of this round (SYNC ones too)
        self._next: int | None = None  # the first packet_num the next round must use
        self._stamps: dict[str, array.array[int]] = {}  # block -> round + 1 per page

    def _err(self, text: str, pkt: Packet, channel: int, fld: str) -> PacketError:
        return PacketError(f"multifd {channel}: packet_num {pkt.packet_num}: {text} (the "
                           "reference is strict here; QEMU does not check it)",
                           channel=channel, packet_num=pkt.packet_num, field=fld)

    def check(self, pkt: Packet, channel: int, round_: int,
              block_bytes: Mapping[str, int] | None = None) -> None:
        """Check ``pkt`` (already structurally valid) as the ``round_``-th round's packet."""
        ps = self.page_size
        num = pkt.packet_num
        has_data = bool(pkt.normal_pages or pkt.zero_pages)
        first = -1  # >= 0: the packet's pages are exactly first, first + ps, ... (any order)
        if has_data:
            offs = pkt.offsets
            # Fast path: a packet covering one contiguous range of pages (normal and zero
            # pages of a run, as every QEMU queues them) is aligned and has no page twice.
            ordered = sorted(offs)
            lo = ordered[0]
            if lo % ps == 0 and ordered == list(range(lo, lo + len(offs) * ps, ps)):
                first = lo
            else:
                for i, o in enumerate(offs):
                    if o % ps:
                        raise self._err(f"offset[{i}] {o:#x} is not a multiple of the page "
                                        f"size {ps}", pkt, channel, "offset")
                if len(set(offs)) != len(offs):
                    dup = next(o for i, o in enumerate(offs) if o in offs[:i])
                    raise self._err(f"page {dup:#x} appears twice in one packet", pkt,
                                    channel, "offset")
        with self._lock:
            last = self._last.get(channel)
            if last is not None and num <= last[0]:
                repeat_72 = (num == last[0] and self.dialect.name == "qemu-7.2"
                             and last[1] and not has_data and not pkt.flags)
                if not repeat_72:
                    how = "repeated" if num == last[0] else f"goes backwards (after {last[0]})"
                    raise self._err(f"{how} on the channel (QEMU's counter only grows)", pkt,
                                    channel, "packet_num")
            self._last[channel] = (num, pkt.sync)
            self._round_all.add(num)
            if not has_data:
                return
            other = self._round_nums.get(num)
            if other is not None:
                raise self._err(f"already used on channel {other} (one counter numbers every "
                                "channel's packets)", pkt, channel, "packet_num")
            if num <= self._floor:
                raise self._err(f"is not above {self._floor}, the highest number of an "
                                "earlier round", pkt, channel, "packet_num")
            self._round_nums[num] = channel
            if not self.pages_once_per_round:
                return
            stamps = self._stamps.get(pkt.ramblock)
            if stamps is None:
                size = (block_bytes or {}).get(pkt.ramblock, 0)
                stamps = self._stamps[pkt.ramblock] = array.array("I", bytes(4 * (size // ps)))
            mark = round_ + 1
            count = len(pkt.offsets)
            i0 = first // ps
            if first >= 0 and i0 + count <= len(stamps) and mark not in stamps[i0 : i0 + count]:
                stamps[i0 : i0 + count] = array.array("I", (mark,)) * count
                return
            for o in pkt.offsets:
                i = o // ps
                if i < len(stamps):
                    if stamps[i] == mark:
                        raise self._err(f"page {o:#x} of {pkt.ramblock} was already sent in "
                                        f"round {round_ + 1} (QEMU queues a dirty page once "
                                        "per round)", pkt, channel, "offset")
                    stamps[i] = mark

    def end_round(self) -> None:
        """Every channel reached the round's SYNC: later data packets carry higher numbers,
        and every number below the round's last one has arrived (QEMU numbers each packet,
        SYNC ones included, from one counter: a gap is a packet lost on the way)."""
        with self._lock:
            if self._round_nums:
                self._floor = max(self._floor, max(self._round_nums))
            self._round_nums.clear()
            self._check_contiguous()

    def finish(self) -> None:
        """The migration ended: the packets after the last SYNC must be contiguous too."""
        with self._lock:
            self._check_contiguous()

    def _check_contiguous(self) -> None:
        seen = self._round_all
        if not seen or not self.contiguous_numbers:
            self._round_all = set()
            return
        lo = self._next if self._next is not None else min(seen)
        hi = max(seen)
        self._round_all = set()
        self._next = hi + 1
        if hi - lo + 1 == len(seen) and min(seen) >= lo:
            return
        if min(seen) < lo:
            raise PacketError(
                f"multifd: packet_num {min(seen)} belongs to an earlier round (this round "
                f"starts at {lo}) (the reference is strict here; QEMU does not check it)",
                packet_num=min(seen), field="packet_num")
        missing = next(n for n in range(lo, hi + 1) if n not in seen)
        raise PacketError(
            f"multifd: packet_num {missing} never arrived (this round's packets run from {lo} "
            f"to {hi}; {hi - lo + 1 - len(seen)} missing): a packet was lost or its number "
            "changed (the reference is strict here; QEMU does not check it)",
            packet_num=missing, field="packet_num")
