"""Property and mutation fuzzing of every codec: round trips, only typed errors, bounded bombs.

The long run is ``benchmarks/soak_fuzz.py``; these keep to a few seconds per property.
"""

from __future__ import annotations

import hashlib
import random
import struct
import tracemalloc
import zlib

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qatmig_engine.codecs import METHODS, get_codec, qzformat
from qatmig_engine.errors import CodecError, PayloadSizeError

PS = 4096
FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _page(kind: int, seed: int) -> bytes:
    if kind == 0:
        return bytes(PS)
    if kind == 1:  # incompressible
        out = b"".join(hashlib.sha256(b"%d/%d" % (seed, k)).digest() for k in range(PS // 32))
        return out
    if kind == 2:  # short repeated pattern
        pat = hashlib.sha256(b"%d" % seed).digest()[: 1 + seed % 31]
        return (pat * (PS // len(pat) + 1))[:PS]
    if kind == 3:  # half random, half text
        return _page(1, seed)[: PS // 2] + (b"line %d of text\n" % seed * 400)[: PS // 2]
    return bytes([seed & 0xFF]) * PS  # kind 4: constant non-zero


pages_st = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 10_000)), min_size=1,
                    max_size=6)
packets_st = st.lists(pages_st, min_size=1, max_size=4)


def _levels(method: str) -> st.SearchStrategy[int | None]:
    spec = get_codec(method)
    if spec.level_range is None:
        return st.just(None)
    lo, hi = spec.level_range
    return st.one_of(st.none(), st.integers(lo, hi))


def _build(packets: list[list[tuple[int, int]]]) -> list[bytes]:
    return [b"".join(_page(k, s) for k, s in pk) for pk in packets]


@pytest.mark.parametrize("method", list(METHODS))
@FAST
@given(data=st.data(), packets=packets_st)
def test_round_trip_property(method: str, data: st.DataObject,
                             packets: list[list[tuple[int, int]]]) -> None:
    level = data.draw(_levels(method), label="level")
    spec = get_codec(method)
    c = spec.new_compressor(level, channel=1)
    d = spec.new_decompressor(channel=1)
    for raw in _build(packets):
        n = len(raw) // PS
        payload = c.compress(raw)
        assert len(payload) <= spec.max_payload(n)
        assert bytes(d.decompress(payload, n)) == raw


def _decode_expecting_only_codec_errors(method: str, payloads: list[bytes],
                                        pages: list[int]) -> None:
    d = get_codec(method).new_decompressor(channel=2)
    for pl, n in zip(payloads, pages, strict=True):
        try:
            out = d.decompress(pl, n)
        except CodecError:
            return  # the only acceptable failure type (PayloadSizeError is a subclass)
        assert len(out) == n * PS  # never more or fewer bytes than the packet's pages


def _mutate(rng: random.Random, b: bytes) -> bytes:
    b = bytearray(b)
    op = rng.randrange(7)
    if op == 0 and b:  # bit flips
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncate
        del b[rng.randrange(len(b) + 1):]
    elif op == 2:  # append garbage
        b += rng.randbytes(rng.randint(1, 64))
    elif op == 3 and b:  # overwrite a span
        i = rng.randrange(len(b))
        n = rng.randint(1, 32)
        b[i:i + n] = rng.randbytes(n)[: len(b) - i]
    elif op == 4 and b:  # delete a span
        i = rng.randrange(len(b))
        del b[i:i + rng.randint(1, 32)]
    elif op == 5:  # insert bytes
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 16))
    elif op == 6 and len(b) > 8:  # interesting values in a header-ish spot
        i = rng.randrange(min(len(b), 32))
        b[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x10\x00\x00",
                                 b"\x7f\xff\xff\xff"])[: len(b) - i]
    return bytes(b)


