"""Wire format: byte layout per dialect, QEMU's validation texts, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qatmig_engine.constants import (
    MULTIFD_FLAG_DEVICE_STATE,
    MULTIFD_FLAG_QATZIP,
    MULTIFD_FLAG_SYNC,
    MULTIFD_FLAG_ZLIB,
    MULTIFD_FLAG_ZSTD,
)
from qatmig_engine.dialects import DIALECTS
from qatmig_engine.errors import (
    InitPacketError,
    PacketError,
    ParameterError,
    UnsupportedDialectFeature,
    WireError,
)
from qatmig_engine.wire import (
    InitPacket,
    Packet,
    PacketValidator,
    decode_packet,
    duplicate_channel_error,
    identify_channel,
    make_sync_packet,
    packet_len,
)

UUID = "12345678-1234-1234-1234-123456789abc"
BLOCKS = {"pc.ram": 64 << 20, "pc.bios": 256 << 10}


def fixed_bound(n: int, page_size: int = 4096) -> int:
    return 2 * 512 * 1024


# ------------------------------------------------------------------ byte layout
def test_init_packet_bytes_match_qemu_layout():
    raw = InitPacket(channel_id=3, uuid=UUID).encode()
    assert len(raw) == 64
    assert raw[:4] == bytes.fromhex("11223344")
    assert raw[4:8] == bytes.fromhex("00000001")
    assert raw[8:24] == bytes.fromhex("12345678123412341234123456789abc")
    assert raw[24] == 3
    assert raw[25:] == bytes(39)


def test_init_packet_default_uuid_is_zero_like_qemu_without_uuid():
    assert InitPacket(0).encode()[8:24] == bytes(16)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_packet_header_offsets(dialect):
    d = DIALECTS[dialect]
    zero = 3 if d.has_zero_pages else 0
    p = Packet(
        flags=MULTIFD_FLAG_SYNC | MULTIFD_FLAG_ZSTD, pages_alloc=128, normal_pages=2,
        next_packet_size=0x1234, packet_num=0x0102030405060708, zero_pages=zero,
        ramblock="pc.ram", offsets=[0x1000, 0x3000] + [0x5000 * (i + 1) for i in range(zero)],
    )
    raw = p.encode(dialect)
    assert len(raw) == packet_len() == 1344
    magic, version, flags, alloc, normal, nps, num = struct.unpack_from(">IIIIIIQ", raw)
    assert (magic, version, flags, alloc, normal, nps, num) == (
        0x11223344, 1, 0x5, 128, 2, 0x1234, 0x0102030405060708,
    )
    (zero_field,) = struct.unpack_from(">I", raw, 32)
    assert zero_field == zero  # 7.2: first half of unused[0], always 0
    assert raw[36:64] == bytes(28)
    assert raw[64:70] == b"pc.ram" and raw[70:320] == bytes(250)
    assert struct.unpack_from(">QQ", raw, 320) == (0x1000, 0x3000)
    assert raw[320 + 8 * (2 + zero) :] == bytes(8 * (126 - zero))
    back = decode_packet(raw, dialect)
    assert back.offsets == tuple(p.offsets)
    assert back.zero_pages == zero and back.ramblock == "pc.ram" and back.sync


def test_7_2_dialect_cannot_carry_zero_pages():
    p = Packet(flags=0, pages_alloc=128, normal_pages=0, next_packet_size=0, packet_num=1,
               zero_pages=1, ramblock="pc.ram", offsets=[0])
    with pytest.raises(PacketError, match="no zero_pages field"):
        p.encode("qemu-7.2")


def test_7_2_ignores_bytes_32_to_63():
    p = Packet(flags=0, pages_alloc=128, normal_pages=1, next_packet_size=4096,
               packet_num=1, ramblock="pc.ram", offsets=[0])
    raw = bytearray(p.encode("qemu-7.2"))
    raw[32:36] = b"\0\0\0\x05"  # a 9.0 sender's zero_pages seen by a 7.2 receiver
    back = decode_packet(raw, "qemu-7.2")
    assert back.zero_pages == 0 and back.reserved[:4] == b"\0\0\0\x05"


def test_stale_offset_slots_are_counted_not_used():
    p = Packet(flags=0, pages_alloc=128, normal_pages=1, next_packet_size=4096,
               packet_num=1, ramblock="pc.ram", offsets=[0])
    raw = bytearray(p.encode("qemu-7.2"))
    struct.pack_into(">Q", raw, 320 + 8 * 5, 0x7000)
    back = decode_packet(raw, "qemu-7.2")
    assert back.offsets == (0,) and back.stale_slots == 1


def test_sync_packets_per_dialect():
    s72 = make_sync_packet("qemu-7.2", 9, "zlib")
    s92 = make_sync_packet("qemu-9.2", 9, "zlib")
    assert s72.flags == s92.flags == MULTIFD_FLAG_SYNC
    assert s72.pages_alloc == 128 and s92.pages_alloc == 0
    for d, s in (("qemu-7.2", s72), ("qemu-9.2", s92)):
        back = decode_packet(s.encode(d), d)
        assert back.sync and back.payload_len == 0
        PacketValidator(d, "zlib", BLOCKS, channel=0, max_payload=fixed_bound).check(back)


def test_identify_channel():
    assert identify_channel(b"QEVM") == "main"
    assert identify_channel(bytes.fromhex("11223344")) == "multifd"
    with pytest.raises(WireError, match="unknown channel magic: 305419896"):
        identify_channel(bytes.fromhex("12345678"))


# ------------------------------------------------------------------ init validation
def test_init_bad_magic_and_main_channel_hint():
    raw = bytearray(InitPacket(0).encode())
    raw[:4] = b"QEVM"
    with pytest.raises(InitPacketError, match="magic 5145564d expected 11223344.*main channel"):
        InitPacket.decode(raw)


def test_init_bad_version():
    raw = bytearray(InitPacket(0).encode())
    raw[7] = 2
    with pytest.raises(InitPacketError, match="received packet version 2 expected 1"):
        InitPacket.decode(raw)


def test_init_uuid_mismatch_uses_qemu_text():
    raw = InitPacket(1).encode()
    with pytest.raises(InitPacketError) as ei:
        InitPacket.decode(raw, expected_uuid=UUID)
    assert str(ei.value) == (
        "multifd: received uuid '00000000-0000-0000-0000-000000000000' and expected uuid "
        f"'{UUID}' for channel 1"
    )
    assert ei.value.field == "uuid"


def test_init_channel_id_bounds_without_qemus_off_by_one():
    assert InitPacket.decode(InitPacket(3).encode(), channels=4).channel_id == 3
    with pytest.raises(InitPacketError, match="ids run from 0 to 3"):
        InitPacket.decode(InitPacket(4).encode(), channels=4)
    with pytest.raises(InitPacketError, match="greater than number of channels 4"):
        InitPacket.decode(InitPacket(5).encode(), channels=4)


def test_init_short_and_duplicate():
    with pytest.raises(InitPacketError, match="63 bytes"):
        InitPacket.decode(InitPacket(0).encode()[:63])
    assert "already setup'" in str(duplicate_channel_error(2))


def test_init_channel_id_must_fit_u8():
    with pytest.raises(InitPacketError, match=r"channel id 256 does not fit the init packet's u8"):
        InitPacket(256).encode()


# ------------------------------------------------------------------ packet validation
def _data_packet(**kw):
    base = dict(flags=MULTIFD_FLAG_ZSTD, pages_alloc=128, normal_pages=1,
                next_packet_size=100, packet_num=42, ramblock="pc.ram", offsets=[0])
    base.update(kw)
    return Packet(**base)


@pytest.mark.parametrize(
    "dialect,text",
    [
        ("qemu-7.2", "multifd: received packet magic 11223345 and expected magic 11223344"),
        ("qemu-9.2", "multifd: received packet magic 11223345, expected 11223344"),
    ],
)
def test_packet_magic_wording_per_dialect(dialect, text):
    raw = bytearray(_data_packet().encode(dialect))
    raw[3] = 0x45
    with pytest.raises(PacketError) as ei:
        decode_packet(raw, dialect, channel=1)
    assert str(ei.value) == text and ei.value.channel == 1


def test_packet_version_and_counts():
    raw = bytearray(_data_packet().encode("qemu-9.2"))
    raw[7] = 9
    with pytest.raises(PacketError, match="version 9, expected 1"):
        decode_packet(raw, "qemu-9.2")
    raw = bytearray(_data_packet().encode("qemu-9.2"))
    struct.pack_into(">I", raw, 12, 129)
    with pytest.raises(PacketError, match="with 129 pages, expected 128"):
        decode_packet(raw, "qemu-9.2")
    with pytest.raises(PacketError, match="size 129 and expected a size of 128"):
        decode_packet(raw, "qemu-7.2")
    raw = bytearray(_data_packet().encode("qemu-9.2"))
    struct.pack_into(">I", raw, 12, 4)
    struct.pack_into(">I", raw, 16, 5)
    with pytest.raises(PacketError, match="5 non-zero pages, which exceeds maximum expected"):
        decode_packet(raw, "qemu-9.2")
    struct.pack_into(">I", raw, 16, 2)
    struct.pack_into(">I", raw, 32, 3)
    with pytest.raises(PacketError, match="3 zero pages, expected maximum 2"):
        decode_packet(raw, "qemu-9.2")


def test_truncated_header_is_eof_error():
    raw = _data_packet().encode("qemu-9.2")
    with pytest.raises(PacketError, match="unexpected EOF after packet header"):
        decode_packet(raw[:500], "qemu-9.2")


def test_device_state_packets_refused_clearly():
    raw = bytearray(_data_packet().encode("qemu-9.2"))
    struct.pack_into(">I", raw, 8, MULTIFD_FLAG_DEVICE_STATE)
    with pytest.raises(UnsupportedDialectFeature, match="device-state"):
        decode_packet(raw, "qemu-9.2")


def test_flag_mismatch_uses_qemu_text():
    v = PacketValidator("qemu-9.2", "none", BLOCKS, channel=0, max_payload=fixed_bound)
    with pytest.raises(PacketError, match="multifd 0: flags received 2 flags expected 0"):
        v.check(_data_packet(flags=MULTIFD_FLAG_ZLIB))


def test_bits_older_receivers_dropped_are_caught():
    # 7.2's mask 0x0E would turn QATZIP (0x20) into "none" and desynchronise the stream.
    v = PacketValidator("qemu-7.2", "none", BLOCKS, channel=0, max_payload=fixed_bound)
    with pytest.raises(PacketError, match="outside the qemu-7.2 compression mask"):
        v.check(_data_packet(flags=MULTIFD_FLAG_QATZIP, next_packet_size=4096))


def test_unknown_flag_bits():
    v = PacketValidator("qemu-9.2", "zstd", BLOCKS, channel=0, max_payload=fixed_bound)
    with pytest.raises(PacketError, match="unknown flag bits 100"):
        v.check(_data_packet(flags=0x104))


def test_empty_packets_may_lack_the_method_bit():
    v = PacketValidator("qemu-7.2", "zstd", BLOCKS, channel=0, max_payload=fixed_bound)
    # 7.2: empty packet with stale next_packet_size and stale block name: tolerated.
    v.check(_data_packet(flags=0, normal_pages=0, next_packet_size=524288, ramblock="x",
                         offsets=[]))


def test_unknown_ramblock_and_offset_bounds():
    v = PacketValidator("qemu-9.2", "zstd", BLOCKS, channel=0, max_payload=fixed_bound)
    with pytest.raises(PacketError, match="unknown ram block nope"):
        v.check(_data_packet(ramblock="nope"))
    last = BLOCKS["pc.bios"] - 4096
    v.check(_data_packet(ramblock="pc.bios", offsets=[last]))
    with pytest.raises(PacketError) as ei:
        v.check(_data_packet(ramblock="pc.bios", offsets=[last + 1]))
    assert str(ei.value) == f"multifd: offset too long {last + 1} (max 40000)"
    assert ei.value.field == "offset" and ei.value.packet_num == 42


def test_zero_page_offsets_are_bounds_checked_too():
    v = PacketValidator("qemu-9.2", "zstd", BLOCKS, channel=0, max_payload=fixed_bound)
    with pytest.raises(PacketError, match="offset too long"):
        v.check(_data_packet(normal_pages=0, zero_pages=1, next_packet_size=0,
                             offsets=[BLOCKS["pc.ram"]]))


def test_payload_bounds():
    v = PacketValidator("qemu-9.2", "zstd", BLOCKS, channel=2, max_payload=fixed_bound)
    with pytest.raises(PacketError, match="exceeds the zstd bound"):
        v.check(_data_packet(next_packet_size=2 * 512 * 1024 + 1))
    q = PacketValidator("qemu-9.2", "qatzip", BLOCKS, channel=2, max_payload=fixed_bound)
    with pytest.raises(PacketError, match="multifd 2: received unexpectedly large packet"):
        q.check(_data_packet(flags=MULTIFD_FLAG_QATZIP, next_packet_size=2 * 512 * 1024 + 1))
    n = PacketValidator("qemu-9.2", "none", BLOCKS, channel=0,
                        max_payload=lambda k, ps=4096: k * ps)
    with pytest.raises(PacketError, match="exceeds the none bound"):
        n.check(_data_packet(flags=0, next_packet_size=4097))
    with pytest.raises(PacketError, match="normal_pages x page size"):
        n.check(_data_packet(flags=0, next_packet_size=4000))


def test_method_unknown_to_dialect_is_a_parameter_error():
    with pytest.raises(ParameterError, match="qemu-7.2"):
        PacketValidator("qemu-7.2", "qatzip", BLOCKS, max_payload=fixed_bound)


# ------------------------------------------------------------------ properties and fuzz
@st.composite
def packets(draw, dialect):
    d = DIALECTS[dialect]
    alloc = draw(st.integers(0, 128))
    normal = draw(st.integers(0, alloc))
    zero = draw(st.integers(0, alloc - normal)) if d.has_zero_pages else 0
    method = draw(st.sampled_from(d.methods))
    flags = d.method_flag(method) | (MULTIFD_FLAG_SYNC if draw(st.booleans()) else 0)
    return Packet(
        flags=flags, pages_alloc=alloc, normal_pages=normal,
        next_packet_size=draw(st.integers(0, 2**32 - 1)),
        packet_num=draw(st.integers(0, 2**64 - 1)), zero_pages=zero,
        ramblock=draw(st.text("abcdefghijklmnopqrstuvwxyz./@_0123456789", max_size=255)),
        offsets=draw(st.lists(st.integers(0, 2**64 - 1), min_size=normal + zero,
                              max_size=normal + zero)),
    )


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_packet_round_trip_property(dialect, data):
    p = data.draw(packets(dialect))
    back = decode_packet(p.encode(dialect), dialect)
    for f in ("flags", "pages_alloc", "normal_pages", "next_packet_size", "packet_num",
              "zero_pages", "ramblock"):
        assert getattr(back, f) == getattr(p, f), f
    assert back.offsets == tuple(p.offsets)


@settings(max_examples=200, deadline=None)
@given(cid=st.integers(0, 255), raw_uuid=st.binary(min_size=16, max_size=16))
def test_init_round_trip_property(cid, raw_uuid):
    back = InitPacket.decode(InitPacket(cid, raw_uuid).encode(), expected_uuid=raw_uuid,
                             channels=256)
    assert back == InitPacket(cid, raw_uuid)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_headers_only_raise_wire_errors(dialect, data):
    raw = bytearray(data.draw(packets(dialect)).encode(dialect))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([len(raw), len(raw), data.draw(st.integers(0, len(raw)))]))
    try:
        pkt = decode_packet(bytes(raw[:cut]), dialect, channel=0)
        PacketValidator(dialect, "none", BLOCKS, channel=0,
                        max_payload=lambda n, ps=4096: n * ps).check(pkt)
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(min_size=0, max_size=80))
def test_random_init_bytes_only_raise_wire_errors(raw):
    try:
        InitPacket.decode(raw, expected_uuid=None, channels=4)
    except WireError:
        pass
