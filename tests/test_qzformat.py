"""QATzip gzip-ext: byte identity with libqatzip's vectors, container fields, decoder coverage."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import qz_vectors as qv
from qatmig_engine.codecs import qzformat as qz
from qatmig_engine.errors import CodecError, ParameterError, PayloadSizeError

VECTORS = qv.VECTORS
SAME_ZLIB = zlib.ZLIB_RUNTIME_VERSION == "1.2.13"
ZLIB_REASON = (f"byte identity needs zlib 1.2.13 (the vectors' build); this Python has "
               f"{zlib.ZLIB_RUNTIME_VERSION}: round trips and container fields are still checked")

needs_vectors = pytest.mark.skipif(
    not (VECTORS / "manifest.json").exists(),
    reason=f"QATzip vectors not found at {VECTORS} (set QATMIG_SHARED to the shared data dir; "
    "the recipe-based tests still cover byte identity)",
)


def _manifest() -> dict:
    return json.loads((VECTORS / "manifest.json").read_text())


def _vectors() -> list[dict]:
    if not (VECTORS / "manifest.json").exists():
        return []
    return _manifest()["vectors"]


def _input(v: dict) -> bytes:
    m = _manifest()
    data = (VECTORS / m["inputs"][v["input"]]["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == m["inputs"][v["input"]]["sha256"]
    return data


def _produce(v: dict, data: bytes) -> bytes:
    name = v["file"]
    if "synthetic_hw_layout" in name:
        return qz.compress_hw_layout(data, v["level"])
    if "two_calls" in name:
        return qz.compress_two_calls(data, v["calls"][0]["consumed"], v["level"])
    return qz.compress(data, v["level"])


@needs_vectors
@pytest.mark.parametrize("v", _vectors(), ids=lambda v: Path(v["file"]).name)
def test_vector_byte_identity(v: dict) -> None:
    data = _input(v)
    gold = (VECTORS / v["file"]).read_bytes()
    assert hashlib.sha256(gold).hexdigest() == v["sha256"]
    mine = _produce(v, data)
    assert qz.decompress(mine) == data
    if not SAME_ZLIB:
        pytest.skip(ZLIB_REASON)
    assert mine == gold


@needs_vectors
@pytest.mark.parametrize("v", _vectors(), ids=lambda v: Path(v["file"]).name)
def test_vector_decodes_and_members_match_manifest(v: dict) -> None:
    data = _input(v)
    gold = (VECTORS / v["file"]).read_bytes()
    assert qz.decompress(gold) == data
    assert qz.decompress(gold, max_output=len(data)) == data
    infos = qz.inspect_members(gold)
    want = v["external"]["gzip_members"] if "external" in v else None
    if want is None:
        pytest.skip("manifest lists no member table for this vector")
    assert len(infos) == len(want)
    for got, exp in zip(infos, want, strict=True):
        h = got.header
        assert (h.offset, h.flg, h.mtime, h.xfl, h.os, h.header_len) == (
            exp["offset"], exp["flg"], exp["mtime"], exp["xfl"], exp["os"], exp["header_len"])
        assert (h.qz_src_sz, h.qz_dest_sz) == (exp["qz_src_sz"], exp["qz_dest_sz"])
        assert (got.deflate_len, got.crc32, got.isize) == (
            exp["deflate_len"], exp["crc32"], exp["isize"])


@needs_vectors
def test_container_fields_of_our_producer_match_the_library_rules() -> None:
    data = (VECTORS / "inputs" / "mixed_128pages.bin").read_bytes()
    for level in range(1, 10):
        out = qz.compress(data, level)
        (infos,) = [qz.inspect_members(out)]
        assert len(infos) == 1
        h = infos[0].header
        assert out[:4] == b"\x1f\x8b\x08\x04" and out[9] == 0xFF and out[12:16] == b"QZ\x08\x00"
        assert h.mtime == 0 and h.xfl == qz.xfl_for_level(level)
        assert h.qz_src_sz == len(data) and h.qz_dest_sz == len(out) - 32
        assert infos[0].crc32 == zlib.crc32(data) and infos[0].isize == len(data)
        assert len(out) <= qz.qz_max_compressed_length(len(data))


@pytest.mark.parametrize("file", sorted(qv.OUTPUTS))
def test_vectors_reproduced_from_recipes(file: str) -> None:
    """Needs no shared data: inputs rebuilt from the manifest recipes, outputs compared with
    the sha256 libqatzip's files have (recorded in tests/qz_vectors.py)."""
    name, _kind, _level, sha = qv.OUTPUTS[file]
    data = qv.build_input(name)
    out = qv.produce(file)
    assert qz.decompress(out) == data
    assert qz.decompress(out, max_output=len(data)) == data
    if not SAME_ZLIB:
        pytest.skip(ZLIB_REASON)
    assert hashlib.sha256(out).hexdigest() == sha