@pytest.mark.parametrize("method", list(METHODS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets=st.lists(pages_st, min_size=1, max_size=3), seed=st.integers(0, 2**32 - 1),
       victim=st.integers(0, 2))
def test_mutated_payloads_raise_only_codec_errors(method: str,
                                                  packets: list[list[tuple[int, int]]],
                                                  seed: int, victim: int) -> None:
    raws = _build(packets)
    c = get_codec(method).new_compressor(channel=2)
    payloads = [bytes(c.compress(r)) for r in raws]
    rng = random.Random(seed)
    k = victim % len(payloads)
    payloads[k] = _mutate(rng, payloads[k])
    pages = [len(r) // PS for r in raws]
    if rng.random() < 0.2:  # sometimes lie about the page count instead
        pages[k] = rng.randint(0, 130)
    _decode_expecting_only_codec_errors(method, payloads, pages)


@pytest.mark.parametrize("method", list(METHODS))
@FAST
@given(payload=st.binary(max_size=3000), n=st.integers(0, 4))
def test_arbitrary_bytes_raise_only_codec_errors(method: str, payload: bytes, n: int) -> None:
    _decode_expecting_only_codec_errors(method, [payload], [n])


@pytest.mark.parametrize("method", ["zlib", "zstd", "qatzip"])
@FAST
@given(payload=st.binary(max_size=64), n=st.integers(1, 2))
def test_valid_prefix_then_garbage(method: str, payload: bytes, n: int) -> None:
    """Garbage glued to a real stream start (headers pass, the body is junk)."""
    head = {"zlib": b"\x78\x01", "zstd": b"\x28\xb5\x2f\xfd\x00\x58",
            "qatzip": qzformat.gzip_ext_header(n * PS, len(payload), 4)}[method]
    _decode_expecting_only_codec_errors(method, [head + payload], [n])


@FAST
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(1, 300), max_size=8))
def test_qzformat_incremental_decoder_only_codec_errors(data: bytes, cuts: list[int]) -> None:
    for buf in (data, qzformat.gzip_ext_header(len(data), len(data), 0) + data):
        dec = qzformat.GzipExtDecoder(out_chunk=4096)
        pos = 0
        try:
            for cut in [*cuts, len(buf)]:
                for piece in dec.feed(buf[pos:pos + cut]):
                    assert len(piece) <= 4096
                pos += cut
            dec.finish()
        except CodecError:
            pass


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=20000), level=st.integers(1, 9),
       layout=st.sampled_from(["sw", "hw", "two"]), seed=st.integers(0, 2**32 - 1))
def test_qzformat_layouts_round_trip_and_mutations(raw: bytes, level: int, layout: str,
                                                   seed: int) -> None:
    hb = 1024
    buf = {"sw": lambda: qzformat.compress(raw, level, hw_buff_sz=hb),
           "hw": lambda: qzformat.compress_hw_layout(raw, level, hw_buff_sz=hb),
           "two": lambda: qzformat.compress_two_calls(raw, len(raw) // 3, level,
                                                      hw_buff_sz=hb)}[layout]()
    assert qzformat.decompress(buf) == raw
    assert qzformat.decompress(buf, max_output=len(raw)) == raw
    bad = _mutate(random.Random(seed), buf)
    try:
        out = qzformat.decompress(bad, max_output=len(raw))
    except CodecError:
        return
    assert len(out) <= len(raw) + 1


# --------------------------------------------------------------------------- decompression bombs
def _bomb_peak(method: str, payload: bytes, normal_pages: int) -> int:
    """Peak traced allocation while a fresh decoder rejects ``payload`` with PayloadSizeError."""
    d = get_codec(method).new_decompressor()
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        with pytest.raises(PayloadSizeError, match=r"packet size received \d+ size expected \d+"
                           r"|decompressed len|decompressed length error"):
            d.decompress(payload, normal_pages)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_zlib_bomb_within_the_byte_bound_stops_at_one_page() -> None:
    # 4 MiB of zeros deflate to ~4 KiB: small enough to pass max_payload for a 1-page packet
    z = zlib.compressobj(9)
    bomb = z.compress(bytes(4 << 20)) + z.flush(zlib.Z_SYNC_FLUSH)
    spec = get_codec("zlib")
    assert len(bomb) <= spec.max_payload(1)
    d = spec.new_decompressor()
    with pytest.raises(PayloadSizeError, match="packet size received 4097 size expected 4096"):
        d.decompress(bomb, 1)
    peak = _bomb_peak(spec.name, bomb, 1)
    assert peak < 256 * 1024  # output bounded at 4097 bytes (+ zlib's window), not 4 MiB


