"""The main migration channel: the RAM-only subset of QEMU's QEVM stream (sans-I/O).

Layout (migration/savevm.c, migration/ram.c; all integers big-endian)::

    "QEVM" be32(3)                                  file magic + version
    07 be32(len) machine-type                       CONFIGURATION (e.g. pc-i440fx-7.2)
    01 be32(id) u8(3) "ram" be32(0) be32(4)         SECTION_START ram, instance 0, version 4
       be64(total | MEM_SIZE)                       then for every RAM block:
       u8(len) idstr be64(used_length)              ... until the lengths sum to total
       [be64(MULTIFD_FLUSH)] be64(EOS)              (flush: 8.1+ per-round dialects)
    7e be32(id)                                     section footer
    02 be32(id) <records> be64(EOS) 7e be32(id)     SECTION_PART, once per round
    [08 be16(11) be16(0)]                           QEMU_VM_COMMAND MIG_CMD_SWITCHOVER_START
                                                    (qemu-10.0, 10.0+ machine types)
    03 be32(id) <records> be64(EOS) 7e be32(id)     SECTION_END (the stop-and-copy stage)
    00                                              EOF

A QEMU_VM_COMMAND (``08 be16(cmd) be16(len) data``) may stand between sections. The decoder
reports MIG_CMD_SWITCHOVER_START as a :class:`VmCommand` event in dialects that know it
(``qemu-10.0``) and refuses every other command with a StreamError naming it (field
``command``); a subclass or caller may widen :attr:`MainStreamDecoder.accepted_commands`.

A record is be64(offset | flags): ZERO (0x02) is followed by the idstr when CONTINUE (0x20) is
clear and one fill byte; PAGE (0x08) by the idstr rule and one page of data.

The decoder also accepts a real QEMU source: whatever follows the RAM section's END footer
(device SECTION_FULL records, EOF, VMDESCRIPTION JSON) is not length-prefixed without per-device
schemas, so it is passed on as an opaque blob (:class:`DeviceState`) until the peer closes.

It is the one parser of these bytes: the engine's destination and the validating tap both read
its events. Every :class:`StreamError` it raises names the ``field`` at fault (``magic``,
``version``, ``configuration``, ``section``, ``footer``, ``block list``, ``ram flags``,
``ramblock``, ``offset``, ``command``, ``dialect``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from .constants import (
    MIG_CMD_ARGS,
    MIG_CMD_OPEN_RETURN_PATH,
    MIG_CMD_PING,
    MIG_CMD_SWITCHOVER_START,
    MIG_RP_MSG_NAMES,
    MIG_RP_MSG_PONG,
    MIG_RP_MSG_SHUT,
    MULTIFD_MAGIC,
    QEMU_VM_COMMAND,
    QEMU_VM_CONFIGURATION,
    QEMU_VM_EOF,
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_FILE_VERSION,
    QEMU_VM_SECTION_END,
    QEMU_VM_SECTION_FOOTER,
    QEMU_VM_SECTION_FULL,
    QEMU_VM_SECTION_PART,
    QEMU_VM_SECTION_START,
    QEMU_VM_SUBSECTION,
    QEMU_VM_VMDESCRIPTION,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_MULTIFD_FLUSH,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_ZERO,
    TARGET_PAGE_SIZE,
)
from .dialects import DIALECTS, Dialect, get_dialect, machine_sends_switchover_start
from .errors import StreamError

#: QEMU 7.2's ``pc`` machine type. The encoder's default is the dialect's own
#: (:attr:`Dialect.machine_type`); a real QEMU destination needs its exact name.
DEFAULT_MACHINE_TYPE = "pc-i440fx-7.2"
#: Section id QEMU 7.2 gives the ram section on a ``pc`` machine (observed).
RAM_SECTION_ID = 2
RAM_IDSTR = b"ram"
RAM_INSTANCE_ID = 0
RAM_VERSION_ID = 4

#: Bounds on header-driven sizes (nothing a peer says makes us allocate more).
MAX_MACHINE_TYPE_LEN = 256
MAX_RAM_BLOCKS = 1024

_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_ZERO_CONT = RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE
_SECTION_NAMES = {
    QEMU_VM_SECTION_START: "SECTION_START",
    QEMU_VM_SECTION_PART: "SECTION_PART",
    QEMU_VM_SECTION_END: "SECTION_END",
}


# ---------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class FileHeader:
    version: int


@dataclass(frozen=True)
class Configuration:
    machine_type: str


@dataclass(frozen=True)
class SectionHeader:
    kind: int  # QEMU_VM_SECTION_START / PART / END
    section_id: int
    idstr: str | None = None  # START only
    instance_id: int | None = None
    version_id: int | None = None


@dataclass(frozen=True)
class MemSize:
    total: int
    blocks: tuple[tuple[str, int], ...]  # (idstr, used_length)


@dataclass(frozen=True)
class ZeroPage:
    block: str
    offset: int
    fill: int


@dataclass(frozen=True)
class Page:
    block: str
    offset: int
    data: bytes


@dataclass(frozen=True)
class MultifdFlush:
    pass


@dataclass(frozen=True)
class EndOfSection:  # RAM_SAVE_FLAG_EOS
    section_id: int


@dataclass(frozen=True)
class Footer:
    section_id: int
    kind: int  # kind of the section it closes


@dataclass(frozen=True)
class RamEnd:
    """The RAM section's END footer was read: every RAM byte of the migration has arrived."""


