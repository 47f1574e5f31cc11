#!/usr/bin/env python3
"""Mutation score of the conformance suite: one-defect copies of the reference engine, each run
through the suite the way a third party's implementation is run, and whether the suite failed it.

Every mutant is a realistic mistake of a third-party multifd implementation (wrong magic on both
ends, little-endian headers, zero pages counted but never sent, a zlib decoder inflating a whole
bomb, stats doubling throughput, ``qat_backend: hw`` while compressing in software, ...). It is
built as a third party ships: a patched *copy* of the ``qatmig_engine`` package in a temporary
directory (text patches; each patch must apply exactly as written, or the harness stops), run as an
``exec:`` program::

    PYTHONPATH=<mutant dir> python -c 'from qatmig_engine.cli import main; main()' "$@"

so the suite process itself only ever imports the pristine ``qatmig_engine`` (its judge, its
reference peer) and never runs mutated code. A pristine copy built the same way runs first as the
control: it must pass, or every "kill" would mean nothing.

A mutant is *killed* when the suite fails (pytest exit status 1); it *survived* when the suite
passes (0); any other outcome (usage error, internal error, timeout) is reported as ``error`` and
is not counted as a kill.

Usage::

    python benchmarks/mutation_score.py                    # every mutant, table on stdout
    python benchmarks/mutation_score.py --fast             # the CI subset
    python benchmarks/mutation_score.py --only wire-magic-both-ends --keep
    python benchmarks/mutation_score.py --list             # the mutants, no run
    python benchmarks/mutation_score.py --json out.json --update-docs   # docs/conformance.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE_SRC = ROOT / "engine"
DOC = ROOT / "docs" / "conformance.md"
DOC_BEGIN = "<!-- mutation-score:begin (benchmarks/mutation_score.py --update-docs) -->"
DOC_END = "<!-- mutation-score:end -->"
#: Seconds one suite run against one mutant may take before it is reported as ``error``.
DEFAULT_TIMEOUT = 900.0


class PatchError(RuntimeError):
    """A mutant's patch no longer applies to the engine (the engine changed: update the mutant)."""


@dataclass(frozen=True)
class Patch:
    """Replace ``old`` by ``new`` in ``path`` (relative to the engine package), ``count`` times."""

    path: str
    old: str
    new: str
    count: int = 1


@dataclass(frozen=True)
class Mutant:
    name: str
    area: str  # wire, codecs, engine, stats, qat, params
    defect: str  # what a third party got wrong, in one line
    patches: tuple[Patch, ...]
    #: In the CI subset (tests/test_mutation_score.py) with this ``-k`` selection of the suite.
    ci_select: str | None = None


def _p(path: str, old: str, new: str, count: int = 1) -> Patch:
    return Patch(path, old, new, count)


SENDER_INIT = "init = InitPacket(ch, src.uuid).encode()"
DST_INIT_DECODE = "init = InitPacket.decode(raw, expected_uuid=self.uuid, channels=n)"

