"""Conformance (white-box): the implementation's codecs, through its ``codec(method)`` access.

Runs for implementations with the ``codec-access`` capability (the reference engine has it; a
black-box QEMU binary does not, and these tests report UNIMPLEMENTED there). Checked: every
level parameter's edges, streams across packets in order, the declared payload bound, bad
input ending in a deliberate error (never a crash-type exception), and decoding the multifd
streams a real QEMU 7.2 recorded (``qatmig_fixtures/golden/qemu-7.2``).
"""

from __future__ import annotations

import hashlib
import random
import struct

import pytest

from pytest_qatmig.adapters import codec_access

PAGE = 4096
#: Exceptions that mean "the decoder crashed", not "the decoder rejected the input".
CRASHES = (AssertionError, IndexError, KeyError, MemoryError, struct.error, TypeError,
           UnboundLocalError, ZeroDivisionError)
LEVELS = {"zlib": (0, 1, 9), "zstd": (0, 1, 20), "qatzip": (1, 9)}
OUT_OF_RANGE = {"zlib": (-1, 10), "zstd": (-1, 21), "qatzip": (0, 10)}
LEVEL_CASES = [(m, lv) for m, lvs in LEVELS.items() for lv in lvs] + [
    ("none", None), ("qpl", None), ("uadk", None)]


def _codec(impl, method):  # type: ignore[no-untyped-def]
    spec = codec_access(impl, method)
    if spec is None:
        pytest.skip(f"UNIMPLEMENTED: {impl.name} gives no codec access for {method}")
    return spec


def _packet(seed: int, pages: int) -> bytes:
    """Mixed pages, deterministic: text, repeats, random, zero, as guest RAM has."""
    rng = random.Random(seed)
    out = bytearray()
    for p in range(pages):
        kind = rng.randrange(4)
        if kind == 0:
            line = f"page {p:03d} of packet {seed}: the quick brown fox jumps over\n".encode()
            out += (line * (PAGE // len(line) + 1))[:PAGE]
        elif kind == 1:
            out += bytes([rng.randrange(256)]) * PAGE
        elif kind == 2:
            out += rng.randbytes(PAGE)
        else:
            out += bytes(PAGE)
    return bytes(out)


def _crash_free(call) -> bool:  # type: ignore[no-untyped-def]
    """Run ``call``; True when it raised a deliberate error, False when it returned.

    Deliberate errors are the codec contract's (``CodecError``/``PayloadSizeError``, any
    ``QatmigError``) or a ``ValueError``; anything else -- a crash-type exception, a
    ``NotImplementedError``, a library's raw error -- fails the test with what it was.
    """
    from qatmig_engine.errors import QatmigError

    try:
        call()
    except CRASHES as exc:
        raise AssertionError(f"decoder crashed instead of rejecting: {exc!r}") from exc
    except Exception as exc:
        if isinstance(exc, NotImplementedError) or not isinstance(exc, QatmigError | ValueError):
            raise AssertionError(
                f"decoder raised {type(exc).__name__} ({exc}), not a deliberate codec error "
                "(CodecError, PayloadSizeError or ValueError)") from exc
        return True
    return False


def _covered_bytes(member: bytes) -> range:
    """Bytes of one gzip member that its CRC-32/ISIZE (or inflate itself) must notice when
    flipped: the deflate data (less its last byte, whose padding bits inflate ignores) and the
    8-byte trailer. Header bytes such as MTIME, XFL and OS are legitimately ignored."""
    pos = 10
    if member[3] & 0x04:  # FEXTRA: XLEN then the extra field (QATzip's QZ sizes)
        pos = 12 + (member[10] | member[11] << 8)
    return range(pos, len(member) - 9) if len(member) - 9 > pos else range(0)


@pytest.mark.parametrize(
    ("method", "level"),
    [pytest.param(m, lv, marks=pytest.mark.qatmig_requires("codec-access", m))
     for m, lv in LEVEL_CASES],
    ids=[f"{m}-L{lv}" if lv is not None else m for m, lv in LEVEL_CASES],
)
def test_packets_round_trip_in_order_within_the_bound(qatmig_impl, method, level) -> None:  # type: ignore[no-untyped-def]
    spec = _codec(qatmig_impl, method)
    comp = spec.new_compressor(level, channel=0)
    dec = spec.new_decompressor(channel=0)
    for k, pages in enumerate((128, 128, 7, 1, 128)):
        data = _packet(k, pages)
        payload = bytes(comp.compress(data))
        assert len(payload) <= spec.max_payload(pages), "payload above the declared bound"
        assert bytes(dec.decompress(payload, pages)) == data, f"packet {k} differs"


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.qatmig_requires("codec-access", m))
               for m in OUT_OF_RANGE])