@dataclass(frozen=True)
class DeviceState:
    """Opaque bytes after RAM END (device sections, EOF, VMDESCRIPTION)."""

    data: bytes


@dataclass(frozen=True)
class EndOfFile:  # QEMU_VM_EOF in a RAM-only stream
    pass


@dataclass(frozen=True)
class VmCommand:
    """A QEMU_VM_COMMAND section the decoder accepted (e.g. MIG_CMD_SWITCHOVER_START)."""

    command: int  # enum qemu_vm_cmd value
    name: str  # QEMU's name, e.g. "MIG_CMD_SWITCHOVER_START"
    data: bytes = b""


def command_name(command: int) -> str:
    """QEMU's name of an enum qemu_vm_cmd value (``MIG_CMD_<n>?`` when unknown)."""
    entry = MIG_CMD_ARGS.get(command)
    return entry[0] if entry else f"unknown MIG_CMD {command}"


def dialects_with_command(command: int) -> list[str]:
    """Names of the dialects whose decoder accepts ``command`` (for mismatch hints)."""
    return [d.name for d in DIALECTS.values() if command in _accepted(d)]


def _accepted(dialect: Dialect) -> frozenset[int]:
    return frozenset({MIG_CMD_SWITCHOVER_START}) if dialect.switchover_start else frozenset()


Event = (
    FileHeader | Configuration | SectionHeader | MemSize | ZeroPage | Page | MultifdFlush
    | EndOfSection | Footer | RamEnd | DeviceState | EndOfFile | VmCommand
)