MUTANTS: tuple[Mutant, ...] = (
    # ------------------------------------------------------------------ wire
    Mutant("wire-magic-both-ends", "wire", "MULTIFD_MAGIC 0x11223345 on both ends",
           (_p("constants.py", "MULTIFD_MAGIC = 0x11223344", "MULTIFD_MAGIC = 0x11223345"),),
),
    Mutant("wire-version-2", "wire", "MULTIFD_VERSION 2 on both ends",
           (_p("constants.py", "MULTIFD_VERSION = 1", "MULTIFD_VERSION = 2"),)),
    Mutant("wire-little-endian-header", "wire",
           "packet header and offsets packed little-endian on both ends",
           (_p("wire.py", '_FIXED = struct.Struct(">IIIIIIQII24s256s")',
               '_FIXED = struct.Struct("<IIIIIIQII24s256s")'),
            _p("wire.py", 'struct.Struct(f">{n}Q")', 'struct.Struct(f"<{n}Q")')),
           ci_select="test_round_trip_per_method and none"),
    Mutant("wire-channel-ids-from-1", "wire", "channel ids 1..n in init packets, both ends",
           (_p("source.py", SENDER_INIT, "init = InitPacket(ch + 1, src.uuid).encode()"),
            _p("destination.py", DST_INIT_DECODE,
               "init = InitPacket.decode(raw, expected_uuid=self.uuid, channels=n + 1)"),
            _p("destination.py", "_Receiver(self, i, chans[i]) for i in range(n)",
               "_Receiver(self, i, chans[i + 1]) for i in range(n)"))),
    Mutant("wire-qatzip-flag-0x10", "wire", "qatzip packets flagged 0x10 (UADK's bit), both ends",
           (_p("constants.py", "MULTIFD_FLAG_QATZIP = 16 << 1", "MULTIFD_FLAG_QATZIP = 8 << 1"),)),
    Mutant("wire-packet-num-constant", "wire", "packet_num never incremented",
           (_p("source.py", "return next(self._pnum)", "return 0 * next(self._pnum)"),)),
    Mutant("wire-uuid-zeroed", "wire",
           "init packets carry a zero uuid; the destination does not check it",
           (_p("source.py", SENDER_INIT, "init = InitPacket(ch, bytes(16)).encode()"),
            _p("destination.py", DST_INIT_DECODE,
               "init = InitPacket.decode(raw, expected_uuid=None, channels=n)"))),
    Mutant("wire-zero-pages-field-under-7.2", "wire",
           "9.x zero_pages field and multifd zero pages used in the 7.2 dialect, both ends",
           (_p("dialects.py", 'has_zero_pages=False,\n        zero_page_detection=("legacy", '
               '"none"),\n        default_zero_page_detection="legacy",',
               'has_zero_pages=True,\n        zero_page_detection=("legacy", "none", '
               '"multifd"),\n        default_zero_page_detection="multifd",'),)),
    Mutant("wire-dialect-ignored", "wire", "always speaks qemu-9.2, whatever dialect is asked",
           (_p("source.py", "self.dialect = get_dialect(params.dialect)",
               'self.dialect = get_dialect("qemu-9.2")'),
            _p("destination.py", "self.dialect = get_dialect(params.dialect)",
               'self.dialect = get_dialect("qemu-9.2")'))),
    Mutant("wire-7.2-multifd-before-main", "wire",
           "opens the multifd channels before the main one under qemu-7.2 too; its destination "
           "always peeks the magic",
           (_p("source.py", "if self.dialect.channel_by_magic:", "if True:"),
            _p("destination.py", "by_magic = self.dialect.channel_by_magic", "by_magic = True"))),
    Mutant("wire-offsets-32-bit", "wire", "page offsets truncated to 32 bits on the wire",
           (_p("wire.py", "pack_into(buf, MULTIFD_PACKET_FIXED_SIZE, *self.offsets)",
               "pack_into(buf, MULTIFD_PACKET_FIXED_SIZE, "
               "*(o & 0xFFFFFFFF for o in self.offsets))"),),
           ci_select="test_a_sparse_guest_with_data_above_4_gib"),
    Mutant("wire-no-multifd-flush", "wire",
           "no RAM_SAVE_FLAG_MULTIFD_FLUSH at the end of a round (9.x); destination syncs at EOS",
           (_p("mainstream.py",
               'flush = b"" if self.dialect.flush_after_each_section else self.multifd_flush()',
               'flush = b""'),
            _p("destination.py", "if self.dialect.flush_after_each_section:\n", "if True:\n"))),
    Mutant("wire-sync-packet-keeps-method-bit", "wire",
           "SYNC packets flagged with the compression bit and stale pages_alloc in 9.x",
           (_p("wire.py", "flags=MULTIFD_FLAG_SYNC,\n        pages_alloc=page_count(page_size) "
               'if d.name == "qemu-7.2" else 0,',
               "flags=MULTIFD_FLAG_SYNC | d.method_flag(method),\n        "
               "pages_alloc=page_count(page_size),"),)),
    # ------------------------------------------------------------------ engine
    Mutant("engine-zero-pages-counted-not-sent", "engine",
           "multifd zero pages counted but never put in the packet",
           (_p("source.py", "zero_pages=len(zeros), ramblock=blk.name, offsets=normal + zeros,",
               "zero_pages=0, ramblock=blk.name, offsets=normal,"),)),
    Mutant("engine-destination-ignores-zero-pages", "engine",
           "destination assumes its RAM is zero and skips zero pages (multifd and main channel)",
           (_p("destination.py", "                        view[o : o + ps] = zero\n",
               "                        pass\n"),
            _p("destination.py", "                view[o : o + ps] = self.zero_page\n",
               "                pass\n"))),
    Mutant("engine-last-partial-packet-dropped", "engine",
           "the last, partial packet of each RAM block is never queued",
           (_p("source.py",
               "            if pending:\n                self._put(_Job(blk, pending))",
               "            if pending and len(pending) == per_packet:\n"
               "                self._put(_Job(blk, pending))"),)),
    Mutant("engine-only-first-ramblock-sent", "engine",
           "every RAM block announced, but only the first block's pages are sent",
           (_p("source.py", "        for blk in self.guest.blocks:\n            bitmap = ",
               "        for blk in self.guest.blocks[:1]:\n            bitmap = "),),
           ci_select="test_several_ram_blocks_with_qemu_names_and_sizes and qemu-9.2"),
    Mutant("engine-packets-span-ramblocks", "engine",
           "a packet is filled across a RAM block boundary and named after the later block",
           (_p("source.py",
               "        for blk in self.guest.blocks:\n            bitmap = taken.get(blk.name)\n"
               "            if bitmap is None:\n                continue\n"
               "            pending: list[int] = []\n",
               "        pending: list[int] = []\n"
               "        for blk in self.guest.blocks:\n            bitmap = taken.get(blk.name)\n"
               "            if bitmap is None:\n                continue\n"),
            _p("source.py",
               "            if pending:\n                self._put(_Job(blk, pending))\n"
               "        return queued, zeros_main",
               "        if pending:\n            self._put(_Job(blk, pending))\n"
               "        return queued, zeros_main"))),
    Mutant("dest-ramblock-name-ignored", "engine",
           "the destination writes every multifd packet into the first RAM block",
           (_p("destination.py", "                blk = dst.guest.block(pkt.ramblock)\n",
               "                blk = dst.guest.blocks[0]\n"),)),
    Mutant("wire-7.2-continue-across-blocks", "wire",
           "qemu-7.2 main channel: ZERO records keep CONTINUE when the RAM block changes",
           (_p("mainstream.py", "        if block == self._last_block:\n",
               "        if self._last_block is not None:\n"),)),
    Mutant("engine-final-round-forgotten", "engine",
           "stop-and-copy sends nothing: the final dirty pages never leave",
           (_p("source.py", "        _, zrec = self._queue_pages(final)\n",
               "        zrec = 0\n"),),
           ci_select="test_the_final_dirty_round_arrives and qemu-9.2"),
    Mutant("engine-final-round-misses-last-iteration", "engine",
           "stop-and-copy sends only pages dirtied after the last sync, not those still pending",
           (_p("source.py", 'f[first : first + count] = b"\\x01" * count', "pass"),)),
    Mutant("engine-channel-count-ignored", "engine",
           "always 2 multifd channels, whatever multifd-channels says (reported as asked)",
           (_p("source.py", "self.channels = params.multifd_channels", "self.channels = 2"),
            _p("destination.py", "self.channels = params.multifd_channels",
               "self.channels = 2"))),
    Mutant("engine-max-bandwidth-ignored", "engine", "max-bandwidth accepted and ignored",
           (_p("ratelimit.py", "        if self.rate == 0:\n            self.total",
               "        if True:\n            self.total"),)),
    Mutant("engine-max-bandwidth-per-channel", "engine",
           "max-bandwidth applied per multifd channel instead of to the whole migration",
           (_p("source.py", "        src.limiter.consume(nbytes)\n", "        pass\n"),
            _p("source.py", "        self.counters = SideCounters()\n        self.resume",
               "        self.counters = SideCounters()\n"
               "        from .ratelimit import RateLimiter as _RL\n"
               "        self._own = _RL(src.params.max_bandwidth, cancel=src.act.cancel)\n"
               "        self.resume"),
            _p("source.py", "        transport.sendmsg_all(self.sock, bufs, src.act",
               "        self._own.consume(nbytes)\n"
               "        transport.sendmsg_all(self.sock, bufs, src.act"))),
    Mutant("engine-compression-replaced-by-none", "engine",
           "compression silently replaced by none on both ends; the requested method is reported",
           (_p("source.py", "        method = src.method\n", '        method = "none"\n'),
            _p("destination.py", "self.method = params.multifd_compression",
               'self.method = "none"'))),
    # ------------------------------------------------------------------ codecs
    Mutant("codec-zlib-level-ignored", "codecs", "zlib always deflates at level 1",
           (_p("codecs/multifd_zlib.py", "self._z = zlib.compressobj(level)",
               "self._z = zlib.compressobj(1)"),
            _p("codecs/multifd_zlib.py", "rc = _zf.deflate_init(self._strm, level)",
               "rc = _zf.deflate_init(self._strm, 1)"))),
    Mutant("codec-zstd-level-ignored", "codecs", "zstd always compresses at level 1",
           (_p("codecs/multifd_zstd.py", "zstandard.ZstdCompressor(level=level).compressobj()",
               "zstandard.ZstdCompressor(level=1).compressobj()"),)),
    Mutant("codec-qatzip-level-ignored", "codecs", "qatzip always compresses at level 1",
           (_p("codecs/multifd_qatzip.py", "return qzformat.compress(pages, self.level)",
               "return qzformat.compress(pages, 1)"),)),
    Mutant("codec-zlib-default-level-6", "codecs",
           "zlib's default level is zlib's own 6, not QEMU's 1",
           (_p("constants.py", "DEFAULT_MIGRATE_MULTIFD_ZLIB_LEVEL = 1",
               "DEFAULT_MIGRATE_MULTIFD_ZLIB_LEVEL = 6"),
            _p("cli/migrate.py", '"--multifd-zlib-level", type=int, default=1,',
               '"--multifd-zlib-level", type=int, default=6,'))),
    Mutant("codec-zlib-stream-per-packet", "codecs",
           "a new zlib stream (header) for every packet, on both ends",
           (_p("codecs/multifd_zlib.py",
               "        z = self._z\n        return z.compress(pages) + z.flush(zlib.Z_SYNC_FLUSH)",
               "        z = zlib.compressobj(self.level)\n"
               "        return z.compress(pages) + z.flush(zlib.Z_SYNC_FLUSH)"),
            _p("codecs/multifd_zlib.py", "        z = self._z\n        try:",
               "        z = self._z = zlib.decompressobj()\n        try:"),
            # the libz fast paths: a fresh deflate / inflate stream for every packet
            _p("codecs/multifd_zlib.py", "        strm, size = self._strm, len(self._out)\n",
               "        self._strm = _zf.new_stream()\n"
               "        _zf.deflate_init(self._strm, self.level)\n"
               "        strm, size = self._strm, len(self._out)\n"),
            _p("codecs/multifd_zlib.py", "        ffi = _zf.ffi\n        strm = self._strm\n",
               "        ffi = _zf.ffi\n        self._strm = _zf.new_stream()\n"
               "        _zf.inflate_init(self._strm)\n        strm = self._strm\n"))),
    Mutant("codec-zstd-frame-per-packet", "codecs",
           "every zstd packet is a whole frame (ZSTD_e_end per packet), on both ends",
           (_p("codecs/multifd_zstd.py", "return z.compress(pages) + z.flush(_FLUSH_BLOCK)",
               "return zstandard.ZstdCompressor(level=self.level).compress(bytes(pages))"),
            # the source compresses guest RAM in place through compress_parts
            _p("codecs/multifd_zstd.py", "            out = [z.compress(p) for p in parts]\n"
               "            out.append(z.flush(_FLUSH_BLOCK))\n",
               "            out = [zstandard.ZstdCompressor(level=self.level).compress("
               "b\"\".join(parts))]\n"))),
    Mutant("codec-qatzip-plain-gzip", "codecs",
           "qatzip payloads are plain gzip members (no QZ extra field)",
           (_p("codecs/multifd_qatzip.py", "return qzformat.compress(pages, self.level)",
               'return __import__("gzip").compress(bytes(pages), self.level, mtime=0)'),)),
    Mutant("codec-zlib-bomb-inflated", "codecs",
           "zlib decoder inflates the whole payload before checking its size",
           (_p("codecs/multifd_zlib.py", "out = z.decompress(payload, expected + 1)",
               "out = z.decompress(payload)"),
            # the libz fast path: the rest of the payload into one big buffer, checked after
            _p("codecs/multifd_zlib.py",
               "            strm.next_out, strm.avail_out = self._spare, 1\n",
               "            _all = _zf.ffi.new(\"unsigned char[]\", 1 << 28)\n"
               "            strm.next_out, strm.avail_out = _all, 1 << 28\n"
               "            while strm.avail_in and inflate(strm, flush) == ok:\n"
               "                pass\n"
               "            if strm.avail_out != 1 << 28:\n"
               "                raise self._fail(\"size mismatch\", _shared.size_mismatch(\n"
               "                    ch, expected + 1, expected, \"payload inflates to more\"))\n"
               "            strm.next_out, strm.avail_out = self._spare, 1\n")),
           ci_select="test_bad_session_is_refused and zlib-bomb"),
    Mutant("codec-qatzip-bomb-inflated", "codecs",
           "qatzip decoder inflates the whole payload before checking its size",
           (_p("codecs/multifd_qatzip.py",
               "out = qzformat.decompress(payload, max_output=expected)",
               "out = qzformat.decompress(payload, max_output=1 << 31)"),)),
    # ------------------------------------------------------------------ destination checks
    Mutant("dest-uuid-not-checked", "wire", "destination accepts any uuid",
           (_p("destination.py", DST_INIT_DECODE,
               "init = InitPacket.decode(raw, expected_uuid=None, channels=n)"),),
           ci_select="test_bad_session_is_refused and uuid-mismatch"),
    Mutant("dest-duplicate-channel-accepted", "wire",
           "destination does not refuse a second channel with the same id",
           (_p("destination.py", "                if init.channel_id in chans:\n"
               "                    raise duplicate_channel_error(init.channel_id)\n", ""),)),
    Mutant("dest-completes-without-ram-end", "engine",
           "destination reports completed when the main channel closes mid-stream",
           (_p("destination.py", "                    dec.close()\n",
               "                    pass\n"),)),
    Mutant("dest-wrong-flags-accepted", "wire",
           "destination ignores the compression flag of incoming packets",
           (_p("wire.py", "if comp != self.expected_flag and (has_data or comp):",
               "if False:"),)),
    # ------------------------------------------------------------------ stats / qat / params
    Mutant("stats-throughput-doubled", "stats", "throughput counts every bit twice",
           (_p("stats.py", "return self.transferred_bytes * 8 / self._active_seconds / 1e6",
               "return self.transferred_bytes * 16 / self._active_seconds / 1e6"),)),
    Mutant("stats-downtime-zero", "stats", "downtime reported as 0 ms",
           (_p("api.py", "st.downtime_ms = (src.end_time - src.stop_time) * 1000",
               "st.downtime_ms = 0.0"),
            _p("api.py", "st.downtime_ms = (end - src.stop_time) * 1000",
               "st.downtime_ms = 0.0"))),
    Mutant("stats-normal-pages-per-packet", "stats", "normal_pages counts packets, not pages",
           (_p("source.py", "c.normal_pages += n\n", "c.normal_pages += 1\n"),)),
    Mutant("stats-transferred-payload-only", "stats",
           "transferred bytes count only the payloads (no headers, no main channel)",
           (_p("stats.py", "return s.multifd_bytes + s.main_bytes", "return s.payload_bytes"),)),
    Mutant("stats-compression-ratio-inverted", "stats", "compression ratio inverted",
           (_p("stats.py", "return s.normal_pages * self.page_size / s.payload_bytes",
               "return s.payload_bytes / (s.normal_pages * self.page_size)"),)),
    Mutant("qat-backend-hw-claimed", "qat",
           "reports qat_backend hw while compressing in software",
           (_p("source.py", "st.qat_backend = self.qat.backend", 'st.qat_backend = "hw"'),)),
    Mutant("qat-fallback-off-ignored", "qat",
           "qat-fallback off with no device still migrates in software",
           (_p("qat/backend.py", 'fallback = bool(getattr(params, "qat_fallback", True))',
               "fallback = True"),)),
    Mutant("params-level-range-off-by-one", "params",
           "accepts one level above each method's range (zlib 10, zstd 21, qatzip 10)",
           (_p("params.py", '("multifd_zlib_level", 0, 9),', '("multifd_zlib_level", 0, 10),'),
            _p("params.py", '("multifd_zstd_level", 0, 20),', '("multifd_zstd_level", 0, 21),'),
            _p("params.py", '("multifd_qatzip_level", 1, 9),',
               '("multifd_qatzip_level", 1, 10),'),
            _p("codecs/_shared.py", "or not lo <= level <= hi:", "or not lo <= level <= hi + 1:"),
            _p("codecs/multifd_qatzip.py", "level, 1, 9,", "level, 1, 10,"))),
    # ------------------------------------------------------------------ added in part 2
    Mutant("engine-zero-page-detection-ignored", "engine",
           "zero-page-detection is always the dialect's default (none is ignored)",
           (_p("source.py",
               "self.zero_page_detection = params.effective_zero_page_detection",
               "self.zero_page_detection = get_dialect(params.dialect)"
               ".default_zero_page_detection"),)),
    Mutant("engine-multifd-zero-pages-sent-as-data", "engine",
           "zero-page-detection multifd (9.x): zero pages sent as normal data pages",
           (_p("source.py", 'zero_in_packet = src.zero_page_detection == "multifd"',
               "zero_in_packet = False"),)),
    Mutant("dest-multifd-zero-pages-skipped", "engine",
           "9.x destination never writes the zero pages of a packet (assumes zeroed RAM)",
           (_p("destination.py", "                        view[o : o + ps] = zero\n",
               "                        pass\n"),)),
    Mutant("stats-pages-per-second-normal-only", "stats",
           "pages-per-second counts normal pages only",
           (_p("stats.py", "return (self.normal_pages + self.zero_pages) / self._active_seconds",
               "return self.normal_pages / self._active_seconds"),)),
    Mutant("stats-normal-pages-include-zero", "stats",
           "normal_pages counts zero pages too",
           (_p("stats.py", "        return self._side.normal_pages\n",
               "        return self._side.normal_pages + self._side.zero_pages\n"),)),
    Mutant("stats-downtime-is-total-time", "stats",
           "downtime measured from the start of the migration (= total time)",
           (_p("api.py", "            st.downtime_ms = (src.end_time - src.stop_time) * 1000",
               "            st.downtime_ms = st.total_time_ms"),)),
    Mutant("stats-transferred-multifd-only", "stats",
           "transferred bytes count the multifd channels only (not the main channel)",
           (_p("stats.py", "return s.multifd_bytes + s.main_bytes", "return s.multifd_bytes"),)),
    Mutant("stats-verified-always-true", "stats",
           "reports verified true without comparing (an honest engine otherwise)",
           (_p("api.py", "st.verified = guest.same_content(dst_guest)", "st.verified = True"),)),
    # ------------------------------------------------------------------ added in part 3
    Mutant("dest-qatzip-trailer-not-checked", "codecs",
           "qatzip destination inflates each member's raw deflate data and skips its "
           "CRC-32/ISIZE trailer unchecked",
           (_p("codecs/qzformat.py", "        d = zlib.decompressobj(_WBITS_GZIP)\n",
               "        d = zlib.decompressobj(_WBITS_RAW)\n"
               "        body = chunk[h.header_len:]\n"),
            _p("codecs/qzformat.py", "out = d.decompress(chunk, budget - produced + 1)",
               "out = d.decompress(body, budget - produced + 1)"),
            _p("codecs/qzformat.py", "out = d.decompress(chunk)\n", "out = d.decompress(body)\n"),
            # the 8 trailer bytes are stepped over, never compared
            _p("codecs/qzformat.py", "used = len(chunk) - len(d.unused_data)\n",
               "used = len(chunk) - len(d.unused_data) + GZIP_FOOTER_LEN\n"))),
    Mutant("codec-zstd-bomb-inflated", "codecs",
           "zstd decoder inflates the rest of a payload whole (no output bound) before "
           "checking its size",
           (_p("codecs/multifd_zstd.py",
               "        outb.dst, outb.size, outb.pos = self._spare, 1, 0\n",
               "        if inb.pos < n:  # whatever the rest yields, in one big buffer\n"
               "            _all = _ffi.new(\"char[]\", 1 << 28)\n"
               "            outb.dst, outb.size, outb.pos = _all, 1 << 28, 0\n"
               "            while inb.pos < n and outb.pos < outb.size:\n"
               "                hint = ret = lib.ZSTD_decompressStream(ds, outb, inb)\n"
               "                if lib.ZSTD_isError(ret):\n"
               "                    break\n"
               "            if outb.pos:\n"
               "                raise self._fail(\"size mismatch\", _shared.size_mismatch(\n"
               "                    ch, expected + 1, expected, \"payload inflates to more\"))\n"
               "        outb.dst, outb.size, outb.pos = self._spare, 1, 0\n"),)),
    # Faults mid-run (conformance/test_fallback.py, test_faults.py); each is also checked
    # against the message of its own test by tests/test_conformance_faults.py.
    Mutant("fallback-loses-the-failing-packet", "qat",
           "the packet the backend failed on is replaced by zeros instead of compressed again",
           (_p("qat/backend.py",
               "            except (QatmigError, MemoryError) as exc:\n"
               "                self._switch(exc)\n",
               "            except (QatmigError, MemoryError) as exc:\n"
               "                self._switch(exc)\n"
               "                data = bytes(len(memoryview(data).cast('B')))\n"),)),
    Mutant("fallback-silent", "qat", "falls back to software mid-run without reporting it",
           (_p("qat/backend.py", "        self._record({", "        (lambda event: None)({"),)),
    Mutant("fallback-off-ignored-mid-run", "qat",
           "qat-fallback off, and a backend failure mid-run still falls back to software",
           (_p("qat/backend.py", "                  if self.fallback else "
               "CheckedQzEngine(primary, channel))",
               "                  )"),)),
    Mutant("dest-lost-channel-completes", "engine",
           "a destination reports completed when a multifd connection closes early",
           (_p("destination.py",
               "        except Exception as exc:  # typed errors expected; anything else is "
               "a bug, still no hang\n            st.record_failure(exc, self.act.error)",
               "        except Exception as exc:  # typed errors expected; anything else is "
               "a bug, still no hang\n"
               "            if isinstance(self.act.error or exc, ChannelClosed):\n"
               "                st.status = \"completed\"\n"
               "            else:\n"
               "                st.record_failure(exc, self.act.error)"),)),
)