def test_zlib_100mib_bomb_is_refused_before_inflating() -> None:
    z = zlib.compressobj(9)
    bomb = z.compress(bytes(100 << 20)) + z.flush(zlib.Z_SYNC_FLUSH)
    spec = get_codec("zlib")
    d = spec.new_decompressor()
    with pytest.raises(PayloadSizeError, match="received unexpectedly large packet"):
        d.decompress(bomb, 1)
    # and a full 128-page packet whose payload inflates to 100 MiB stops at 512 KiB + 1
    assert len(bomb) <= spec.max_payload(128)
    peak = _bomb_peak(spec.name, bomb, 128)
    assert peak < 2 << 20


def test_zstd_bomb_stops_at_the_packet_size() -> None:
    c = zstandard.ZstdCompressor(level=19).compressobj()
    bomb = c.compress(bytes(100 << 20)) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    spec = get_codec("zstd")
    assert len(bomb) <= spec.max_payload(1)
    with pytest.raises(PayloadSizeError, match="received 4097 size expected 4096"):
        spec.new_decompressor().decompress(bomb, 1)
    peak = _bomb_peak(spec.name, bomb, 1)
    # libzstd writes into our exact-size buffer (+1 probe byte): nothing near 100 MiB exists
    assert peak < 256 * 1024


def test_qatzip_bomb_stops_at_the_packet_size() -> None:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [c.compress(bytes(1 << 20)) for _ in range(100)] + [c.flush()]
    bomb = b"".join(parts)  # plain gzip: no QZ size to check up front
    spec = get_codec("qatzip")
    assert len(bomb) <= spec.max_payload(1)
    with pytest.raises(PayloadSizeError, match="size expected 4096"):
        spec.new_decompressor().decompress(bomb, 1)
    peak = _bomb_peak(spec.name, bomb, 1)
    assert peak < 512 * 1024


@pytest.mark.parametrize("method", ["qpl", "uadk"])
def test_per_page_bomb_stops_at_one_page(method: str) -> None:
    c = zlib.compressobj(9, zlib.DEFLATED, -15 if method == "qpl" else 15)
    body = c.compress(bytes(1 << 20)) + c.flush()
    assert len(body) < PS
    payload = struct.pack(">I", len(body)) + body
    spec = get_codec(method)
    with pytest.raises(PayloadSizeError, match=r"qpl decompressed len \d+, expected"
                       r"|decompressed length error \(\d+ bytes"):
        spec.new_decompressor().decompress(payload, 1)
    peak = _bomb_peak(spec.name, payload, 1)
    assert peak < 256 * 1024


# --------------------------------------------------------------------------- scripts stay alive
def _load_script(name: str):  # type: ignore[no-untyped-def]
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_soak_script_runs_every_target_without_failures() -> None:
    soak = _load_script("soak_fuzz")
    res = soak.soak(seconds=30.0, seed=7, only=None, max_cases=120)
    assert res["cases"] == 120 and res["failures"] == []
    assert all(n >= 10 for n in res["cases_per_target"].values())
    assert "wire-packet" in res["cases_per_target"]  # the wire decoders are fuzzed too
    assert "| **total** | **120** |" in soak.markdown(res)


def test_bench_script_measures_against_the_raw_call() -> None:
    bench = _load_script("bench_codecs")
    try:
        packets, _ = bench.load_packets(max_packets=1)
    except SystemExit:
        pytest.skip("benchmark data (shared vectors/corpora) not found; set QATMIG_SHARED")
    row = bench.bench_one("zlib", 1, packets[:1], 1, bench.raw_zlib(1))
    assert row["ratio"] > 1 and row["compress_mbps"] > 0 and "compress_overhead_pct" in row
    # raw baselines produce the same bytes as the codecs they stand for
    assert bench.raw_zlib(1)[0]()(packets[0]) == get_codec("zlib").new_compressor(1).compress(
        packets[0])
    assert bench.raw_zstd(1)[0]()(packets[0]) == get_codec("zstd").new_compressor(1).compress(
        packets[0])
    raw_qz = bench.raw_qatzip(1)[0]()(packets[0])
    assert raw_qz[10:] == qzformat.compress(packets[0], 1)[24:]  # same deflate + footer