# ---------------------------------------------------------------------------------- encoder
class MainStreamEncoder:
    """Builds the bytes of a RAM-only main stream, piece by piece (pure; no I/O)."""

    def __init__(
        self,
        dialect: str | Dialect,
        *,
        machine_type: str | None = None,
        section_id: int = RAM_SECTION_ID,
        page_size: int = TARGET_PAGE_SIZE,
    ) -> None:
        self.dialect = get_dialect(dialect)
        self.machine_type = machine_type or self.dialect.machine_type
        self.section_id = section_id
        self.page_size = page_size
        self._last_block: str | None = None

    def header(self) -> bytes:
        """File magic, version and the CONFIGURATION section."""
        mt = self.machine_type.encode()
        return (
            _BE32.pack(QEMU_VM_FILE_MAGIC) + _BE32.pack(QEMU_VM_FILE_VERSION)
            + bytes([QEMU_VM_CONFIGURATION]) + _BE32.pack(len(mt)) + mt
        )

    def section_start(self, blocks: list[tuple[str, int]]) -> bytes:
        """SECTION_START of "ram" with MEM_SIZE and the block list (no EOS yet)."""
        self._last_block = None
        out = bytearray([QEMU_VM_SECTION_START])
        out += _BE32.pack(self.section_id)
        out += bytes([len(RAM_IDSTR)]) + RAM_IDSTR
        out += _BE32.pack(RAM_INSTANCE_ID) + _BE32.pack(RAM_VERSION_ID)
        total = sum(length for _, length in blocks)
        out += _BE64.pack(total | RAM_SAVE_FLAG_MEM_SIZE)
        for name, length in blocks:
            raw = name.encode()
            out += bytes([len(raw)]) + raw + _BE64.pack(length)
        return bytes(out)

    def section_part(self) -> bytes:
        self._last_block = None
        return bytes([QEMU_VM_SECTION_PART]) + _BE32.pack(self.section_id)

    @property
    def sends_switchover_start(self) -> bool:
        """True when a QEMU of this dialect and machine type sends MIG_CMD_SWITCHOVER_START."""
        return self.dialect.switchover_start and machine_sends_switchover_start(
            self.machine_type
        )

    def command(self, command: int, data: bytes = b"") -> bytes:
        """A QEMU_VM_COMMAND section (``08 be16(cmd) be16(len) data``)."""
        name, length = MIG_CMD_ARGS.get(command, (command_name(command), -1))
        if length != -1 and len(data) != length:
            raise StreamError(f"{name} carries {length} bytes, not {len(data)}")
        if len(data) > 0xFFFF:
            raise StreamError(f"{name} payload of {len(data)} bytes exceeds 65535")
        return bytes([QEMU_VM_COMMAND]) + struct.pack(">HH", command, len(data)) + data

    def switchover_start(self) -> bytes:
        """MIG_CMD_SWITCHOVER_START (5 bytes), sent by 10.0+ before the stop-and-copy stage."""
        if not self.dialect.switchover_start:
            raise StreamError(
                f"MIG_CMD_SWITCHOVER_START does not exist in the {self.dialect.name} dialect "
                "(a QEMU 10.0 command)"
            )
        return self.command(MIG_CMD_SWITCHOVER_START)

    def section_end(self) -> bytes:
        self._last_block = None
        return bytes([QEMU_VM_SECTION_END]) + _BE32.pack(self.section_id)

    def _record(self, block: str, offset: int, flag: int) -> bytes:
        if block == self._last_block:
            return _BE64.pack(offset | flag | RAM_SAVE_FLAG_CONTINUE)
        self._last_block = block
        raw = block.encode()
        return _BE64.pack(offset | flag) + bytes([len(raw)]) + raw

    def zero_page(self, block: str, offset: int, fill: int = 0) -> bytes:
        """RAM_SAVE_FLAG_ZERO record (9 bytes with CONTINUE)."""
        return self._record(block, offset, RAM_SAVE_FLAG_ZERO) + bytes([fill])

    def zero_pages(self, block: str, offsets: list[int], out: bytearray) -> None:
        """Append ZERO records for many pages of one block to ``out`` (fast path)."""
        if not offsets:
            return
        out += self.zero_page(block, offsets[0])
        pack = _BE64.pack
        for off in offsets[1:]:
            out += pack(off | _ZERO_CONT)
            out.append(0)

    def page(self, block: str, offset: int, data: bytes | memoryview) -> bytes:
        """RAM_SAVE_FLAG_PAGE record with one page of data."""
        if len(data) != self.page_size:
            raise StreamError(f"a PAGE record carries exactly {self.page_size} bytes")
        return self._record(block, offset, RAM_SAVE_FLAG_PAGE) + bytes(data)

    def multifd_flush(self) -> bytes:
        """RAM_SAVE_FLAG_MULTIFD_FLUSH (8.1+ per-round dialects only)."""
        if self.dialect.flush_after_each_section:
            raise StreamError(
                f"RAM_SAVE_FLAG_MULTIFD_FLUSH does not exist in the {self.dialect.name} dialect"
            )
        return _BE64.pack(RAM_SAVE_FLAG_MULTIFD_FLUSH)

    def eos(self) -> bytes:
        return _BE64.pack(RAM_SAVE_FLAG_EOS)

    def end_of_round(self) -> bytes:
        """What ends a round after the multifd SYNCs: [MULTIFD_FLUSH] EOS, then the footer."""
        flush = b"" if self.dialect.flush_after_each_section else self.multifd_flush()
        return flush + self.eos() + self.footer()

    def footer(self) -> bytes:
        return bytes([QEMU_VM_SECTION_FOOTER]) + _BE32.pack(self.section_id)

    def eof(self) -> bytes:
        return bytes([QEMU_VM_EOF])

    def vmdescription(self) -> bytes:
        """QEMU_VM_VMDESCRIPTION after EOF (``06 be32(len) json``), as QEMU sends for pc/q35
        machines. A QEMU destination reads it before it completes; without it, its read past
        the end marks the stream failed, which a return path reports as MIG_RP_MSG_SHUT(1)."""
        desc = json.dumps({"page_size": self.page_size, "devices": []},
                          separators=(",", ":")).encode()
        return bytes([QEMU_VM_VMDESCRIPTION]) + _BE32.pack(len(desc)) + desc