def test_software_path_has_full_flush_every_64k_and_none_before_finish() -> None:
    """Each 64 KiB piece ends with an empty stored block; the deflate is one stream."""
    data = bytes(range(256)) * 1024 * 3  # 768 KiB -> 12 pieces
    out = qz.compress(data, 1)
    body = out[24:-8]
    assert body.count(b"\x00\x00\xff\xff") >= 11
    # cut at the marker positions: every prefix up to a marker inflates to a multiple of 64 KiB
    d = zlib.decompressobj(-15)
    first = body.index(b"\x00\x00\xff\xff") + 4
    assert len(d.decompress(body[:first])) == 65536


def test_xfl_and_bounds_tables() -> None:
    assert [qz.xfl_for_level(lv) for lv in range(1, 10)] == [4, 0, 0, 0, 0, 0, 0, 0, 2]
    table = {0: 34, 1: 82, 1024: 1232, 65536: 73808, 65537: 73810, 1 << 20: 1179728,
             100 << 20: 117964880}
    for n, want in table.items():
        assert qz.qz_max_compressed_length(n) == want, n


def test_empty_input_is_the_34_byte_member() -> None:
    out = qz.compress(b"")
    assert len(out) == qz.QZ_COMPRESSED_SZ_OF_EMPTY_FILE == 34
    assert qz.decompress(out) == b"" and gzip.decompress(out) == b""


def test_parameter_checks() -> None:
    for bad in (0, 10, 13, True):
        with pytest.raises(ParameterError, match="QATzip level"):
            qz.compress(b"x", bad)
    with pytest.raises(ParameterError, match="hw_buff_sz"):
        qz.compress(b"x", 1, hw_buff_sz=3000)
    with pytest.raises(ParameterError, match="split"):
        qz.compress_two_calls(b"abc", 4)


def test_other_hw_buff_sz_values_round_trip() -> None:
    data = bytes(range(256)) * 700
    for hb in (1024, 4096, 65536, 512 * 1024):
        for fn in (qz.compress, qz.compress_hw_layout):
            assert qz.decompress(fn(data, 3, hw_buff_sz=hb)) == data
    assert len(qz.inspect_members(qz.compress_hw_layout(data, 1, hw_buff_sz=4096))) == 44


# ----------------------------------------------------------------------------- decoder coverage
def _gzip_member(data: bytes, *, flg: int = 0, name: bytes = b"", comment: bytes = b"",
                 extra: bytes = b"", level: int = 6) -> bytes:
    """A hand-built RFC 1952 member with any FLG combination."""
    hdr = bytearray(b"\x1f\x8b\x08" + bytes([flg]) + struct.pack("<I", 1234) + b"\x00\x03")
    if flg & qz.FEXTRA:
        hdr += struct.pack("<H", len(extra)) + extra
    if flg & qz.FNAME:
        hdr += name + b"\x00"
    if flg & qz.FCOMMENT:
        hdr += comment + b"\x00"
    if flg & qz.FHCRC:
        hdr += struct.pack("<H", zlib.crc32(bytes(hdr)) & 0xFFFF)
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    body = c.compress(data) + c.flush()
    return bytes(hdr) + body + struct.pack("<II", zlib.crc32(data), len(data))


def test_plain_gzip_members_with_every_flag() -> None:
    data = b"multifd " * 5000
    other = b"\x01\x02" + struct.pack("<H", 3) + b"abc"
    members = [
        _gzip_member(data),
        _gzip_member(data, flg=qz.FNAME, name=b"guest.ram"),
        _gzip_member(data, flg=qz.FCOMMENT, comment=b"hello"),
        _gzip_member(data, flg=qz.FHCRC),
        _gzip_member(data, flg=qz.FEXTRA, extra=other),
        _gzip_member(data, flg=qz.FTEXT | qz.FHCRC | qz.FEXTRA | qz.FNAME | qz.FCOMMENT,
                     extra=other, name=b"n", comment=b"c"),
    ]
    for m in members:
        assert gzip.decompress(m) == data  # the stdlib agrees these are valid
        assert qz.decompress(m) == data
        assert qz.decompress(m, max_output=len(data)) == data
    assert qz.decompress(b"".join(members)) == data * len(members)
    info = qz.inspect_members(members[5])[0].header
    assert info.name == b"n" and info.comment == b"c" and not info.is_gzip_ext


