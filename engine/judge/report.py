"""What the wire judge reports: deviations, notes, per-connection counters, the page map."""

from __future__ import annotations

from array import array
from dataclasses import asdict, dataclass, field
from typing import Any

from ..constants import TARGET_PAGE_SIZE
from ..errors import format_location

#: Examples kept per note kind (the count is always exact).
NOTE_EXAMPLES = 3


@dataclass
class Deviation:
    """One violation of the negotiated dialect, located as precisely as known.

    ``connection`` is the accept order (0 = first connection; -1 = the tap itself),
    ``packet_num`` the multifd packet's own number, ``offset`` the byte offset in that
    connection's source -> destination stream (of the field at fault where known).
    """

    message: str
    connection: int
    channel: int | None = None
    packet_num: int | None = None
    field: str | None = None
    offset: int | None = None

    def where(self) -> str:
        return format_location(connection=self.connection, channel=self.channel,
                               packet_num=self.packet_num, offset=self.offset, field=self.field)

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
    #: normal pages (multifd: ``normal_pages``; main: RAM_SAVE_FLAG_PAGE records)
    pages: int = 0
    payload_bytes: int = 0
    #: main channel only
    eos: int = 0
    #: main: RAM_SAVE_FLAG_ZERO records; multifd: the 9.0+ ``zero_pages`` field
    zero_pages: int = 0
    #: main channel only: RAM_SAVE_FLAG_MULTIFD_FLUSH records (8.1+ per-round dialects)
    flushes: int = 0
    #: qatzip evidence of which path compressed (docs/conformance.md, "A claimed hw"):
    #: gzip-ext members seen; data packets of more than 64 KiB in one member (the software
    #: path's layout: hardware cuts every 64 KiB into its own member); packets re-compressed
    #: with the engine's software producer (libqatzip's software bytes) to compare, and how
    #: many of those were byte-identical to it
    qatzip_members: int = 0
    qatzip_sw_layout: int = 0
    qatzip_sw_checked: int = 0
    qatzip_sw_identical: int = 0

    @property
    def page_bytes(self) -> int:
        return self.pages * TARGET_PAGE_SIZE

    @property
    def ratio(self) -> float | None:
        """Compression ratio as the engine's stats give it: raw page bytes / payload bytes
        (1.0 for none, 2.7 when the wire carries 37% of the guest bytes)."""
        if not (self.pages and self.payload_bytes and self.role == "multifd"):
            return None
        return self.page_bytes / self.payload_bytes


@dataclass
class BlockPages:
    """Which pages of one RAM block arrived, in which sync round, and whether the last copy
    equalled the source's final RAM (when the judge was given it)."""

    name: str
    used_length: int
    page_size: int
    #: per page: 1 + the sync round of the last copy received (0 = never arrived)
    last_round: array = field(repr=False, default_factory=lambda: array("I"))
    #: per page: 1 when the last copy equals the source's final RAM, 0 when not, 2 unknown
    last_ok: bytearray = field(repr=False, default_factory=bytearray)
    received: int = 0  # page copies received (normal + zero)
    sent_twice: int = 0  # copies of a page already received in the same round

    def __post_init__(self) -> None:
        n = self.used_length // self.page_size
        if not self.last_round:
            self.last_round = array("I", bytes(4 * n))
            self.last_ok = bytearray(b"\x02") * n

    @property
    def pages(self) -> int:
        return len(self.last_round)

    def missing(self) -> list[int]:
        """Page indexes that never arrived."""
        return [i for i, r in enumerate(self.last_round) if not r]

    def stale(self) -> list[int]:
        """Page indexes whose last copy differs from the source's final RAM."""
        return [i for i, ok in enumerate(self.last_ok) if ok == 0]