def test_out_of_range_levels_are_rejected_with_qemus_text(qatmig_impl, method) -> None:  # type: ignore[no-untyped-def]
    spec = _codec(qatmig_impl, method)
    lo, hi = LEVELS[method][0], LEVELS[method][-1]
    for bad in OUT_OF_RANGE[method]:
        with pytest.raises(ValueError, match=f"expects a value between {lo} and {hi}"):
            spec.new_compressor(bad, channel=0)


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.qatmig_requires("codec-access", m))
               for m in ("zlib", "zstd", "qatzip", "qpl", "uadk")])
def test_bad_payloads_are_rejected_not_crashed_on(qatmig_impl, method) -> None:  # type: ignore[no-untyped-def]
    spec = _codec(qatmig_impl, method)
    good = bytes(spec.new_compressor(None, channel=0).compress(_packet(1, 4)))
    rng = random.Random(7)
    # Structural damage every decoder must reject: nothing, half, trailing bytes that cannot
    # continue the stream (0xff starts a reserved block type in deflate and zstd; zero bytes
    # would be valid empty zstd blocks), noise.
    structural = [b"", good[: len(good) // 2], good + b"\xff" * 9, rng.randbytes(len(good))]
    for case in structural:
        dec = spec.new_decompressor(channel=0)  # fresh state: streams break on bad input
        assert _crash_free(lambda c=case, d=dec: _expect_exact(d, c, 4)), (
            f"a damaged payload ({len(case)} of {len(good)} bytes) decoded without an error")
    # Bit flips: multifd's zlib/zstd/qpl/uadk payloads carry no checksum, so a flip may decode
    # to other bytes of the right size; it must never crash or return the wrong size. QATzip's
    # gzip members carry CRC-32 + ISIZE: there every flip of a covered byte must be caught
    # (and only those are flipped, so the verdict does not depend on the seed), plus the last
    # 8 bytes (the trailer) each once.
    covered = _covered_bytes(good) if method == "qatzip" else range(len(good))
    assert len(covered) > 8, f"{method}: no payload bytes to flip"
    spots = [rng.choice(covered) for _ in range(40)]
    if method == "qatzip":
        spots += list(range(len(good) - 8, len(good)))
    for spot in spots:
        mutated = bytearray(good)
        mutated[spot] ^= 1 << rng.randrange(8)
        dec = spec.new_decompressor(channel=0)
        rejected = _crash_free(lambda c=bytes(mutated), d=dec: _expect_exact(d, c, 4))
        if method == "qatzip":
            assert rejected, (
                f"a bit flip at byte {spot} of a CRC-protected gzip-ext member went unnoticed")


def _expect_exact(dec, payload: bytes, pages: int) -> None:  # type: ignore[no-untyped-def]
    out = bytes(dec.decompress(payload, pages))
    if len(out) != pages * PAGE:
        raise AssertionError(f"decoder returned {len(out)} bytes for {pages} pages")


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.qatmig_requires("codec-access", m))
               for m in ("zlib", "zstd", "qatzip")])