def test_mixed_member_kinds_in_one_buffer() -> None:
    data = bytes(range(256)) * 900
    buf = (qz.compress(data[:70000], 1) + gzip.compress(data[70000:100000], mtime=0)
           + qz.compress_hw_layout(data[100000:], 2))
    assert qz.decompress(buf) == data
    assert qz.decompress(buf, max_output=len(data)) == data
    with pytest.raises(PayloadSizeError, match=r"gzip member 3 at byte 2573: QZ src_sz 64864 exce"):
        qz.decompress(buf, max_output=len(data) - 1)


@pytest.mark.parametrize("case", ["bad magic", "bad method", "reserved flags", "truncated header",
                                  "truncated body", "bad crc", "bad isize", "trailing garbage",
                                  "qz src_sz lie", "qz dest_sz lie", "qz len", "header crc",
                                  "empty", "garbage deflate"])
def test_decoder_errors_are_clear(case: str) -> None:
    data = b"0123456789abcdef" * 8192
    good = qz.compress(data, 1)
    b = bytearray(good)
    expect = {
        "bad magic": "not in gzip format", "bad method": "compression method",
        "reserved flags": "reserved FLG", "truncated header": "truncated header",
        "truncated body": "truncated", "bad crc": "CRC-32 mismatch",
        "bad isize": "ISIZE mismatch", "trailing garbage": "trailing garbage",
        "qz src_sz lie": "QZ header says src_sz", "qz dest_sz lie": "dest_sz",
        "qz len": "QZ extra subfield LEN", "header crc": "header CRC16",
        "empty": "empty input", "garbage deflate": "corrupt deflate data",
    }[case]
    if case == "bad magic":
        b[0] = 0x1E
    elif case == "bad method":
        b[2] = 7
    elif case == "reserved flags":
        b[3] |= 0x80
    elif case == "truncated header":
        del b[15:]
    elif case == "truncated body":
        del b[len(b) // 2:]
    elif case == "bad crc":
        b[-8] ^= 1
    elif case == "bad isize":
        b[-1] ^= 1
    elif case == "trailing garbage":
        b += b"junk"
    elif case == "qz src_sz lie":
        b[16:20] = struct.pack("<I", len(data) - 1)
    elif case == "qz dest_sz lie":
        b[20:24] = struct.pack("<I", len(good) - 33)
    elif case == "qz len":
        b[14:16] = struct.pack("<H", 7)
    elif case == "header crc":
        b = bytearray(_gzip_member(data, flg=qz.FHCRC))
        b[10] ^= 1
    elif case == "empty":
        b = bytearray()
    elif case == "garbage deflate":
        b[24:40] = b"\xff" * 16
    with pytest.raises(CodecError, match=expect):
        qz.decompress(bytes(b))
    # the incremental decoder agrees
    dec = qz.GzipExtDecoder()
    with pytest.raises(CodecError,
            match=r"gzip member \d+ at byte \d+: |empty input: no gzip member"):
        for i in range(0, len(b), 777):
            list(dec.feed(bytes(b[i:i + 777])))
        dec.finish()


def test_bomb_is_stopped_at_the_bound_without_allocating() -> None:
    import tracemalloc

    big = 64 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    parts = [c.compress(zeros) for _ in range(big >> 20)] + [c.flush()]
    plain = b"".join(parts)  # a plain gzip member: no QZ size to pre-check
    two_call = qz.compress_two_calls(bytes(1 << 20), 1000, 1)  # QZ sizes 0/0
    tracemalloc.start()
    try:
        for payload, bound in ((plain, 4096), (two_call, 512 * 1024)):
            tracemalloc.reset_peak()
            with pytest.raises(PayloadSizeError, match="stopped at the bound"):
                qz.decompress(payload, max_output=bound)
            assert tracemalloc.get_traced_memory()[1] < bound + (1 << 20)
    finally:
        tracemalloc.stop()
    hdr_lie = qz.compress(bytes(1 << 20))
    with pytest.raises(PayloadSizeError, match="QZ src_sz 1048576 exceeds"):
        qz.decompress(hdr_lie, max_output=4096)


@needs_vectors
@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_incremental_decoder_matches_one_shot(chunk: int) -> None:
    for v in _vectors():
        if chunk == 1 and v["output_size"] > 50000:
            continue  # byte-by-byte on the small text vectors only (speed)
        gold = (VECTORS / v["file"]).read_bytes()
        dec = qz.GzipExtDecoder(out_chunk=65536)
        out = bytearray()
        for i in range(0, len(gold), chunk):
            for piece in dec.feed(gold[i:i + chunk]):
                assert len(piece) <= 65536
                out += piece
        dec.finish()
        assert bytes(out) == _input(v)
        assert dec.members == len(qz.inspect_members(gold))
        assert dec.total_in == len(gold) and dec.total_out == len(out)


def test_python_zlib_alone_reads_only_the_first_hw_member() -> None:
    """Why a multi-member loop matters: zlib.decompress(wbits=31) stops after member 1."""
    data = bytes(range(256)) * 1024
    hw = qz.compress_hw_layout(data, 1)
    assert len(zlib.decompress(hw, 31)) == 65536
    assert qz.decompress(hw) == data


@pytest.mark.skipif(shutil.which("gzip") is None, reason="gzip(1) not installed")
def test_gzip_binary_reads_every_layout() -> None:
    data = bytes(range(256)) * 2000
    for buf in (qz.compress(data, 1), qz.compress(data, 9), qz.compress_hw_layout(data, 1),
                qz.compress_two_calls(data, 200000, 1)):
        res = subprocess.run(["gzip", "-dc"], input=buf, capture_output=True, timeout=30,
                             check=True)
        assert res.stdout == data


@pytest.mark.parametrize("out_chunk", [1000, 65536])
def test_incremental_decoder_member_ending_during_an_unconsumed_tail_pull(out_chunk: int) -> None:
    """Several highly compressible members fed at once: a member ends while the decoder pulls
    ``unconsumed_tail`` at the output bound, where CPython sets both ``unconsumed_tail`` and
    ``unused_data`` (the leftover was subtracted twice: wrong dest_sz, 'QZ header says')."""
    text = b"".join(b"%06d Lorem ipsum dolor sit amet\n" % (k % 1000) for k in range(9000))
    members = [qz.compress(text[i:], 1) for i in (0, 7, 300)]
    data = b"".join(members)
    for feed in (len(data), 4096):
        dec = qz.GzipExtDecoder(out_chunk=out_chunk)
        out = bytearray()
        for i in range(0, len(data), feed):
            for piece in dec.feed(data[i:i + feed]):
                out += piece
        dec.finish()
        assert bytes(out) == text + text[7:] + text[300:]
        assert dec.members == 3 and dec.total_in == len(data)


# ------------------------------------------- recorded from the real libqatzip (fixtures/qatzip)

def _real_dir() -> Path:
    from qatmig_engine.resources import fixtures_dir

    return Path(fixtures_dir("qatzip"))


def _real_manifest() -> dict:
    return json.loads((_real_dir() / "manifest.json").read_text())


def _recorded_input(kind: str, n: int) -> bytes:
    """tools/record_qatzip_vectors.py's make_input."""
    if kind == "zero":
        return bytes(n)
    if kind == "random":
        out = bytearray()
        k = 0
        while len(out) < n:
            out += hashlib.sha256(b"qatmig-%d-%d" % (n, k)).digest()
            k += 1
        return bytes(out[:n])
    line = b"%06d qatmig byte-exactness line\n"
    return b"".join(line % (k % 977) for k in range(n // 30 + 1))[:n]


@pytest.mark.parametrize("level", range(1, 10))
def test_byte_exact_with_the_real_library_at_every_level_and_size_class(level: int) -> None:
    """Against digests recorded from the real libqatzip 1.3.1: 3 kinds x 7 sizes per level
    (incompressible data at levels >= 4 used to differ: a second empty stored block)."""
    cases = [c for c in _real_manifest()["compress_cases"] if c["level"] == level]
    assert len(cases) == 21
    bad = []
    for c in cases:
        out = qz.compress(_recorded_input(c["kind"], c["input_bytes"]), level)
        if hashlib.sha256(out).hexdigest() != c["sha256"] or len(out) != c["output_bytes"]:
            bad.append((c["kind"], c["input_bytes"]))
    assert not bad, f"differs from libqatzip at level {level}: {bad}"


def test_files_made_by_the_real_qzip_tool() -> None:
    base = _real_dir()
    for f in _real_manifest()["files"]:
        raw = (base / f["file"]).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == f["sha256"]
        want = bytes(f["input"]["bytes"])
        dec = qz.GzipExtDecoder()  # the CLI's reader: 1 MiB reads, 1 MiB output pieces
        out = bytearray()
        for i in range(0, len(raw), 1 << 20):
            for piece in dec.feed(raw[i:i + (1 << 20)]):
                out += piece
        dec.finish()
        assert bytes(out) == want, f["file"]
        if f["input"]["bytes"] == 0:
            assert qz.compress(b"") == raw  # qzip writes the 34-byte member for an empty file