# ---------------------------------------------------------------------------------- build
def apply_patches(pkg: Path, patches: Sequence[Patch]) -> None:
    """Apply ``patches`` to the package copy at ``pkg``; PatchError unless each applies exactly."""
    for p in patches:
        f = pkg / p.path
        text = f.read_text()
        found = text.count(p.old)
        if found != p.count:
            raise PatchError(
                f"{p.path}: expected {p.count} occurrence(s) of {p.old[:60]!r}, found {found}"
            )
        f.write_text(text.replace(p.old, p.new))


WRAPPER = """#!/bin/sh
# {name}: the qatmig CLI of a patched copy of qatmig_engine ({defect}).
PYTHONPATH={dir}${{PYTHONPATH:+:$PYTHONPATH}} exec {python} -c \\
  'import sys; from qatmig_engine.cli import main; sys.exit(main())' "$@"
"""


def build(mutant: Mutant | None, root: Path, python: str = sys.executable) -> Path:
    """Copy the engine into ``root/<name>/qatmig_engine``, patch it and write the ``exec:``
    program ``root/<name>/qatmig``; returns the program's path. ``None`` = the pristine copy."""
    name = mutant.name if mutant is not None else "pristine"
    d = root / name
    pkg = d / "qatmig_engine"
    shutil.copytree(ENGINE_SRC, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    if mutant is not None:
        apply_patches(pkg, mutant.patches)
    prog = d / "qatmig"
    prog.write_text(WRAPPER.format(
        name=name, defect=mutant.defect if mutant else "no defect", dir=shlex.quote(str(d)),
        python=shlex.quote(python)))
    prog.chmod(0o755)
    return prog


def check_isolated(prog: Path) -> str:
    """The ``qatmig_engine`` the program imports (must be its own copy, not the editable one)."""
    d = prog.parent
    out = subprocess.run(
        ["/bin/sh", "-c", f"PYTHONPATH={shlex.quote(str(d))} {shlex.quote(sys.executable)} -c "
         "'import qatmig_engine; print(qatmig_engine.__file__)'"],
        capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    if not out.startswith(str(d)):
        raise RuntimeError(f"{prog}: imports {out}, not its own copy: the editable install's "
                           "finder shadows PYTHONPATH")
    return out


def check_pristine(cwd: Path, env: dict[str, str]) -> None:
    """The suite, started in ``cwd`` with ``env``, imports this repository's engine."""
    out = subprocess.run(
        [sys.executable, "-c", "import qatmig_engine; print(qatmig_engine.__file__)"],
        capture_output=True, text=True, timeout=60, check=True, cwd=cwd, env=env).stdout.strip()
    if not Path(out).resolve().is_relative_to(ENGINE_SRC.resolve()):
        raise RuntimeError(f"the suite would import {out}, not the pristine engine in "
                           f"{ENGINE_SRC}: its judge and peer would be mutated too")


# ---------------------------------------------------------------------------------- run
@dataclass
class Outcome:
    name: str
    area: str
    defect: str
    verdict: str  # killed, survived, error
    killed_by: list[str] = field(default_factory=list)
    exit_status: int | None = None
    seconds: float = 0.0
    detail: str = ""


def _failed_tests(junit: Path) -> list[str]:
    try:
        tree = ET.parse(junit)
    except (OSError, ET.ParseError):
        return []
    out = []
    for case in tree.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            out.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return out


def run_suite(prog: Path, *, select: str | None = None, workers: int = 2,
              timeout: float = DEFAULT_TIMEOUT, stop_first: bool = True,
              extra: Sequence[str] = (), impl: str = "exec:{prog}") -> tuple[int | None, list[str],
                                                                          float, str]:
    """Run the conformance suite against ``prog``; (exit status, failed test ids, seconds, tail)."""
    junit = prog.parent / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "qatmig_conformance", "-p", "qatmig",
           f"--qatmig-impl={impl.format(prog=prog)}", "-q", "-p", "no:cacheprovider",
           f"--junitxml={junit}", "-o", "junit_family=xunit2"]
    if workers > 1:
        cmd += ["-n", str(workers)]
    if stop_first:
        cmd += ["-x"]
    if select:
        cmd += ["-k", select]
    cmd += list(extra)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Never beside the mutant's package: "python -m" puts the working directory first on
    # sys.path, and the suite would import the mutated engine as its judge and its peer.
    cwd = prog.parent / "suite-run"
    cwd.mkdir(exist_ok=True)
    check_pristine(cwd, env)
    t0 = time.monotonic()
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                            cwd=cwd, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
        return None, _failed_tests(junit), time.monotonic() - t0, out[-2000:]
    return cp.returncode, _failed_tests(junit), time.monotonic() - t0, \
        (cp.stdout + cp.stderr)[-3000:]


def score(mutant: Mutant, root: Path, **kw: object) -> Outcome:
    prog = build(mutant, root)
    rc, failed, secs, tail = run_suite(prog, **kw)  # type: ignore[arg-type]
    # With -x under xdist pytest may end "interrupted" (2) after the first failure.
    if rc == 0:
        verdict = "survived"
    elif rc in (1, 2) and failed:
        verdict = "killed"
    else:
        verdict = "error"
    detail = "" if verdict != "error" else (
        "timeout" if rc is None else f"pytest exit status {rc}: " + tail.strip()[-400:])
    return Outcome(mutant.name, mutant.area, mutant.defect, verdict, failed, rc, secs, detail)


# ---------------------------------------------------------------------------------- report
def table(outcomes: Sequence[Outcome]) -> str:
    rows = ["| mutant | area | defect | verdict | first failing test |",
            "|---|---|---|---|---|"]
    for o in outcomes:
        killer = o.killed_by[0].rsplit("::", 1)[-1] if o.killed_by else (o.detail[:60] or "-")
        rows.append(f"| `{o.name}` | {o.area} | {o.defect} | {o.verdict} | {killer} |")
    return "\n".join(rows)


def summary(outcomes: Sequence[Outcome]) -> str:
    outcomes = [o for o in outcomes if o.verdict != "not run"]
    n = len(outcomes)
    k = sum(o.verdict == "killed" for o in outcomes)
    e = sum(o.verdict == "error" for o in outcomes)
    pct = 100.0 * k / n if n else 0.0
    return f"{k} of {n} mutants killed ({pct:.0f}%), {n - k - e} survived, {e} error"


def update_docs(outcomes: Sequence[Outcome], meta: dict[str, object]) -> None:
    text = DOC.read_text() if DOC.exists() else "# Conformance\n"
    body = (f"{DOC_BEGIN}\n{summary(outcomes)}. Suite run: `{meta['command']}`; "
            f"load average {meta['loadavg']}; {meta['seconds']:.0f} s in all.\n\n"
            f"{table(outcomes)}\n{DOC_END}")
    if DOC_BEGIN in text and DOC_END in text:
        text = re.sub(re.escape(DOC_BEGIN) + ".*?" + re.escape(DOC_END), lambda _: body, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Mutation score\n\n" + body + "\n"
    DOC.write_text(text)


def report_only(files: Sequence[str], docs: bool) -> int:
    """Table (and docs) from earlier ``--json`` files; mutants in none of them: ``not run``."""
    seen: dict[str, Outcome] = {}
    metas = []
    for f in files:
        data = json.loads(Path(f).read_text())
        metas.append(data.get("meta") or {})
        for o in data["outcomes"]:
            seen[o["name"]] = Outcome(**o)
    outcomes = [seen.get(m.name) or Outcome(m.name, m.area, m.defect, "not run")
                for m in MUTANTS]
    run = [o for o in outcomes if o.verdict != "not run"]
    print(table(outcomes))
    print()
    print(summary(run) + f"; {len(outcomes) - len(run)} not run")
    if docs:
        meta = next((m for m in reversed(metas) if "command" in m), {})
        extra = "".join(f" --pytest-arg={a}" for a in (metas[-1].get("pytest_args") or []))
        update_docs(outcomes, {
            "command": meta.get("command", "python benchmarks/mutation_score.py" + extra),
            "loadavg": meta.get("loadavg", "?"), "seconds": sum(o.seconds for o in run)})
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run this mutant (repeatable; a prefix selects several)")
    ap.add_argument("--fast", action="store_true",
                    help="the CI subset: mutants with a ci_select, on that part of the suite")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("-n", "--workers", type=int, default=2, help="pytest-xdist workers (2)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                    help=f"seconds per suite run ({DEFAULT_TIMEOUT:g})")
    ap.add_argument("--all-failures", action="store_true",
                    help="run the whole suite for each mutant (default: stop at the first failure)")
    ap.add_argument("--impl", default="exec:{prog}",
                    help="--qatmig-impl template ({prog} = the mutant's program)")
    ap.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for the suite's pytest (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the mutant copies (path printed)")
    ap.add_argument("--json", metavar="FILE", help="write the outcomes as JSON")
    ap.add_argument("--update-docs", action="store_true",
                    help="write the table into docs/conformance.md (Mutation score)")
    ap.add_argument("--report", metavar="FILE",
                    help="no run: the outcomes of JSON files written by --json (repeatable "
                    "with commas; later files win per mutant), as a table (and --update-docs)")
    args = ap.parse_args(argv)
    if args.report:
        return report_only(args.report.split(","), args.update_docs)
    chosen = [m for m in MUTANTS if not args.only or any(m.name.startswith(o) for o in args.only)]
    if args.fast:
        chosen = [m for m in chosen if m.ci_select]
    if args.list:
        for m in chosen:
            print(f"{m.name:45} {m.area:7} {m.defect}")
        return 0
    if not chosen:
        ap.error("no mutant selected")
    root = Path(tempfile.mkdtemp(prefix="qatmig-mutants-"))
    t0 = time.monotonic()
    outcomes: list[Outcome] = []
    try:
        for m in chosen:  # every patch applies before anything runs
            build(m, root / "check")
        shutil.rmtree(root / "check")
        pristine = build(None, root)
        check_isolated(pristine)
        kw = dict(workers=args.workers, timeout=args.timeout, stop_first=not args.all_failures,
                  extra=args.pytest_arg, impl=args.impl)
        rc, failed, secs, tail = run_suite(pristine, select=None if not args.fast else
                                           " or ".join(f"({m.ci_select})" for m in chosen), **kw)
        print(f"control (pristine copy): exit {rc} in {secs:.0f} s", file=sys.stderr)
        if rc != 0:
            print(f"the pristine copy does not pass the suite ({failed[:3]}):\n{tail}",
                  file=sys.stderr)
            return 2
        for i, m in enumerate(chosen, 1):
            o = score(m, root, select=m.ci_select if args.fast else None, **kw)
            outcomes.append(o)
            if args.json:  # after every mutant: a long run interrupted still leaves its part
                Path(args.json).write_text(json.dumps(
                    {"meta": {"partial": True, "pytest_args": args.pytest_arg},
                     "outcomes": [asdict(x) for x in outcomes]}, indent=2))
            print(f"[{i}/{len(chosen)}] {m.name}: {o.verdict} ({o.seconds:.0f} s)"
                  + (f" by {o.killed_by[0]}" if o.killed_by else "")
                  + (f" [{o.detail[:200]}]" if o.detail else ""), file=sys.stderr)
    finally:
        if args.keep:
            print(f"mutants kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(table(outcomes))
    print()
    print(summary(outcomes))
    meta = {"command": "python benchmarks/mutation_score.py"
            + (" --fast" if args.fast else "") + (f" -n {args.workers}")
            + "".join(f" --pytest-arg={a}" for a in args.pytest_arg),
            "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "seconds": time.monotonic() - t0}
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"meta": meta, "outcomes": [asdict(o) for o in outcomes]}, indent=2))
    if args.update_docs:
        update_docs(outcomes, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
