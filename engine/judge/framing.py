"""Checks on how a payload is framed, beyond "it decompresses to the right size".

QEMU's zlib and zstd methods keep **one** compression stream per channel for the whole
migration (a zlib header / zstd frame header only at the start of the channel's first payload,
never finished); qatzip sends one gzip-ext member per packet with its QZ sizes filled in. A
receiver with a persistent decoder accepts many deviations from that (a new zlib stream inflates
as garbage or errors, a new zstd frame decodes fine), so the judge looks at the bytes itself.
Everything here is pure; each check returns ``(message, field, byte offset in the payload)``
or None.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..codecs import qzformat

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
QZ_HW_CHUNK = 64 * 1024  # QZ_HW_BUFF_SZ: hardware cuts one qzCompress call into such members

Finding = tuple[str, str, int]


def zlib_header(payload: bytes | memoryview) -> tuple[int, int] | None:
    """(CMF, FLG) when ``payload`` starts with a valid zlib header, else None."""
    if len(payload) < 2:
        return None
    cmf, flg = payload[0], payload[1]
    if cmf & 0x0F != 8 or cmf >> 4 > 7 or (cmf << 8 | flg) % 31 or flg & 0x20:
        return None
    return cmf, flg


def zlib_flevel(level: int) -> int:
    """FLEVEL bits deflateInit writes for ``level`` (0: fastest .. 3: maximum)."""
    if level < 2:
        return 0
    if level < 6:
        return 1
    return 2 if level == 6 else 3


def check_zlib(payload: bytes | memoryview, first: bool, level: int | None) -> Finding | None:
    hdr = zlib_header(payload)
    if first:
        if hdr is None:
            return ("the channel's first zlib payload does not start with a zlib header "
                    f"(starts {bytes(payload[:2]).hex(' ')}; QEMU's deflateInit stream starts "
                    "78 01 at level 1)", "payload", 0)
        if level is not None:
            flevel = hdr[1] >> 6
            if flevel != zlib_flevel(level):
                return (f"zlib header FLEVEL {flevel} does not match multifd-zlib-level {level} "
                        f"(deflateInit writes FLEVEL {zlib_flevel(level)} for that level)",
                        "level", 1)
        return None
    if hdr is not None:
        return ("a new zlib stream starts in this packet (zlib header "
                f"{bytes(payload[:2]).hex(' ')}): QEMU keeps one deflate stream per channel "
                "and writes its header only in the channel's first payload", "payload", 0)
    return None


def check_zstd_start(payload: bytes | memoryview, first: bool) -> Finding | None:
    starts = bytes(payload[:4]) == ZSTD_MAGIC
    if first and not starts:
        return ("the channel's first zstd payload does not start with a zstd frame header "
                f"(starts {bytes(payload[:4]).hex(' ')}, expected 28 b5 2f fd)", "payload", 0)
    if not first and starts:
        return ("a new zstd frame starts in this packet: QEMU keeps one zstd frame per channel "
                "(frame header only in the channel's first payload)", "payload", 0)
    return None


def check_qatzip(members: Sequence[qzformat.MemberInfo], level: int | None,
                 hw_chunks: bool) -> Finding | None:
    """One gzip-ext member (QEMU's software path), QZ sizes set, header bytes as libqatzip."""
    if len(members) != 1 and not hw_chunks:
        return (f"{len(members)} gzip members in one qatzip payload; QEMU's one qzCompress "
                "call per packet produces exactly one gzip-ext member", "payload",
                members[1].header.offset if len(members) > 1 else 0)
    for i, m in enumerate(members):
        h = m.header
        at = h.offset
        if not h.is_gzip_ext:
            return (f"gzip member {i} has no QZ extra field (plain gzip, FLG {h.flg:#04x}); "
                    "QATzip's gzip-ext member carries FEXTRA 'QZ' with src_sz/dest_sz",
                    "payload", at + 3)
        if h.flg != qzformat.FEXTRA:
            return (f"gzip member {i} FLG {h.flg:#04x}, libqatzip writes 0x04 (FEXTRA only)",
                    "payload", at + 3)
        if h.qz_src_sz != m.isize or h.qz_dest_sz != m.deflate_len:
            return (f"gzip member {i}: QZ src_sz/dest_sz {h.qz_src_sz}/{h.qz_dest_sz}, the "
                    f"member holds {m.isize}/{m.deflate_len}", "payload", at + 16)
        if len(members) > 1 and h.qz_src_sz > QZ_HW_CHUNK:
            return (f"gzip member {i} holds {h.qz_src_sz} bytes, more than one {QZ_HW_CHUNK}-"
                    "byte hardware chunk", "payload", at + 16)
        if h.os != qzformat.OS_QAT:
            return f"gzip member {i} OS byte {h.os}, libqatzip writes 255", "payload", at + 9
        if h.mtime:
            return f"gzip member {i} MTIME {h.mtime}, libqatzip writes 0", "payload", at + 4
        allowed = {0, 2, 4}
        if level is not None and not hw_chunks:
            allowed = {qzformat.xfl_for_level(level)}
        if h.xfl not in allowed:
            want = "/".join(str(x) for x in sorted(allowed))
            return (f"gzip member {i} XFL {h.xfl}, expected {want}"
                    + (f" for multifd-qatzip-level {level}" if level is not None else ""),
                    "level" if level is not None else "payload", at + 8)
    return None
