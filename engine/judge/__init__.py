"""The wire judge: checks a migration's bytes against the dialect both ends negotiated.

Pure (sans-I/O): feed it the source -> destination bytes of every connection in accept order
(:meth:`TapChecker.feed`, :meth:`TapChecker.end`), then :meth:`TapChecker.finish` returns a
:class:`TapReport` with every deviation located by connection, channel, packet number, byte
offset and field, the tolerated sender quirks as notes, and what was counted (pages by kind,
packets, syncs, wire bytes per connection, which pages arrived). The validating proxy
(:mod:`qatmig_engine.tap`), the conformance suite and the engine's own tests share it. The
checks are listed in docs/wire-format.md ("The wire judge").
"""

from __future__ import annotations

from .core import TapChecker, check_capture
from .expect import Expectations
from .main import MainStreamChecker
from .multifd import MAX_PENDING, MultifdChannelChecker, byte_order_hint
from .report import (
    NOTE_EXAMPLES,
    BlockPages,
    ChannelStats,
    Deviation,
    Note,
    TapReport,
    format_report,
)

#: The judge under its own name (``TapChecker`` is the historical one the tap uses).
WireJudge = TapChecker
JudgeReport = TapReport

__all__ = [
    "MAX_PENDING", "NOTE_EXAMPLES", "BlockPages", "ChannelStats", "Deviation", "Expectations",
    "JudgeReport", "MainStreamChecker", "MultifdChannelChecker", "Note", "TapChecker",
    "TapReport", "WireJudge", "byte_order_hint", "check_capture", "format_report",
]
