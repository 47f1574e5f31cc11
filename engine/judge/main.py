"""The main channel, judged through the engine's own :class:`MainStreamDecoder`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..constants import QEMU_VM_FILE_MAGIC, QEMU_VM_SECTION_END
from ..errors import StreamError
from ..mainstream import (
    RETURN_PATH_COMMANDS,
    EndOfSection,
    Event,
    MainStreamDecoder,
    MemSize,
    MultifdFlush,
    Page,
    SectionHeader,
    ZeroPage,
)
from .multifd import byte_order_hint
from .report import ChannelStats

if TYPE_CHECKING:
    from .core import TapChecker


class MainStreamChecker:
    """The main channel, checked through the engine's own :class:`MainStreamDecoder`.

    The decoder is the one parser of the QEVM stream (header, CONFIGURATION, the RAM
    section's block list, records, EOS and footers); this class turns its events into
    counters, notes and page-map entries. Whatever follows the RAM section's END footer
    (device sections, EOF, VMDESCRIPTION) is counted as opaque device-state bytes.
    """

    def __init__(self, tap: TapChecker, connection: int) -> None:
        self.tap = tap
        self.stats = ChannelStats(connection=connection, role="main")
        self.decoder = MainStreamDecoder(tap.dialect, page_size=tap.page_size)
        # A source with QEMU's return-path capability opens it and pings (every dialect).
        self.decoder.accepted_commands = self.decoder.accepted_commands | RETURN_PATH_COMMANDS
        self.flushes = 0
        #: kind of the RAM section being read (QEMU_VM_SECTION_START/PART/END)
        self.section_kind = 0
        #: MULTIFD_FLUSH records inside the RAM section's END section
        self.flushes_in_end = 0
        self.failed = False

    @property
    def machine_type(self) -> str | None:
        return self.decoder.machine_type

    @property
    def ram_done(self) -> bool:
        """The RAM section's END footer was read (all RAM of the migration arrived)."""
        return self.decoder.ram_end

    @property
    def round(self) -> int:
        """Sync rounds completed on the main channel (EOS <= 8.0, MULTIFD_FLUSH 8.1+)."""
        return self.stats.eos if self.tap.dialect.flush_after_each_section else self.flushes

    def feed(self, data: bytes | memoryview) -> None:
        self.stats.wire_bytes += len(data)
        if self.failed:
            return
        if self.decoder.bytes_in == 0 and len(data) >= 4:
            hint = byte_order_hint(data[:4], QEMU_VM_FILE_MAGIC, "the main channel's QEVM magic")
            if hint:
                raise StreamError(hint, field="magic")
        events: list[Event] = []
        try:
            self.decoder.feed(data, events)
        finally:
            # events decoded before a malformed item still count (and may free multifd
            # channels waiting for the block list) before the deviation is reported
            for ev in events:
                self._event(ev)

    def error_offset(self) -> int | None:
        return self.decoder.error_offset

    def _event(self, ev: Event) -> None:
        t = type(ev)
        tap = self.tap
        if t is ZeroPage:
            self.stats.zero_pages += 1
            tap._zero_page(ev.block, ev.offset, ev.fill)  # type: ignore[union-attr]
        elif t is Page:
            self.stats.pages += 1
            tap._main_page(ev.block, ev.offset, ev.data)  # type: ignore[union-attr]
        elif t is EndOfSection:
            self.stats.eos += 1
        elif t is MultifdFlush:  # the decoder admits it only in 8.1+ per-round dialects
            self.flushes += 1
            self.stats.flushes += 1
            if self.section_kind == QEMU_VM_SECTION_END:
                self.flushes_in_end += 1
        elif t is SectionHeader:
            self.section_kind = ev.kind  # type: ignore[union-attr]
        elif t is MemSize:
            tap._blocks_known(dict(ev.blocks))  # type: ignore[union-attr]
