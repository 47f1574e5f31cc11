"""QATzip's gzip-ext ("QZ") format: producers and a bounded decoder, pure code over bytes.

A gzip-ext member is an RFC 1952 gzip member whose FEXTRA field holds one 12-byte subfield
``'Q' 'Z'`` with the member's uncompressed size (``src_sz``) and deflate size (``dest_sz``),
little-endian (see docs/codecs.md for the byte table)::

    1f 8b 08 04 | MTIME=0 | XFL | OS=ff | XLEN=12 | 'Q' 'Z' | LEN=8 | src_sz | dest_sz
    | deflate (dest_sz bytes) | CRC-32 | ISIZE

Producers:

* :func:`compress` - libqatzip's **software path** for one ``qzCompress(last=1)`` call: one
  member, zlib ``deflateInit2(level, Z_DEFLATED, 31, memLevel 9)``, ``Z_FULL_FLUSH`` after every
  ``hw_buff_sz`` input bytes except before the final ``Z_FINISH``, XFL as zlib sets it, OS 255,
  MTIME 0, QZ sizes patched with the call's totals. Byte-identical with libqatzip 1.3.1 when
  Python's zlib is the same build (1.2.13 for the vectors in ``shared/vectors/qatzip``).
* :func:`compress_hw_layout` - the **hardware path's framing**: one complete member per
  ``hw_buff_sz`` piece, XFL 0 (deflate bytes differ from a real QAT device).
* :func:`compress_two_calls` - ``qzCompress(last=0)`` then ``(last=1)`` on one session: one
  member whose QZ sizes stay 0/0.

Decoders: :func:`decompress` (one buffer, output bounded by ``max_output``; what a multifd
receiver uses) and :class:`GzipExtDecoder` (incremental, for files). Both accept every layout
the library emits - one member per 64 KiB, one member with full-flush points, QZ sizes 0/0,
plain gzip members with any FLG, any number of members - and check every member's CRC-32 and
ISIZE (zlib does it while inflating) and, when non-zero, its QZ ``src_sz``/``dest_sz``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import CodecError, ParameterError, PayloadSizeError

QZ_HW_BUFF_SZ = 64 * 1024  # QZ_HW_BUFF_SZ, libqatzip's default hw_buff_sz
GZIP_EXT_HEADER_LEN = 24
GZIP_FOOTER_LEN = 8
GZIP_MAGIC = b"\x1f\x8b"
OS_QAT = 0xFF  # libqatzip writes OS = 255
QZ_LEVEL_RANGE = (1, 9)  # software path: zlib levels; 10-12 set up but every compress fails
QZ_COMPRESSED_SZ_OF_EMPTY_FILE = 34

# gzip FLG bits (RFC 1952)
FTEXT, FHCRC, FEXTRA, FNAME, FCOMMENT = 0x01, 0x02, 0x04, 0x08, 0x10
_FLG_RESERVED = 0xE0

_QZ_HEADER = struct.Struct("<2sBBIBBH2sHII")  # magic CM FLG MTIME XFL OS XLEN SI LEN src dest
_ZLIB_GZIP_HEADER_LEN = 10  # header zlib writes for windowBits 31 without deflateSetHeader
_WBITS_GZIP = 31
_WBITS_RAW = -15
_MEM_LEVEL = 9


def xfl_for_level(level: int) -> int:
    """XFL zlib writes for ``level`` (the software path's value): 1 -> 4, 9 -> 2, else 0."""
    if level == 9:
        return 2
    if level < 2:
        return 4
    return 0


def qz_max_compressed_length(n: int) -> int:
    """libqatzip's ``qzMaxCompressedLength(n)`` without a hardware session."""
    if n == 0:
        return QZ_COMPRESSED_SZ_OF_EMPTY_FILE
    return (9 * n + 7) // 8 + 48 + 32


def _check_level(level: int) -> int:
    lo, hi = QZ_LEVEL_RANGE
    if not isinstance(level, int) or isinstance(level, bool) or not lo <= level <= hi:
        raise ParameterError(
            f"QATzip level must be between {lo} and {hi} (the software path uses zlib levels), "
            f"not {level!r}"
        )
    return level


def _check_hw_buff_sz(hw_buff_sz: int) -> int:
    if not (1024 <= hw_buff_sz <= 512 * 1024) or hw_buff_sz & (hw_buff_sz - 1):
        raise ParameterError(
            f"hw_buff_sz must be a power of two between 1 KiB and 512 KiB, not {hw_buff_sz}"
        )
    return hw_buff_sz


def gzip_ext_header(src_sz: int, dest_sz: int, xfl: int) -> bytes:
    """The 24-byte gzip-ext member header."""
    return _QZ_HEADER.pack(
        GZIP_MAGIC, 8, FEXTRA, 0, xfl, OS_QAT, 12, b"QZ", 8,
        src_sz & 0xFFFFFFFF, dest_sz & 0xFFFFFFFF,
    )


# ------------------------------------------------------------------------------ producers
def _full_flush(c: zlib._Compress) -> tuple[bytes, bytes]:
    """``deflate(Z_FULL_FLUSH)`` as libqatzip calls it: once, with the whole output buffer.

    CPython's ``flush()`` hands zlib its output in growing pieces (32 KiB first). When a
    flush's output fills a piece, zlib is called again with Z_FULL_FLUSH and, as it must for
    a repeated flush, appends a second empty stored block (``00 00 00 ff ff``) that the
    library's single call never writes (levels >= 4 on incompressible data, where a flush
    carries up to 32 K literals). Z_BLOCK first ends the pending block without a marker (a
    repeated Z_BLOCK adds nothing); the Z_FULL_FLUSH after it then writes only the one
    empty stored block, which always fits. The bytes are those of the single call.
    """
    return c.flush(zlib.Z_BLOCK), c.flush(zlib.Z_FULL_FLUSH)


def compress(data: bytes | bytearray | memoryview, level: int = 1, *,
             hw_buff_sz: int = QZ_HW_BUFF_SZ) -> bytes:
    """One ``qzCompress(last=1)`` call of libqatzip's software path: one gzip-ext member."""
    _check_level(level)
    _check_hw_buff_sz(hw_buff_sz)
    mv = memoryview(data).cast("B")
    n = len(mv)
    # zlib's own gzip wrapper computes CRC-32/ISIZE inside deflate (as the library's does); we
    # only swap its 10-byte header for the 24-byte QZ one. The deflate bytes do not depend on
    # the wrapper.
    c = zlib.compressobj(level, zlib.DEFLATED, _WBITS_GZIP, _MEM_LEVEL)
    parts: list[bytes] = []
    pos = 0
    while n - pos > hw_buff_sz:
        parts.append(c.compress(mv[pos:pos + hw_buff_sz]))
        parts.extend(_full_flush(c))
        pos += hw_buff_sz
    parts.append(c.compress(mv[pos:]))
    parts.append(c.flush(zlib.Z_FINISH))
    total = sum(len(p) for p in parts)
    first = parts[0]
    if len(first) < _ZLIB_GZIP_HEADER_LEN:  # never seen; keep correctness if zlib buffers
        first = b"".join(parts)
        parts = [first]
    xfl = first[8]
    hdr = gzip_ext_header(n, total - _ZLIB_GZIP_HEADER_LEN - GZIP_FOOTER_LEN, xfl)
    parts[0] = memoryview(first)[_ZLIB_GZIP_HEADER_LEN:]  # type: ignore[call-overload]
    return b"".join([hdr, *parts])


def compress_hw_layout(data: bytes | bytearray | memoryview, level: int = 1, *,
                       hw_buff_sz: int = QZ_HW_BUFF_SZ) -> bytes:
    """The hardware path's framing: one independent member per ``hw_buff_sz`` piece, XFL 0.

    Reproduces the member layout of a QAT device (not its deflate bytes); for decoder tests.
    """
    _check_level(level)
    _check_hw_buff_sz(hw_buff_sz)
    mv = memoryview(data).cast("B")
    out: list[bytes] = []
    pieces = range(0, len(mv), hw_buff_sz) if len(mv) else [0]
    for pos in pieces:
        piece = mv[pos:pos + hw_buff_sz]
        c = zlib.compressobj(level, zlib.DEFLATED, _WBITS_RAW, _MEM_LEVEL)
        body = c.compress(piece) + c.flush(zlib.Z_FINISH)
        out.append(gzip_ext_header(len(piece), len(body), 0))
        out.append(body)
        out.append(struct.pack("<II", zlib.crc32(piece), len(piece) & 0xFFFFFFFF))
    return b"".join(out)


def compress_two_calls(data: bytes | bytearray | memoryview, split: int, level: int = 1, *,
                       hw_buff_sz: int = QZ_HW_BUFF_SZ) -> bytes:
    """``qzCompress(data[:split], last=0)`` + ``qzCompress(data[split:], last=1)``, one session.

    One member whose QZ sizes stay 0/0: the header is written by the first call and never
    patched. Each call full-flushes every ``hw_buff_sz`` input bytes; the ``last=0`` call ends
    with a full flush of its remainder (libqatzip's streaming software path).
    """
    _check_level(level)
    _check_hw_buff_sz(hw_buff_sz)
    mv = memoryview(data).cast("B")
    if not 0 <= split <= len(mv):
        raise ParameterError(f"split {split} outside the data (0..{len(mv)})")
    c = zlib.compressobj(level, zlib.DEFLATED, _WBITS_GZIP, _MEM_LEVEL)
    parts: list[bytes] = []
    for lo, hi, last in ((0, split, False), (split, len(mv), True)):
        pos = lo
        while hi - pos > hw_buff_sz:
            parts.append(c.compress(mv[pos:pos + hw_buff_sz]))
            parts.extend(_full_flush(c))
            pos += hw_buff_sz
        parts.append(c.compress(mv[pos:hi]))
        if last:
            parts.append(c.flush(zlib.Z_FINISH))
        else:
            parts.extend(_full_flush(c))
    body = b"".join(parts)
    return gzip_ext_header(0, 0, body[8]) + body[_ZLIB_GZIP_HEADER_LEN:]


# ------------------------------------------------------------------------------ header parsing
class _NeedMore(Exception):
    """Internal: the header is not complete yet (incremental decoder)."""


@dataclass(frozen=True)
class MemberHeader:
    """A parsed gzip member header (``qz_src_sz``/``qz_dest_sz`` None without a QZ field)."""

    offset: int
    header_len: int
    flg: int
    mtime: int
    xfl: int
    os: int
    qz_src_sz: int | None = None
    qz_dest_sz: int | None = None
    name: bytes | None = None
    comment: bytes | None = None

    @property
    def is_gzip_ext(self) -> bool:
        return self.qz_src_sz is not None


@dataclass(frozen=True)
class MemberInfo:
    """One decoded member: its header plus sizes and checksum."""

    header: MemberHeader
    deflate_len: int
    crc32: int
    isize: int

    @property
    def total_len(self) -> int:
        return self.header.header_len + self.deflate_len + GZIP_FOOTER_LEN


def _where(index: int, offset: int) -> str:
    return f"gzip member {index} at byte {offset}"


def parse_member_header(buf: bytes | bytearray | memoryview, offset: int = 0, *,
                        index: int = 0) -> MemberHeader:
    """Parse the gzip header starting at ``buf[offset]`` (raises CodecError when malformed)."""
    try:
        return _parse_header(buf, offset, index)
    except _NeedMore:
        raise CodecError(
            f"{_where(index, offset)}: truncated header ({len(buf) - offset} bytes)"
        ) from None


def _parse_header(buf: bytes | bytearray | memoryview, offset: int, index: int) -> MemberHeader:
    end = len(buf)
    if end - offset < 2:
        if end > offset and buf[offset] != 0x1F:
            raise CodecError(f"{_where(index, offset)}: not in gzip format (bad magic)")
        raise _NeedMore
    if buf[offset] != 0x1F or buf[offset + 1] != 0x8B:
        what = "not in gzip format" if index == 0 else "trailing garbage after the last member"
        raise CodecError(
            f"{_where(index, offset)}: {what} (bytes {bytes(buf[offset:offset + 2]).hex()}, "
            f"expected 1f8b)"
        )
    if end - offset < 10:
        raise _NeedMore
    cm, flg = buf[offset + 2], buf[offset + 3]
    if cm != 8:
        raise CodecError(f"{_where(index, offset)}: compression method {cm}, only 8 (deflate)")
    if flg & _FLG_RESERVED:
        raise CodecError(f"{_where(index, offset)}: reserved FLG bits set (FLG {flg:#04x})")
    mtime = int.from_bytes(buf[offset + 4:offset + 8], "little")
    xfl, os_ = buf[offset + 8], buf[offset + 9]
    pos = offset + 10
    src = dest = None
    name = comment = None
    if flg & FEXTRA:
        if end - pos < 2:
            raise _NeedMore
        xlen = int.from_bytes(buf[pos:pos + 2], "little")
        pos += 2
        if end - pos < xlen:
            raise _NeedMore
        xend = pos + xlen
        while pos < xend:
            if xend - pos < 4:
                raise CodecError(f"{_where(index, offset)}: malformed FEXTRA subfield")
            si = bytes(buf[pos:pos + 2])
            slen = int.from_bytes(buf[pos + 2:pos + 4], "little")
            if pos + 4 + slen > xend:
                raise CodecError(f"{_where(index, offset)}: FEXTRA subfield overruns XLEN")
            if si == b"QZ":
                if slen != 8:
                    raise CodecError(
                        f"{_where(index, offset)}: QZ extra subfield LEN {slen}, expected 8"
                    )
                src = int.from_bytes(buf[pos + 4:pos + 8], "little")
                dest = int.from_bytes(buf[pos + 8:pos + 12], "little")
            pos += 4 + slen
    for bit in (FNAME, FCOMMENT):
        if flg & bit:
            mv = bytes(buf[pos:min(end, pos + 65536)])
            nul = mv.find(b"\x00")
            if nul < 0:
                if end - pos >= 65536:
                    raise CodecError(f"{_where(index, offset)}: FNAME/FCOMMENT not terminated")
                raise _NeedMore
            if bit == FNAME:
                name = mv[:nul]
            else:
                comment = mv[:nul]
            pos += nul + 1
    if flg & FHCRC:
        if end - pos < 2:
            raise _NeedMore
        want = int.from_bytes(buf[pos:pos + 2], "little")
        got = zlib.crc32(buf[offset:pos]) & 0xFFFF
        if want != got:
            raise CodecError(f"{_where(index, offset)}: header CRC16 mismatch")
        pos += 2
    return MemberHeader(offset, pos - offset, flg, mtime, xfl, os_, src, dest, name, comment)


def _zlib_reason(exc: zlib.error) -> str:
    text = str(exc)
    if "incorrect data check" in text:
        return "CRC-32 mismatch (corrupt data)"
    if "incorrect length check" in text:
        return "ISIZE mismatch (corrupt data)"
    return f"corrupt deflate data ({text.split(': ', 1)[-1]})"


def _check_qz(h: MemberHeader, index: int, out_len: int, deflate_len: int) -> None:
    if h.qz_src_sz is None or (h.qz_src_sz == 0 and h.qz_dest_sz == 0):
        return
    if h.qz_src_sz != out_len & 0xFFFFFFFF or h.qz_dest_sz != deflate_len & 0xFFFFFFFF:
        raise CodecError(
            f"{_where(index, h.offset)}: QZ header says src_sz {h.qz_src_sz} / dest_sz "
            f"{h.qz_dest_sz}, member has {out_len} / {deflate_len}"
        )


# ------------------------------------------------------------------------------ decoders
def decompress(data: bytes | bytearray | memoryview, *, max_output: int | None = None,
               members: list[MemberInfo] | None = None) -> bytes:
    """Decode every member of ``data`` (gzip-ext or plain gzip) and return the concatenation.

    Never produces more than ``max_output + 1`` bytes: more raises PayloadSizeError (the caller
    still checks the exact size it expects). Truncation, bad magic, bad CRC-32/ISIZE, QZ sizes
    that disagree with the member, and trailing garbage raise CodecError. When ``members`` is a
    list, a :class:`MemberInfo` is appended per member.
    """
    mv = memoryview(data).cast("B")
    end = len(mv)
    if end == 0:
        raise CodecError("empty input: no gzip member")
    budget = -1 if max_output is None else max_output
    outs: list[bytes] = []
    produced = 0
    pos = 0
    index = 0
    while pos < end:
        h = parse_member_header(mv, pos, index=index)
        if budget >= 0 and h.qz_src_sz is not None and h.qz_src_sz > budget - produced:
            raise PayloadSizeError(
                f"{_where(index, pos)}: QZ src_sz {h.qz_src_sz} exceeds the "
                f"{budget - produced} bytes still expected"
            )
        # With trustworthy QZ sizes, hand zlib exactly this member (no copy of the rest).
        if h.qz_dest_sz:
            stop = min(end, pos + h.header_len + h.qz_dest_sz + GZIP_FOOTER_LEN)
        else:
            stop = end
        chunk = mv[pos:stop]
        d = zlib.decompressobj(_WBITS_GZIP)
        try:
            if budget >= 0:
                out = d.decompress(chunk, budget - produced + 1)
            else:
                out = d.decompress(chunk)
        except zlib.error as exc:
            raise CodecError(f"{_where(index, pos)}: {_zlib_reason(exc)}") from None
        produced += len(out)
        if budget >= 0 and produced > budget:
            raise PayloadSizeError(
                f"{_where(index, pos)}: output exceeds the expected {budget} bytes "
                f"(decompression stopped at the bound)"
            )
        if not d.eof:
            if stop < end:
                raise CodecError(
                    f"{_where(index, pos)}: deflate data does not end where QZ dest_sz "
                    f"{h.qz_dest_sz} says"
                )
            raise CodecError(f"{_where(index, pos)}: truncated input (member incomplete)")
        used = len(chunk) - len(d.unused_data)
        deflate_len = used - h.header_len - GZIP_FOOTER_LEN
        _check_qz(h, index, len(out), deflate_len)
        if members is not None:
            tail = chunk[used - GZIP_FOOTER_LEN:used]
            crc, isize = struct.unpack("<II", tail)
            members.append(MemberInfo(h, deflate_len, crc, isize))
        outs.append(out)
        pos += used
        index += 1
    if len(outs) == 1:
        return outs[0]
    return b"".join(outs)


def inspect_members(data: bytes | bytearray | memoryview) -> list[MemberInfo]:
    """Decode ``data`` and describe its members (offsets, QZ sizes, CRC-32, ISIZE)."""
    infos: list[MemberInfo] = []
    decompress(data, members=infos)
    return infos


def _consumed(d: zlib._Decompress, fed: int) -> int:
    """Input bytes a ``decompress(data, max_length)`` call of ``fed`` bytes used.

    At the member's end CPython puts the rest of the input in ``unused_data`` *and* leaves it
    in ``unconsumed_tail`` too: subtract it once.
    """
    if d.eof:
        return fed - len(d.unused_data)
    return fed - len(d.unconsumed_tail)


class GzipExtDecoder:
    """Incremental decoder for files and pipes: :meth:`feed` chunks, then :meth:`finish`.

    Output comes in pieces of at most ``out_chunk`` bytes, so a bomb never allocates more than
    that at once. Same acceptance and checks as :func:`decompress`.
    """

    def __init__(self, *, out_chunk: int = 1 << 20) -> None:
        self._out_chunk = out_chunk
        self._pending = bytearray()  # bytes at a member boundary whose header is incomplete
        self._d: zlib._Decompress | None = None
        self._hdr: MemberHeader | None = None
        self._member_in = 0
        self._member_out = 0
        self._offset = 0  # input offset of the current member
        self.members = 0
        self.total_in = 0
        self.total_out = 0

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """Consume ``data``; yields decompressed pieces. Raises CodecError on corrupt input."""
        buf = bytes(data)
        self.total_in += len(buf)
        while buf:
            if self._d is None:
                self._pending += buf
                buf = b""
                try:
                    self._hdr = _parse_header(self._pending, 0, self.members)
                except _NeedMore:
                    return
                except CodecError as exc:
                    raise CodecError(str(exc).replace(
                        "at byte 0", f"at byte {self._offset}", 1)) from None
                buf = bytes(self._pending)
                self._pending.clear()
                self._d = zlib.decompressobj(_WBITS_GZIP)
                self._member_in = 0
                self._member_out = 0
            d = self._d
            try:
                out = d.decompress(buf, self._out_chunk)
                self._member_in += _consumed(d, len(buf))
                if out:
                    self._member_out += len(out)
                    yield out
                # More input left, or the output filled up exactly (zlib may still hold some
                # of a long match): keep pulling until neither holds.
                while not d.eof and (d.unconsumed_tail or len(out) == self._out_chunk):
                    tail = d.unconsumed_tail
                    out = d.decompress(tail, self._out_chunk)
                    self._member_in += _consumed(d, len(tail))
                    if out:
                        self._member_out += len(out)
                        yield out
            except zlib.error as exc:
                raise CodecError(
                    f"{_where(self.members, self._offset)}: {_zlib_reason(exc)}"
                ) from None
            if not d.eof:
                return
            hdr = self._hdr
            if hdr is None:  # pragma: no cover - set whenever _d is
                raise CodecError("internal error: member header lost")
            deflate_len = self._member_in - hdr.header_len - GZIP_FOOTER_LEN
            _check_qz(
                MemberHeader(self._offset, hdr.header_len, hdr.flg, hdr.mtime, hdr.xfl, hdr.os,
                             hdr.qz_src_sz, hdr.qz_dest_sz),
                self.members, self._member_out, deflate_len,
            )
            self.total_out += self._member_out
            self._offset += self._member_in
            self.members += 1
            buf = d.unused_data
            self._d = None

    def finish(self) -> None:
        """Raise CodecError unless the input ended exactly at the end of a member."""
        if self._d is not None:
            raise CodecError(
                f"{_where(self.members, self._offset)}: truncated input (member incomplete)"
            )
        if self._pending:
            try:
                _parse_header(self._pending, 0, self.members)
            except _NeedMore:
                pass
            except CodecError as exc:
                raise CodecError(str(exc).replace(
                    "at byte 0", f"at byte {self._offset}", 1)) from None
            raise CodecError(
                f"{_where(self.members, self._offset)}: truncated input "
                f"({len(self._pending)} bytes of a header)"
            )
        if self.members == 0:
            raise CodecError("empty input: no gzip member")