@dataclass
class TapReport:
    """What the judge saw: per-connection counters, deviations (errors), notes, page map."""

    dialect: str
    method: str | None
    machine_type: str | None
    ramblocks: dict[str, int]
    channels: list[ChannelStats]
    errors: list[Deviation]
    notes: list[Note]
    eos: int
    duration_s: float = 0.0
    #: RAM block name -> which pages arrived (empty when the block list never arrived)
    pages: dict[str, BlockPages] = field(default_factory=dict)
    #: sync rounds the main channel announced (EOS in 7.2, MULTIFD_FLUSH in 8.1+)
    rounds: int = 0
    #: deviations beyond ``max_errors`` that were counted but not kept
    errors_dropped: int = 0
    #: QEMU_VM_COMMAND sections seen on the main channel (QEMU's names, in order).
    commands: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def totals(self) -> dict[str, Any]:
        mf = [c for c in self.channels if c.role == "multifd"]
        main = [c for c in self.channels if c.role == "main"]
        pages = sum(c.pages for c in mf)
        payload = sum(c.payload_bytes for c in mf)
        mf_zero = sum(c.zero_pages for c in mf)
        main_zero = sum(c.zero_pages for c in main)
        main_pages = sum(c.pages for c in main)
        return {
            "connections": len(self.channels),
            "multifd_channels": len(mf),
            "packets": sum(c.packets for c in mf),
            "sync_packets": sum(c.sync_packets for c in mf),
            "pages": pages,
            "payload_bytes": payload,
            "page_bytes": pages * TARGET_PAGE_SIZE,
            "wire_bytes": sum(c.wire_bytes for c in self.channels),
            "ratio": round(pages * TARGET_PAGE_SIZE / payload, 4) if pages and payload else None,
            # every page copy by kind, whichever channel carried it (QEMU's normal/duplicate)
            "normal_pages": pages + main_pages,
            "zero_pages": mf_zero + main_zero,
            "multifd_zero_pages": mf_zero,
            "main_zero_pages": main_zero,
            "main_pages": main_pages,
            "rounds": self.rounds,
            "unique_pages": sum(b.pages - len(b.missing()) for b in self.pages.values()),
            "missing_pages": sum(len(b.missing()) for b in self.pages.values()),
            "pages_sent_twice": sum(b.sent_twice for b in self.pages.values()),
        }

    def wire_bytes(self, channel: int | None = None) -> int:
        """Bytes on the multifd connection of ``channel`` (None: the main connection)."""
        for c in self.channels:
            if (channel is None and c.role == "main") or (
                    channel is not None and c.role == "multifd" and c.channel == channel):
                return c.wire_bytes
        raise KeyError(f"no connection for channel {channel}")

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
            "rounds": self.rounds,
            "commands": self.commands,
            "duration_s": round(self.duration_s, 3),
            "totals": self.totals(),
            "channels": chans,
            "errors": [asdict(e) | {"where": e.where()} for e in self.errors],
            "errors_dropped": self.errors_dropped,
            "notes": [asdict(n) for n in self.notes],
        }


class Notes:
    """Note kinds seen so far (exact counts, a few examples each)."""

    def __init__(self) -> None:
        self.by_kind: dict[str, Note] = {}

    def add(self, kind: str, text: str, example: str) -> None:
        note = self.by_kind.get(kind)
        if note is None:
            note = self.by_kind[kind] = Note(kind, text)
        note.count += 1
        if len(note.examples) < NOTE_EXAMPLES:
            note.examples.append(example)


def format_report(report: TapReport) -> str:
    """Human-readable summary: one row per connection, then errors and notes."""
    from ..cli._common import format_table

    rows = []
    for c in report.channels:
        rows.append([
            c.connection, c.role, "-" if c.channel is None else c.channel,
            c.packets, c.sync_packets, c.pages, c.payload_bytes, c.wire_bytes,
            f"{c.ratio:.2f}" if c.ratio is not None else "-",
            c.eos if c.role == "main" else "-", c.zero_pages,
        ])
    t = report.totals()
    rows.append(["total", "", "", t["packets"], t["sync_packets"], t["pages"],
                 t["payload_bytes"], t["wire_bytes"],
                 f"{t['ratio']:.2f}" if t["ratio"] is not None else "-", report.eos,
                 t["zero_pages"]])
    lines = [
        f"tap: dialect {report.dialect}, multifd-compression {report.method or '?'}, "
        f"machine {report.machine_type or '?'}, {len(report.ramblocks)} RAM blocks, "
        f"{report.duration_s:.2f} s",
        format_table(["conn", "role", "channel", "packets", "sync", "pages", "payload B",
                      "wire B", "ratio", "EOS", "zero pages"], rows),
        "payload B: compressed page data; wire B: every byte of the connection; ratio: guest "
        "page bytes / payload B (as `qatmig migrate` prints it)",
    ]
    if report.pages:
        lines.append(f"pages: {t['unique_pages']} of "
                     f"{sum(b.pages for b in report.pages.values())} arrived, "
                     f"{t['pages_sent_twice']} sent twice in a round, {report.rounds} rounds")
    for n in report.notes:
        ex = "; ".join(n.examples)
        lines.append(f"note: {n.text}: {n.count} time(s) (e.g. {ex})")
    if report.errors:
        for e in report.errors:
            lines.append(f"ERROR: {e}")
        more = f" (+{report.errors_dropped} not kept)" if report.errors_dropped else ""
        lines.append(f"tap: FAILED with {len(report.errors)} deviation(s){more}")
    else:
        lines.append("tap: OK, every byte checked")
    return "\n".join(lines)