# ---------------------------------------------------------------------------------- decoder
class _Need(Exception):
    """Not enough bytes buffered for the next item."""


# decoder states
_S_MAGIC, _S_TOP, _S_RAM, _S_FOOTER, _S_TRAILER, _S_DONE = range(6)


class MainStreamDecoder:
    """Incremental decoder: ``feed(bytes) -> [events]``; ``close()`` at the peer's EOF.

    Raises :class:`~qatmig_engine.errors.StreamError` (only) on malformed input; every size a
    peer sends is bounded before anything is allocated.
    """

    def __init__(self, dialect: str | Dialect, *, page_size: int = TARGET_PAGE_SIZE) -> None:
        self.dialect = get_dialect(dialect)
        self.page_size = page_size
        self._page_mask = page_size - 1
        self._buf = bytearray()
        self._pos = 0
        self._mark = 0
        self._state = _S_MAGIC
        self.machine_type: str | None = None
        self.ram_section_id: int | None = None
        self.blocks: dict[str, int] = {}
        self._last_block: str | None = None
        self._section_kind = 0
        self._saw_mem_size = False
        self._section_flushed = False
        self.ram_end = False
        self.eof = False
        self.bytes_in = 0
        self.device_state_bytes = 0
        #: Bytes dropped from the front of the buffer (stream offset of ``_buf[0]``).
        self._consumed = 0
        #: Stream offset of the item a StreamError was raised for (None before any error).
        self.error_offset: int | None = None
        #: enum qemu_vm_cmd values reported as :class:`VmCommand`; any other is refused.
        self.accepted_commands: frozenset[int] = _accepted(self.dialect)
        #: Names of the commands received, in order.
        self.commands: list[str] = []

    # ------------------------------------------------------------------ public
    @property
    def complete(self) -> bool:
        """True once the RAM section's END footer has been read."""
        return self.ram_end

    def feed(
        self, data: bytes | bytearray | memoryview, out: list[Event] | None = None
    ) -> list[Event]:
        """Decode what ``data`` completes; returns the events (appended to ``out`` if given).

        With ``out``, the events decoded before a :class:`StreamError` stay in it, so a caller
        that reports the error can still act on everything that preceded it.
        """
        events: list[Event] = [] if out is None else out
        self.bytes_in += len(data)
        if self._state == _S_TRAILER:
            if data:
                self.device_state_bytes += len(data)
                events.append(DeviceState(bytes(data)))
            return events
        if self._state == _S_DONE:
            if data:
                raise StreamError("bytes after QEMU_VM_EOF on the main channel", field="section")
            return events
        self._buf += data
        try:
            while True:
                if self._state == _S_TRAILER:
                    rest = bytes(self._buf[self._pos :])
                    self._pos = len(self._buf)
                    if rest:
                        self.device_state_bytes += len(rest)
                        events.append(DeviceState(rest))
                    break
                if self._state == _S_DONE:
                    if self._pos < len(self._buf):
                        raise StreamError(
                            "bytes after QEMU_VM_EOF on the main channel", field="section"
                        )
                    break
                self._mark = self._pos
                try:
                    self._step(events)
                except _Need:
                    # Rewind to the start of the incomplete item; complete ones are kept.
                    self._pos = self._mark
                    break
        except StreamError:
            self.error_offset = self._consumed + self._mark
            raise
        finally:
            if self._pos:
                self._consumed += self._pos
                del self._buf[: self._pos]
                self._pos = 0
        return events

    def close(self) -> None:
        """The peer closed the main channel: raise unless the RAM section was complete."""
        if not self.ram_end:
            raise StreamError(
                f"main channel closed mid-stream ({self.where()}, {len(self._buf)} bytes "
                "of an incomplete item buffered)",
                field="magic" if self._state == _S_MAGIC else "ram",
            )

    # ------------------------------------------------------------------ primitives
    def _take(self, n: int) -> bytes:
        p = self._pos
        if len(self._buf) - p < n:
            raise _Need
        self._pos = p + n
        return bytes(self._buf[p : p + n])

    def _u8(self) -> int:
        p = self._pos
        if p >= len(self._buf):
            raise _Need
        self._pos = p + 1
        return self._buf[p]

    def _be32(self) -> int:
        p = self._pos
        if len(self._buf) - p < 4:
            raise _Need
        self._pos = p + 4
        return _BE32.unpack_from(self._buf, p)[0]

    def _be64(self) -> int:
        p = self._pos
        if len(self._buf) - p < 8:
            raise _Need
        self._pos = p + 8
        return _BE64.unpack_from(self._buf, p)[0]

    def _idstr(self, what: str, fld: str) -> str:
        n = self._u8()
        if n == 0:
            raise StreamError(f"empty {what} name", field=fld)
        raw = self._take(n)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise StreamError(f"{what} name is not ASCII: {raw!r}", field=fld) from None

    @property
    def header_seen(self) -> bool:
        """True once the file magic and version were read."""
        return self._state != _S_MAGIC

    def where(self) -> str:
        """Where in the stream the decoder stands, in words (for error messages)."""
        return {
            _S_MAGIC: "before the file header",
            _S_TOP: "between sections",
            _S_RAM: "inside the RAM section",
            _S_FOOTER: "at a section footer",
            _S_TRAILER: "after RAM END",
            _S_DONE: "after EOF",
        }[self._state]

    # ------------------------------------------------------------------ the state machine
    def _step(self, events: list[Event]) -> None:
        st = self._state
        if st == _S_RAM:
            self._ram_records(events)
        elif st == _S_TOP:
            self._top(events)
        elif st == _S_FOOTER:
            kind = self._u8()
            if kind != QEMU_VM_SECTION_FOOTER:
                raise StreamError(
                    f"expected section footer 0x7e after EOS, got 0x{kind:02x}", field="footer"
                )
            sid = self._be32()
            if sid != self.ram_section_id:
                raise StreamError(
                    f"section footer for section {sid}, expected {self.ram_section_id}",
                    field="footer",
                )
            events.append(Footer(sid, self._section_kind))
            if self._section_kind == QEMU_VM_SECTION_END:
                self.ram_end = True
                self._state = _S_TRAILER
                events.append(RamEnd())
            else:
                self._state = _S_TOP
        elif st == _S_MAGIC:
            magic = self._be32()
            if magic != QEMU_VM_FILE_MAGIC:
                hint = ""
                if magic == MULTIFD_MAGIC:
                    hint = (
                        " (a multifd channel connected first: a 7.2 destination takes the "
                        "first connection as the main channel and rejects this stream; a "
                        "source that connects in any order looks like dialect qemu-9.0 or newer)"
                    )
                elif magic >> 16 == 0x1603:
                    hint = (" (a TLS handshake record: the source uses TLS; give this end "
                            "tls-creds too)")
                raise StreamError(
                    f"main channel magic 0x{magic:08x}, expected 0x{QEMU_VM_FILE_MAGIC:08x} "
                    f"(QEVM){hint}",
                    field="magic",
                )
            version = self._be32()
            if version != QEMU_VM_FILE_VERSION:
                raise StreamError(
                    f"migration file version {version}, expected {QEMU_VM_FILE_VERSION}",
                    field="version",
                )
            events.append(FileHeader(version))
            self._state = _S_TOP

    def _top(self, events: list[Event]) -> None:
        kind = self._u8()
        if kind == QEMU_VM_CONFIGURATION:
            if self.machine_type is not None or self.ram_section_id is not None:
                raise StreamError(
                    "CONFIGURATION section repeated or after the RAM section",
                    field="configuration",
                )
            n = self._be32()
            if not 0 < n <= MAX_MACHINE_TYPE_LEN:
                raise StreamError(
                    f"CONFIGURATION machine-type length {n} out of range "
                    f"1..{MAX_MACHINE_TYPE_LEN}",
                    field="configuration",
                )
            raw = self._take(n)
            try:
                self.machine_type = raw.decode("ascii")
            except UnicodeDecodeError:
                raise StreamError(
                    f"machine type is not ASCII: {raw!r}", field="configuration"
                ) from None
            events.append(Configuration(self.machine_type))
        elif (
            kind == QEMU_VM_SUBSECTION
            and self.machine_type is not None
            and self.ram_section_id is None
        ):
            # vmstate_configuration's subsections (target-page-bits, capabilities, uuid) are
            # only sent when the source needs them; QEMU 7.2 sends none by default.
            raise StreamError(
                "CONFIGURATION subsections are not supported (QEMU 7.2 sends none by default)",
                field="configuration",
            )
        elif kind == QEMU_VM_SECTION_START:
            sid = self._be32()
            idstr = self._idstr("section", "section")
            instance = self._be32()
            version = self._be32()
            if idstr != "ram":
                raise StreamError(
                    f"SECTION_START of '{idstr}' before the RAM section ended: only the "
                    "RAM section is supported before device state",
                    field="section",
                )
            if self.ram_section_id is not None:
                raise StreamError("a second SECTION_START of 'ram'", field="section")
            if version != RAM_VERSION_ID:
                raise StreamError(
                    f"ram section version {version}, expected {RAM_VERSION_ID}", field="section"
                )
            self.ram_section_id = sid
            self._section_kind = kind
            self._section_flushed = False
            self._last_block = None
            events.append(SectionHeader(kind, sid, idstr, instance, version))
            self._state = _S_RAM
        elif kind in (QEMU_VM_SECTION_PART, QEMU_VM_SECTION_END):
            sid = self._be32()
            if self.ram_section_id is None:
                raise StreamError(
                    f"{_SECTION_NAMES[kind]} before SECTION_START of 'ram'", field="section"
                )
            if sid != self.ram_section_id:
                raise StreamError(
                    f"{_SECTION_NAMES[kind]} for unknown section {sid} (ram is "
                    f"{self.ram_section_id})",
                    field="section",
                )
            self._section_kind = kind
            self._section_flushed = False
            events.append(SectionHeader(kind, sid))
            self._state = _S_RAM
        elif kind == QEMU_VM_EOF:
            if not self.ram_end:
                raise StreamError("QEMU_VM_EOF before the RAM section's END", field="section")
            self._state = _S_DONE  # pragma: no cover - unreachable: END moves to the trailer
            events.append(EndOfFile())
        elif kind == QEMU_VM_SECTION_FULL:
            raise StreamError(
                "device state (SECTION_FULL) before the RAM section's END", field="section"
            )
        elif kind == QEMU_VM_COMMAND:
            self._command(events)
        else:
            raise StreamError(
                f"unknown section type 0x{kind:02x} on the main channel", field="section type"
            )

    def _command(self, events: list[Event]) -> None:
        cmd = self._u8() << 8
        cmd |= self._u8()
        n = self._u8() << 8
        n |= self._u8()
        data = self._take(n)  # be16: at most 65535 bytes
        name = command_name(cmd)
        if cmd not in self.accepted_commands:
            where = dialects_with_command(cmd)
            hint = (
                f": these bytes look like dialect {' or '.join(where)} (--dialect {where[0]})"
                if where
                else ""
            )
            raise StreamError(
                f"QEMU_VM_COMMAND {name} (command {cmd}, {n} bytes) is not supported by this "
                f"destination in the {self.dialect.name} dialect{hint}",
                field="command",
            )
        length = MIG_CMD_ARGS[cmd][1]
        if length != -1 and n != length:
            raise StreamError(
                f"QEMU_VM_COMMAND {name} with {n} bytes of payload, expected {length}",
                field="command",
            )
        self.commands.append(name)
        events.append(VmCommand(cmd, name, data))

    def _ram_records(self, events: list[Event]) -> None:
        buf = self._buf
        mask = self._page_mask
        ps = self.page_size
        while True:
            p = self._mark = self._pos
            if len(buf) - p < 8:
                raise _Need
            v = _BE64.unpack_from(buf, p)[0]
            flags = v & mask
            addr = v & ~mask
            # Fast path: ZERO|CONTINUE, the bulk of a legacy-zero-page stream.
            if flags == _ZERO_CONT:
                if len(buf) - p < 9:
                    raise _Need
                blk = self._last_block
                if blk is None:
                    raise StreamError(
                        "ZERO record with CONTINUE before any RAM block was named",
                        field="ram flags",
                    )
                self._check_page(blk, addr)
                self._pos = p + 9
                events.append(ZeroPage(blk, addr, buf[p + 8]))
                continue
            self._pos = p + 8
            base = flags & ~RAM_SAVE_FLAG_CONTINUE
            if base == RAM_SAVE_FLAG_MEM_SIZE and not (flags & RAM_SAVE_FLAG_CONTINUE):
                self._mem_size(addr, events)
            elif base in (RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE):
                if flags & RAM_SAVE_FLAG_CONTINUE:
                    blk = self._last_block
                    if blk is None:
                        raise StreamError(
                            "record with CONTINUE before any RAM block was named",
                            field="ram flags",
                        )
                else:
                    blk = self._idstr("RAM block", "ramblock")
                    if blk not in self.blocks:
                        raise StreamError(
                            f"unknown RAM block '{blk}' in a page record", field="ramblock"
                        )
                self._check_page(blk, addr)
                if base == RAM_SAVE_FLAG_ZERO:
                    fill = self._u8()
                    events.append(ZeroPage(blk, addr, fill))
                else:
                    data = self._take(ps)
                    events.append(Page(blk, addr, data))
                self._last_block = blk
            elif flags == RAM_SAVE_FLAG_EOS:
                if (self._section_kind == QEMU_VM_SECTION_START and not self._section_flushed
                        and not self.dialect.flush_after_each_section):
                    # 8.1+ sources always flush before the setup section's EOS
                    raise StreamError(
                        "the RAM setup section ended without RAM_SAVE_FLAG_MULTIFD_FLUSH: these "
                        "bytes look like dialect qemu-7.2 (a source that syncs multifd at every "
                        "section end: QEMU <= 8.0, or a newer one with a <= 8.0 machine type); "
                        f"this side speaks {self.dialect.name}",
                        field="dialect",
                    )
                events.append(EndOfSection(self.ram_section_id or 0))
                self._state = _S_FOOTER
                return
            elif flags == RAM_SAVE_FLAG_MULTIFD_FLUSH:
                if self.dialect.flush_after_each_section:
                    raise StreamError(
                        "RAM_SAVE_FLAG_MULTIFD_FLUSH (0x200) in the "
                        f"{self.dialect.name} dialect, which syncs at every EOS instead: these "
                        "bytes look like dialect qemu-9.0 or newer (QEMU 8.1+ syncs once per "
                        "round)",
                        field="ram flags",
                    )
                if not self._saw_mem_size:
                    raise StreamError("MULTIFD_FLUSH before MEM_SIZE", field="ram flags")
                self._section_flushed = True
                events.append(MultifdFlush())
            else:
                raise StreamError(
                    f"unknown combination of RAM flags 0x{flags:x} (record 0x{v:016x})",
                    field="ram flags",
                )

    def _check_page(self, blk: str, addr: int) -> None:
        length = self.blocks.get(blk)
        if length is None:
            raise StreamError(f"unknown RAM block '{blk}'", field="ramblock")
        if addr > length - self.page_size:
            raise StreamError(
                f"page offset 0x{addr:x} beyond RAM block '{blk}' (used_length 0x{length:x})",
                field="offset",
            )

    def _mem_size(self, total: int, events: list[Event]) -> None:
        if self._section_kind != QEMU_VM_SECTION_START or self._saw_mem_size:
            raise StreamError(
                "MEM_SIZE record outside the RAM section's start (a second block list?)",
                field="block list",
            )
        remaining = total
        blocks: list[tuple[str, int]] = []
        while remaining:
            if len(blocks) >= MAX_RAM_BLOCKS:
                raise StreamError(
                    f"more than {MAX_RAM_BLOCKS} RAM blocks in MEM_SIZE", field="block list"
                )
            name = self._idstr("RAM block", "block list")
            length = self._be64()
            if length == 0 or length > remaining or length % self.page_size:
                raise StreamError(
                    f"RAM block '{name}' length {length} inconsistent with MEM_SIZE "
                    f"(remaining {remaining}, page size {self.page_size})",
                    field="block list",
                )
            if any(name == b for b, _ in blocks):
                raise StreamError(f"RAM block '{name}' listed twice", field="block list")
            blocks.append((name, length))
            remaining -= length
        if not blocks:
            raise StreamError("MEM_SIZE of 0: no RAM blocks", field="block list")
        self.blocks = dict(blocks)
        self._saw_mem_size = True
        events.append(MemSize(total, tuple(blocks)))


