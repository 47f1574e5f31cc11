"""multifd-compression=zlib (QEMU's multifd-zlib.c).

One zlib-wrapped deflate stream per channel for the whole migration: ``deflateInit(level)``
once, every packet ends with ``Z_SYNC_FLUSH`` (so every payload ends ``00 00 ff ff``), the stream
is never finished (no Adler-32). Only the channel's first payload starts with the zlib header
(``78 01`` at levels 0-1). Packets of one channel decode only in order, with one persistent
inflate stream.
"""

from __future__ import annotations

import weakref
import zlib
from collections.abc import Sequence
from typing import Any

from ..constants import (
    DEFAULT_MIGRATE_MULTIFD_ZLIB_LEVEL,
    MULTIFD_FLAG_ZLIB,
    MULTIFD_PACKET_SIZE,
)
from ..errors import CodecError
from . import _shared
from . import _zlib_ffi as _zf
from .base import Compressor, Decompressor

_SYNC_FLUSH_MARKER = b"\x00\x00\xff\xff"


class ZlibCompressor(Compressor):
    """Per-channel deflate stream; one ``compress`` + one ``Z_SYNC_FLUSH`` per packet.

    Fast path (:mod:`._zlib_ffi`): one ``deflate(Z_SYNC_FLUSH)`` call per packet into a buffer
    reused across packets (the same bytes as Python's ``compress`` + ``flush(Z_SYNC_FLUSH)``:
    deflate's output does not depend on where the input was split or flushed, except at level
    0, whose stored blocks follow the output space: level 0 keeps to the ``zlib`` module).
    """

    def __init__(self, level: int, channel: int) -> None:
        self.level = level
        self.channel = channel
        self._fast = _zf.lib is not None and level != 0
        if self._fast:
            self._strm = _zf.new_stream()
            rc = _zf.deflate_init(self._strm, level)
            if rc != _zf.Z_OK:
                raise CodecError(f"multifd {channel}: deflate init failed ({rc})", channel=channel)
            self._end = weakref.finalize(self, _zf.lib.deflateEnd, self._strm)
            self._out = bytearray(_shared.compress_bound(MULTIFD_PACKET_SIZE))
            self._outp = _zf.ffi.from_buffer(self._out)
        else:
            self._z = zlib.compressobj(level)

    def compress(self, pages: memoryview | bytes) -> bytes:
        if not len(pages):
            return b""  # a packet without normal pages has no payload
        if self._fast:
            return bytes(self.compress_view(pages))
        z = self._z
        return z.compress(pages) + z.flush(zlib.Z_SYNC_FLUSH)

    def compress_view(self, pages: memoryview | bytes) -> bytes | memoryview:
        """The packet's payload as a view of the reused output buffer (fast path)."""
        n = memoryview(pages).nbytes
        if not n or not self._fast:
            return self.compress(pages)
        bound = _shared.compress_bound(n)
        if bound > len(self._out):
            self._out = bytearray(bound)
            self._outp = _zf.ffi.from_buffer(self._out)
        strm, size = self._strm, len(self._out)
        with _zf.ffi.from_buffer(pages) as src:
            strm.next_in, strm.avail_in = src, n
            strm.next_out, strm.avail_out = self._outp, size
            try:
                rc = _zf.lib.deflate(strm, _zf.Z_SYNC_FLUSH)
                left_in, left_out = strm.avail_in, strm.avail_out
            finally:
                strm.next_in = _zf.ffi.NULL
        if rc != _zf.Z_OK or left_in or not left_out:
            raise CodecError(f"multifd {self.channel}: deflate returned {rc} ({left_in} input "
                             f"bytes left, {left_out} output bytes free)", channel=self.channel)
        return memoryview(self._out)[: size - left_out]

    def close(self) -> None:
        if self._fast:
            self._end()