def test_decompression_bomb_is_stopped(qatmig_impl, method) -> None:  # type: ignore[no-untyped-def]
    spec = _codec(qatmig_impl, method)
    payload = bytes(spec.new_compressor(None, channel=0).compress(bytes(128 * PAGE)))
    dec = spec.new_decompressor(channel=0)
    # 512 KiB of zeros announced as one page: the decoder must stop, not return or inflate.
    assert _crash_free(lambda: dec.decompress(payload, 1)), "a 128-page payload passed as 1 page"


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.qatmig_requires("codec-access", m))
               for m in ("none", "zlib", "zstd")])
def test_real_qemu_7_2_streams_decode_to_the_source_ram(qatmig_impl, method) -> None:  # type: ignore[no-untyped-def]
    from qatmig_engine.qemu.golden import load_connections, load_manifest
    from qatmig_engine.wire import InitPacket, decode_packet, packet_len

    spec = _codec(qatmig_impl, method)
    manifest = load_manifest()
    ram = bytearray(manifest["ram"]["size"])  # zero pages travel on the main channel
    hlen = packet_len(PAGE)
    for conn in load_connections(method, manifest)[1:]:  # [0] is the main channel
        init = InitPacket.decode(conn[:64])
        dec = spec.new_decompressor(channel=init.channel_id)
        pos = 64
        while pos < len(conn):
            pkt = decode_packet(conn[pos : pos + hlen], "qemu-7.2", channel=init.channel_id)
            pos += hlen
            if not pkt.normal_pages:
                continue
            if pkt.ramblock != "pc.ram":  # ROM blocks: not part of the compared RAM file
                dec.decompress(conn[pos : pos + pkt.payload_len], pkt.normal_pages)
                pos += pkt.payload_len
                continue
            out = memoryview(dec.decompress(conn[pos : pos + pkt.payload_len], pkt.normal_pages))
            pos += pkt.payload_len
            for i, off in enumerate(pkt.normal_offsets):
                ram[off : off + PAGE] = out[i * PAGE : (i + 1) * PAGE]
    assert hashlib.sha256(ram).hexdigest() == manifest["ram"]["sha256"]


def _qatzip_captures() -> list[str]:
    from qatmig_engine.qemu.golden import load_manifest

    return [c["name"] for c in load_manifest("qemu-10.0-qatzip")["captures"]
            if c["direction"] != "engine-qemu"]


@pytest.mark.qatmig_requires("codec-access", "qatzip")
@pytest.mark.parametrize("capture", _qatzip_captures())
def test_real_qemu_qatzip_streams_decode_to_the_source_ram(qatmig_impl, capture) -> None:  # type: ignore[no-untyped-def]
    """QEMU 10.0 built with QATzip (libqatzip 1.3.1, levels 1 and 9): its packets decode with
    the implementation's qatzip decoder to the RAM QEMU sent (zero pages: multifd zero_pages,
    onto zeroed RAM)."""
    from qatmig_engine.qemu.golden import load_connections, load_manifest
    from qatmig_engine.wire import InitPacket, decode_packet, packet_len

    spec = _codec(qatmig_impl, "qatzip")
    manifest = load_manifest("qemu-10.0-qatzip")
    entry = next(c for c in manifest["captures"] if c["name"] == capture)
    conns = load_connections("qatzip", {**manifest, "captures": [entry]})
    ram = bytearray(manifest["ram"]["size"])
    hlen = packet_len(PAGE)
    for conn in conns[1:]:  # [0] is the main channel
        init = InitPacket.decode(conn[:64])
        dec = spec.new_decompressor(channel=init.channel_id)
        pos = 64
        while pos < len(conn):
            pkt = decode_packet(conn[pos : pos + hlen], manifest["dialect"],
                                channel=init.channel_id)
            pos += hlen
            if not pkt.normal_pages:
                continue
            out = memoryview(dec.decompress(conn[pos : pos + pkt.payload_len], pkt.normal_pages))
            pos += pkt.payload_len
            if pkt.ramblock != "pc.ram":  # ROM blocks: not part of the compared RAM file
                continue
            for i, off in enumerate(pkt.normal_offsets):
                ram[off : off + PAGE] = out[i * PAGE : (i + 1) * PAGE]
    assert hashlib.sha256(ram).hexdigest() == manifest["ram"]["sha256"]