# ---------------------------------------------------------------------------------- return path
#: Commands a destination handles in every dialect: a source with the ``return-path``
#: capability sends MIG_CMD_OPEN_RETURN_PATH then MIG_CMD_PING(1) right after the header.
RETURN_PATH_COMMANDS = frozenset({MIG_CMD_OPEN_RETURN_PATH, MIG_CMD_PING})


def open_return_path_commands(ping: int = 1) -> bytes:
    """What a QEMU source with ``return-path`` sends after the header (migration_thread):
    MIG_CMD_OPEN_RETURN_PATH, then MIG_CMD_PING(``ping``)."""
    return (bytes([QEMU_VM_COMMAND]) + struct.pack(">HH", MIG_CMD_OPEN_RETURN_PATH, 0)
            + bytes([QEMU_VM_COMMAND]) + struct.pack(">HHI", MIG_CMD_PING, 4, ping))


def rp_message(msg_type: int, data: bytes = b"") -> bytes:
    """One return-path message: ``be16(type) be16(len) data``."""
    return struct.pack(">HH", msg_type, len(data)) + data


def rp_shut(failed: bool) -> bytes:
    """MIG_RP_MSG_SHUT: be32 1 when the load failed, 0 when everything was loaded."""
    return rp_message(MIG_RP_MSG_SHUT, struct.pack(">I", 1 if failed else 0))