class ZlibDecompressor(Decompressor):
    """Per-channel inflate stream, output bounded at the packet's size (+1 byte to detect more).

    Fast path (:mod:`._zlib_ffi`): inflates straight into the runs of guest pages, then probes
    with a 1-byte buffer for anything more. After any error the stream state is unknown, so the
    decompressor refuses further packets.
    """

    def __init__(self, page_size: int, channel: int) -> None:
        self.page_size = page_size
        self.channel = channel
        self._broken: str | None = None
        self._fast = _zf.lib is not None
        if self._fast:
            self._strm = _zf.new_stream()
            rc = _zf.inflate_init(self._strm)
            if rc != _zf.Z_OK:
                raise CodecError(f"multifd {channel}: inflate init failed ({rc})", channel=channel)
            self._end = weakref.finalize(self, _zf.lib.inflateEnd, self._strm)
            self._spare = _zf.ffi.new("unsigned char[1]")
        else:
            self._z = zlib.decompressobj()

    def close(self) -> None:
        if self._fast:
            self._end()

    def _check(self, payload: bytes | memoryview, normal_pages: int) -> int:
        ch = self.channel
        expected = _shared.stream_payload_check("zlib", ch, self._broken, len(payload),
                                                normal_pages, self.page_size)
        if expected and payload[-4:] != _SYNC_FLUSH_MARKER:
            # Every Z_SYNC_FLUSH ends with this empty stored block; without it the payload is
            # cut short or has bytes after the flush that inflate would take for the next packet.
            self._broken = "bad packet end"
            raise CodecError(
                f"multifd {ch}: payload does not end with the Z_SYNC_FLUSH marker 00 00 ff ff "
                f"(ends {bytes(payload[-4:]).hex(' ')})",
                channel=ch,
            )
        return expected

    def decompress(self, payload: bytes | memoryview, normal_pages: int) -> bytes | bytearray:
        if self._fast:
            # _check validates normal_pages before anything is allocated.
            expected = self._check(payload, normal_pages)
            if expected == 0:
                return b""
            out = bytearray(expected)
            self._inflate_into(payload, memoryview(out), [(0, expected)], expected)
            return out
        return self._module_decompress(payload, normal_pages)

    def decompress_into(self, payload: bytes | memoryview, normal_pages: int,
                        out: memoryview, runs: Sequence[tuple[int, int]] | None = None) -> None:
        """Inflate straight into the ranges ``runs`` of ``out`` (fast path), no staging."""
        if not self._fast:
            super().decompress_into(payload, normal_pages, out, runs)
            return
        expected = self._check(payload, normal_pages)
        runs = _shared.output_runs(len(out), runs, expected)
        if expected:
            self._inflate_into(payload, out, runs, expected)

    def _fail(self, why: str, exc: CodecError) -> CodecError:
        self._broken = why
        return exc

    def _inflate_into(self, payload: bytes | memoryview, out: memoryview,
                      runs: Sequence[tuple[int, int]], expected: int) -> None:
        # The cffi views export the buffers; released on every path (see multifd_zstd).
        ffi = _zf.ffi
        strm = self._strm
        with ffi.from_buffer(payload) as src, ffi.from_buffer(out, require_writable=True) as dst:
            strm.next_in, strm.avail_in = src, len(payload)
            try:
                self._inflate(strm, [(dst + s, e - s) for s, e in runs if e > s], expected)
            finally:
                strm.next_in = ffi.NULL
                strm.next_out = ffi.NULL

    def _error(self, strm: Any, rc: int) -> CodecError:
        msg = _zf.ffi.string(strm.msg).decode("ascii", "replace") if strm.msg else ""
        return self._fail("inflate error", CodecError(
            f"multifd {self.channel}: inflate returned an error instead of Z_OK (Error {rc} "
            f"while decompressing data: {msg or 'no message'})", channel=self.channel))

    def _inflate(self, strm: Any, dsts: list[tuple[Any, int]], expected: int) -> None:
        ch = self.channel
        inflate = _zf.lib.inflate
        ok, end, buf_error, flush = _zf.Z_OK, _zf.Z_STREAM_END, _zf.Z_BUF_ERROR, _zf.Z_SYNC_FLUSH
        got = 0
        ended = False
        for dst, size in dsts:
            strm.next_out, strm.avail_out = dst, size
            while strm.avail_out and not ended:
                rc = inflate(strm, flush)
                if rc == end:
                    ended = True
                elif rc == buf_error:
                    break  # no progress possible: the input is used up
                elif rc != ok:
                    raise self._error(strm, rc)
            got += size - strm.avail_out
            if strm.avail_out:
                break
        if got < expected:
            raise self._fail("size mismatch", _shared.size_mismatch(
                ch, got, expected, "inflate generated too few output"))
        if not ended:
            # The packet is full: one more byte of output means the payload is too big.
            strm.next_out, strm.avail_out = self._spare, 1
            while strm.avail_in:
                before = strm.avail_in
                rc = inflate(strm, flush)
                if not strm.avail_out:
                    raise self._fail("size mismatch", _shared.size_mismatch(
                        ch, expected + 1, expected,
                        "payload inflates to more than the packet; stopped at the bound"))
                if rc == end:
                    ended = True
                    break
                if rc == buf_error or strm.avail_in == before:
                    break
                if rc != ok:
                    raise self._error(strm, rc)
        if ended:
            raise self._fail("stream finished", CodecError(
                f"multifd {ch}: inflate returned Z_STREAM_END instead of Z_OK (the sender "
                f"finished its zlib stream; QEMU's never ends)", channel=ch))
        if strm.avail_in:
            raise self._fail("leftover input", CodecError(
                f"multifd {ch}: {strm.avail_in} payload bytes left after the packet's "
                f"{expected} bytes", channel=ch))

    def _module_decompress(self, payload: bytes | memoryview, normal_pages: int) -> bytes:
        """The ``zlib`` module's path (when libz is not loadable through cffi)."""
        ch = self.channel
        expected = self._check(payload, normal_pages)
        if expected == 0:
            return b""
        z = self._z
        try:
            out = z.decompress(payload, expected + 1)
        except zlib.error as exc:
            self._broken = "inflate error"
            raise CodecError(
                f"multifd {ch}: inflate returned an error instead of Z_OK ({exc})", channel=ch
            ) from None
        if len(out) != expected:
            self._broken = "size mismatch"
            if len(out) > expected:
                raise _shared.size_mismatch(
                    ch, len(out), expected,
                    "payload inflates to more than the packet; stopped at the bound",
                )
            raise _shared.size_mismatch(ch, len(out), expected, "inflate generated too few output")
        if z.unconsumed_tail:  # not reachable with max_length = expected + 1; kept as a guard
            self._broken = "leftover input"
            raise CodecError(
                f"multifd {ch}: {len(z.unconsumed_tail)} payload bytes left after the packet's "
                f"{expected} bytes",
                channel=ch,
            )
        if z.eof:
            self._broken = "stream finished"
            raise CodecError(
                f"multifd {ch}: inflate returned Z_STREAM_END instead of Z_OK (the sender "
                f"finished its zlib stream; QEMU's never ends)",
                channel=ch,
            )
        return out


SPEC = _shared.StreamSpec(
    name="zlib", flag=MULTIFD_FLAG_ZLIB, level_parameter="multifd-zlib-level",
    level_range=(0, 9), default_level=DEFAULT_MIGRATE_MULTIFD_ZLIB_LEVEL, streaming=True,
    compressor_cls=ZlibCompressor, decompressor_cls=ZlibDecompressor,
)