def rp_pong(value: int) -> bytes:
    return rp_message(MIG_RP_MSG_PONG, struct.pack(">I", value & 0xFFFFFFFF))


class ReturnPathDecoder:
    """The source's reader of return-path messages (sans-I/O): :meth:`feed` bytes, get
    ``(type, data)`` tuples. Messages other than SHUT and PONG (postcopy's page requests,
    bitmaps, SWITCHOVER_ACK) are refused: this engine never asks for them."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.shut: int | None = None  # SHUT's value once received
        self.pongs: list[int] = []

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            msg_type, n = struct.unpack_from(">HH", self._buf, 0)
            if len(self._buf) < 4 + n:
                break
            body = bytes(self._buf[4:4 + n])
            del self._buf[:4 + n]
            name = MIG_RP_MSG_NAMES.get(msg_type, f"unknown return-path message {msg_type}")
            if msg_type == MIG_RP_MSG_SHUT and n == 4:
                if self.shut is not None:
                    raise StreamError("a second MIG_RP_MSG_SHUT on the return path",
                                      field="return path")
                self.shut = struct.unpack(">I", body)[0]
            elif msg_type == MIG_RP_MSG_PONG and n == 4:
                self.pongs.append(struct.unpack(">I", body)[0])
            else:
                raise StreamError(f"{name} ({n} bytes) on the return path: this source only "
                                  "understands MIG_RP_MSG_SHUT and MIG_RP_MSG_PONG",
                                  field="return path")
            out.append((msg_type, body))
        return out


def vmdescription_ends(trailer: bytes | bytearray) -> bool:
    """Whether ``trailer`` (what followed the RAM section's END) ends with QEMU_VM_EOF and a
    complete VMDESCRIPTION (``00 06 be32(len) json``): a QEMU source has sent everything and
    now waits for the destination's MIG_RP_MSG_SHUT instead of closing."""
    end = len(trailer)
    pos = end
    for _ in range(64):  # candidates from the end; the JSON rarely holds "\\x00\\x06"
        pos = trailer.rfind(b"\x00\x06", 0, pos)
        if pos < 0:
            return False
        if pos + 6 <= end and struct.unpack_from(">I", trailer, pos + 2)[0] == end - pos - 6:
            try:
                desc = json.loads(bytes(trailer[pos + 6:]))
            except ValueError:
                continue
            return isinstance(desc, dict)
    return False
