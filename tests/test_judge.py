"""The wire judge (qatmig_engine.judge): one mutation per rule, located exactly; clean streams
report nothing; arbitrary bytes never raise.

Streams come from the reference source (``record_reference``: the engine's Source into a
recording sink) in every dialect, and from the real QEMU 7.2 golden captures. Each mutation
breaks exactly one rule; the test checks the deviation's connection, packet number, byte offset
and field.
"""

from __future__ import annotations

import functools
import struct
import zlib

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qatmig_engine.capture import record_reference
from qatmig_engine.codecs import qzformat
from qatmig_engine.constants import RAM_SAVE_FLAG_MULTIFD_FLUSH
from qatmig_engine.guest import GuestMemory, RAMBlock, fill_deterministic
from qatmig_engine.judge import Expectations, TapReport, check_capture, format_report
from qatmig_engine.params import MigrationParameters
from qatmig_engine.qemu.golden import load_connections, load_manifest
from qatmig_engine.wire import Packet, decode_packet, packet_len

PLEN = packet_len()
PS = 4096
UUID = "5a3f0c1e-7d2b-4e8a-9c61-0123456789ab"
#: Not a multiple of a packet (the last packet of pc.ram is partial); two blocks.
BLOCKS = {"pc.ram": (2 << 20) + PS, "pc.bios": 256 << 10}
CASES = [("qemu-7.2", "none"), ("qemu-7.2", "zlib"), ("qemu-7.2", "zstd"),
         ("qemu-9.0", "zstd"), ("qemu-9.2", "none"), ("qemu-9.2", "zlib"),
         ("qemu-9.2", "qatzip"), ("qemu-10.0", "zstd")]


def _guest() -> GuestMemory:
    g = GuestMemory([RAMBlock.anonymous(n, s) for n, s in BLOCKS.items()])
    for i, b in enumerate(g.blocks):
        fill_deterministic(b, seed=i)  # about 20% zero pages
    return g


@functools.cache
def images() -> dict[str, bytes]:
    g = _guest()
    try:
        return {b.name: bytes(b.view) for b in g.blocks}
    finally:
        g.close()


@functools.cache
def ref(dialect: str, method: str, level: int | None = None) -> tuple[bytes, ...]:
    """The reference source's connections (main first), 2 channels."""
    kw = {f"multifd_{method}_level": level} if level is not None else {}
    params = MigrationParameters(multifd_channels=2, multifd_compression=method,
                                 dialect=dialect, **kw)
    g = _guest()
    try:
        return tuple(record_reference(g, params, uuid=UUID))
    finally:
        g.close()


def expectations(dialect: str, method: str, **kw) -> Expectations:
    base = {"dialect": dialect, "method": method, "channels": 2, "uuid": UUID,
            "ramblocks": BLOCKS, "level": 1 if method in ("zlib", "zstd", "qatzip") else None}
    return Expectations(**(base | kw))


def judge(conns, dialect: str, method: str, **kw) -> TapReport:
    exp_kw = {k: kw.pop(k) for k in list(kw) if k in Expectations.__dataclass_fields__}
    return check_capture(list(conns), expectations(dialect, method, **exp_kw), **kw)


def packets(conn: bytes, dialect: str) -> list[tuple[int, Packet]]:
    """(byte position, packet) of every header on a multifd connection."""
    pos, out = 64, []
    while pos + PLEN <= len(conn):
        pkt = decode_packet(conn[pos : pos + PLEN], dialect)
        out.append((pos, pkt))
        pos += PLEN + pkt.payload_len
    return out


def data_packets(conn: bytes, dialect: str) -> list[tuple[int, Packet]]:
    return [(p, k) for p, k in packets(conn, dialect) if k.normal_pages]


def busy(conns, dialect: str) -> int:
    """The multifd connection with the most data packets (which channel a packet takes
    depends on thread timing, so tests never assume one)."""
    return max(range(1, len(conns)), key=lambda i: len(data_packets(conns[i], dialect)))


def patch(conns, idx: int, pos: int, new: bytes, end: int | None = None) -> list[bytes]:
    """``conns`` with connection ``idx``'s bytes [pos, end) replaced by ``new``."""
    c = bytearray(conns[idx])
    c[pos : pos + len(new) if end is None else end] = new
    out = list(conns)
    out[idx] = bytes(c)
    return out


def pages_of(pkt: Packet) -> bytes:
    img = images()[pkt.ramblock]
    return b"".join(img[o : o + PS] for o in pkt.normal_offsets)


def with_payload(conns, idx: int, pos: int, pkt: Packet, payload: bytes) -> list[bytes]:
    """Replace a data packet's payload (and its next_packet_size)."""
    out = patch(conns, idx, pos + PLEN, payload, pos + PLEN + pkt.payload_len)
    return patch(out, idx, pos + 20, struct.pack(">I", len(payload)))


def one(report: TapReport, field: str):
    """The report's only deviation, which must be about ``field``."""
    assert len(report.errors) == 1, format_report(report)
    err = report.errors[0]
    assert err.field == field, format_report(report)
    return err


def has(report: TapReport, field: str, text: str):
    found = [e for e in report.errors if e.field == field and text in e.message]
    assert found, format_report(report)
    return found[0]


def _zero_page_count(img: bytes) -> int:
    zero = bytes(PS)
    return sum(1 for o in range(0, len(img), PS) if img[o : o + PS] == zero)


# ------------------------------------------------------------------------------ clean streams
@pytest.mark.parametrize(("dialect", "method"), CASES)
def test_reference_streams_are_clean_and_counted(dialect, method):
    conns = ref(dialect, method)
    rep = judge(conns, dialect, method, source=images())
    assert rep.ok, format_report(rep)
    t = rep.totals()
    total = sum(s // PS for s in BLOCKS.values())
    zeros = sum(_zero_page_count(i) for i in images().values())
    # a static guest: every page exactly once, zero pages by kind where the dialect puts them
    assert (t["unique_pages"], t["missing_pages"], t["pages_sent_twice"]) == (total, 0, 0)
    assert t["normal_pages"] + t["zero_pages"] == total
    assert t["zero_pages"] == zeros > 0
    where = "multifd_zero_pages" if dialect != "qemu-7.2" else "main_zero_pages"
    assert t[where] == zeros
    assert [c.wire_bytes for c in rep.channels] == [len(c) for c in conns]
    assert t["sync_packets"] == 2 * rep.rounds > 0
    assert t["connections"] == 3 and sorted(c.channel for c in rep.channels
                                            if c.role == "multifd") == [0, 1]
    # fed in odd pieces, the incremental parsers reach the same verdict and counts
    again = judge(conns, dialect, method, source=images(), chunk=4093)
    assert again.ok and again.totals() == t


@pytest.mark.parametrize("dialect", ["qemu-7.2", "qemu-10.0"])
@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
def test_golden_qemu_captures_are_clean(dialect, method):
    """What real QEMU 7.2 and 10.0 sent passes every check, with everything the suite knows."""
    from qatmig_engine.qemu.image import build_image

    m = load_manifest(dialect)
    r = m["ram"]["recipe"]
    img = bytes(build_image(r["size"], r["seed"], tuple(r["mix"])))
    conns = load_connections(method, m)
    rep = check_capture(conns, Expectations(
        dialect=dialect, method=method, channels=m["parameters"]["multifd-channels"],
        uuid=bytes(16), level=1 if method != "none" else None), source={m["ramblock"]: img})
    assert rep.ok, format_report(rep)
    t = rep.totals()
    assert t["missing_pages"] == 0 and t["unique_pages"] == sum(
        b.pages for b in rep.pages.values())
    if dialect == "qemu-7.2":
        assert t["main_zero_pages"] > 0 and t["multifd_zero_pages"] == 0
    else:  # zero-page-detection multifd: zero pages ride in the packets
        assert t["multifd_zero_pages"] > 0 and t["main_zero_pages"] == 0
    assert [c.wire_bytes for c in rep.channels] == [len(c) for c in conns]


@pytest.mark.parametrize(("dialect", "method"), [("qemu-7.2", "zstd"), ("qemu-9.2", "zlib")])
def test_dirtying_guest_final_round_arrives(dialect, method):
    """A guest written during precopy: pages travel more than once, never twice in a round,
    and the last copy of every page is the source's final RAM."""
    from qatmig_engine.workload import Workload

    g = GuestMemory([RAMBlock.anonymous("pc.ram", 8 << 20)])
    try:
        fill_deterministic(g.blocks[0])
        w = Workload(g, 20000)
        params = MigrationParameters(multifd_channels=2, multifd_compression=method,
                                     dialect=dialect, max_bandwidth=40 << 20)
        conns = record_reference(g, params, uuid=UUID, workload=w)
        w.stop()
        final = {"pc.ram": bytes(g.blocks[0].view)}
    finally:
        g.close()
    rep = judge(conns, dialect, method, ramblocks={"pc.ram": 8 << 20}, source=final)
    assert rep.ok, format_report(rep)
    t = rep.totals()
    assert t["normal_pages"] + t["zero_pages"] > t["unique_pages"] == 2048
    assert t["pages_sent_twice"] == 0 and rep.rounds >= 2
    # one page of the final RAM that the stream does not end with: the judge sees it
    ram = bytearray(final["pc.ram"])
    ram[7 * PS] ^= 1
    err = one(judge(conns, dialect, method, ramblocks={"pc.ram": 8 << 20},
                    source={"pc.ram": bytes(ram)}), "pages")
    assert f"first at offset {7 * PS:#x}" in err.message


# ------------------------------------------------------------------------------ init packets
def test_init_packet_little_endian():
    conns = ref("qemu-7.2", "zstd")
    c = conns[1]
    le = struct.pack("<II", *struct.unpack(">II", c[:8]))
    err = one(judge(patch(conns, 1, 0, le), "qemu-7.2", "zstd"), "magic")
    assert (err.connection, err.offset) == (1, 0)
    assert "little-endian" in err.message


def test_channel_ids_from_one():
    conns = ref("qemu-9.2", "zstd")
    ids = [c[24] for c in conns[1:]]
    out = patch(conns, 1, 24, bytes([ids[0] + 1]))
    out = patch(out, 2, 24, bytes([ids[1] + 1]))
    rep = judge(out, "qemu-9.2", "zstd")
    bad = 1 + ids.index(1)  # the connection that now claims id 2
    err = has(rep, "id", "ids run from 0 to 1")
    assert (err.connection, err.offset, err.channel) == (bad, 24, 2)


def test_duplicate_channel_id():
    conns = ref("qemu-9.2", "zstd")
    out = patch(conns, 2, 24, bytes([conns[1][24]]))
    err = has(judge(out, "qemu-9.2", "zstd"), "id", "already setup")
    assert (err.connection, err.offset) == (2, 24)


def test_uuid_not_the_one_the_suite_gave():
    conns = ref("qemu-7.2", "none")
    err = one(judge(patch(conns, 2, 8, bytes(16)), "qemu-7.2", "none"), "uuid")
    assert (err.connection, err.offset) == (2, 8)
    assert UUID in err.message


# ------------------------------------------------------------------------------ packet headers
def test_packet_magic_and_version():
    conns = ref("qemu-9.2", "zlib")
    i = busy(conns, "qemu-9.2")
    pos, pkt = data_packets(conns[i], "qemu-9.2")[1]
    err = one(judge(patch(conns, i, pos, b"\x11\x22\x33\x45"), "qemu-9.2", "zlib"), "magic")
    assert (err.connection, err.packet_num, err.offset) == (i, pkt.packet_num, pos)
    err = one(judge(patch(conns, i, pos + 4, struct.pack(">I", 2)), "qemu-9.2", "zlib"),
              "version")
    assert (err.packet_num, err.offset) == (pkt.packet_num, pos + 4)


def test_little_endian_packet_header_is_diagnosed_as_such():
    conns = ref("qemu-7.2", "zstd")
    i = busy(conns, "qemu-7.2")
    pos, pkt = data_packets(conns[i], "qemu-7.2")[0]
    fields = struct.unpack_from(">IIIIIIQ", conns[i], pos)
    err = one(judge(patch(conns, i, pos, struct.pack("<IIIIIIQ", *fields)), "qemu-7.2",
                    "zstd"), "magic")
    assert (err.connection, err.packet_num, err.offset) == (i, pkt.packet_num, pos)
    assert "little-endian" in err.message and "big-endian" in err.message


def test_little_endian_main_channel():
    conns = ref("qemu-7.2", "none")
    err = one(judge(patch(conns, 0, 0, conns[0][3::-1]), "qemu-7.2", "none"), "magic")
    assert (err.connection, err.offset) == (0, 0) and "little-endian" in err.message


def test_qatzip_flag_on_a_72_wire_names_the_mask():
    """0x20 on a 7.2 wire: a 7.2 receiver masks it away and reads the payload as none."""
    conns = ref("qemu-7.2", "none")
    i = busy(conns, "qemu-7.2")
    pos, pkt = data_packets(conns[i], "qemu-7.2")[0]
    err = one(judge(patch(conns, i, pos + 8, struct.pack(">I", 0x20)), "qemu-7.2", "none"),
              "flags")
    assert (err.packet_num, err.offset) == (pkt.packet_num, pos + 8)
    assert "compression mask" in err.message


def test_wrong_method_flag_and_unknown_bit():
    conns = ref("qemu-9.2", "zstd")
    i = busy(conns, "qemu-9.2")
    pos, pkt = data_packets(conns[i], "qemu-9.2")[0]
    err = one(judge(patch(conns, i, pos + 8, struct.pack(">I", 0x02)), "qemu-9.2", "zstd"),
              "flags")
    assert (err.packet_num, err.offset) == (pkt.packet_num, pos + 8)
    assert "flags received 2 flags expected 4" in err.message
    err = one(judge(patch(conns, i, pos + 8, struct.pack(">I", 0x104)), "qemu-9.2", "zstd"),
              "flags")
    assert "unknown flag bits 100" in err.message


def test_zero_pages_field_under_72():
    conns = ref("qemu-7.2", "zlib")
    i = busy(conns, "qemu-7.2")
    pos, pkt = data_packets(conns[i], "qemu-7.2")[0]
    err = one(judge(patch(conns, i, pos + 32, struct.pack(">I", 3)), "qemu-7.2", "zlib"),
              "zero_pages")
    assert (err.packet_num, err.offset) == (pkt.packet_num, pos + 32)
    assert "has no zero_pages field" in err.message


def test_reserved_bytes():
    conns = ref("qemu-9.2", "none")
    i = busy(conns, "qemu-9.2")
    pos, pkt = data_packets(conns[i], "qemu-9.2")[0]
    err = one(judge(patch(conns, i, pos + 45, b"\x01"), "qemu-9.2", "none"), "reserved")
    assert (err.packet_num, err.offset) == (pkt.packet_num, pos + 45)


def test_packet_num_used_on_another_channel():
    conns = ref("qemu-9.2", "zstd")
    i = busy(conns, "qemu-9.2")
    j = 3 - i
    # the last SYNC of channel i takes the number of channel j's last SYNC (both are in the
    # final round, so channel i's own numbers still grow)
    other_pos, other = packets(conns[j], "qemu-9.2")[-1]
    (_, before), (pos, _) = packets(conns[i], "qemu-9.2")[-2:]
    assert before.packet_num < other.packet_num
    out = patch(conns, i, pos + 24, struct.pack(">Q", other.packet_num))
    err = one(judge(out, "qemu-9.2", "zstd"), "packet_num")
    # reported at the copy fed second (connections are fed in accept order), naming the first
    first, second = sorted([(i, pos), (j, other_pos)])
    assert f"already used on channel {conns[first[0]][24]} (connection {first[0]})" \
        in err.message
    assert (err.connection, err.packet_num, err.offset) == (second[0], other.packet_num,
                                                            second[1] + 24)


def test_packet_num_repeated_on_a_channel():
    conns = ref("qemu-9.2", "none")
    pk = packets(conns[1], "qemu-9.2")
    (_, prev), (pos, _) = pk[0], pk[1]
    out = patch(conns, 1, pos + 24, struct.pack(">Q", prev.packet_num))
    err = one(judge(out, "qemu-9.2", "none"), "packet_num")
    assert (err.connection, err.offset) == (1, pos + 24) and "repeated" in err.message


def test_packet_num_gap():
    """9.x numbers every packet from 0 with one counter: a skipped number is a lost packet."""
    conns = ref("qemu-9.2", "zstd")
    last = max(((i, p, k) for i in (1, 2) for p, k in packets(conns[i], "qemu-9.2")),
               key=lambda t: t[2].packet_num)
    i, pos, pkt = last
    out = patch(conns, i, pos + 24, struct.pack(">Q", pkt.packet_num + 1))
    err = one(judge(out, "qemu-9.2", "zstd"), "packet_num")
    assert (err.connection, err.packet_num) == (i, pkt.packet_num + 1)
    assert f"packet_num {pkt.packet_num}..{pkt.packet_num} never appeared" in err.message
    assert err.offset == pos + 24


def test_packet_num_going_backwards():
    conns = ref("qemu-7.2", "none")
    pk = packets(conns[2], "qemu-7.2")
    pos, _ = pk[2]
    err = one(judge(patch(conns, 2, pos + 24, struct.pack(">Q", 0)), "qemu-7.2", "none"),
              "packet_num")
    assert err.offset == pos + 24


@pytest.mark.parametrize(("method", "size"), [("zstd", 3 << 20), ("none", None)])
def test_next_packet_size_outside_the_methods_bound(method, size):
    conns = ref("qemu-9.2", method)
    i = busy(conns, "qemu-9.2")
    pos, pkt = data_packets(conns[i], "qemu-9.2")[0]
    nps = size if size is not None else pkt.next_packet_size - 1
    err = one(judge(patch(conns, i, pos + 20, struct.pack(">I", nps)), "qemu-9.2", method),
              "next_packet_size")
    assert (err.packet_num, err.offset) == (pkt.packet_num, pos + 20)


def test_offsets_aligned_inside_the_block_and_once_per_packet():
    conns = ref("qemu-9.2", "none")
    idx, pos, pkt = next((i, p, k) for i in (1, 2) for p, k in data_packets(conns[i], "qemu-9.2")
                         if k.normal_pages >= 2)
    slot = pos + 320 + 8
    cases = [(pkt.offsets[1] + 8, "not page aligned"),
             (BLOCKS[pkt.ramblock], "offset too long"),
             (pkt.offsets[0], "appears twice")]
    for value, text in cases:
        err = one(judge(patch(conns, idx, slot, struct.pack(">Q", value)), "qemu-9.2", "none"),
                  "offset")
        assert (err.connection, err.packet_num, err.offset) == (idx, pkt.packet_num, slot), text
        assert text in err.message


def test_offsets_in_any_order_are_fine():
    """A running QEMU 7.2 guest's dirty scan wraps inside a packet (offset 0 after the block's
    end was seen on the wire): the order of offsets is not a rule, their content is."""
    conns = ref("qemu-7.2", "none")
    i = busy(conns, "qemu-7.2")
    pos, pkt = next((p, k) for p, k in data_packets(conns[i], "qemu-7.2") if k.normal_pages >= 2)
    a, b = pkt.offsets[0], pkt.offsets[1]
    img = images()[pkt.ramblock]
    out = patch(conns, i, pos + 320, struct.pack(">QQ", b, a))
    out = patch(out, i, pos + PLEN, img[b : b + PS] + img[a : a + PS])
    rep = judge(out, "qemu-7.2", "none", source=images())
    assert rep.ok, format_report(rep)
    # the same swap without moving the pages: the last copies are wrong, and the judge sees it
    bad = judge(patch(conns, i, pos + 320, struct.pack(">QQ", b, a)), "qemu-7.2", "none",
                source=images())
    assert "2 pages of RAM block" in one(bad, "pages").message


def test_page_sent_twice_in_a_round():
    conns = ref("qemu-9.2", "none")
    # a page of one data packet written into the first slot of a later one (same block);
    # with 2 channels, the two packets may be on either connection
    pk = sorted(((k.packet_num, i, p, k) for i in (1, 2)
                 for p, k in data_packets(conns[i], "qemu-9.2")), key=lambda t: t[0])
    _, fidx, fpos, first = pk[0]
    _, idx, pos, pkt = next(t for t in pk[1:] if t[3].ramblock == first.ramblock)
    dup = first.offsets[0]
    assert dup not in pkt.offsets
    err = one(judge(patch(conns, idx, pos + 320, struct.pack(">Q", dup)), "qemu-9.2", "none"),
              "offset")
    assert "sent twice in sync round" in err.message
    # reported at the copy fed second (connections are fed in accept order)
    second = max((fidx, fpos, first.packet_num), (idx, pos, pkt.packet_num))
    assert (err.connection, err.packet_num, err.offset) == (second[0], second[2],
                                                            second[1] + 320)


def test_zero_only_packet_with_a_payload_size():
    conns = ref("qemu-9.2", "zstd")
    i = busy(conns, "qemu-9.2")
    pos, pkt = data_packets(conns[i], "qemu-9.2")[0]
    # every page of the packet becomes a zero page; next_packet_size stays
    out = patch(conns, i, pos + 16, struct.pack(">I", 0))
    out = patch(out, i, pos + 32, struct.pack(">I", pkt.normal_pages + pkt.zero_pages))
    err = one(judge(out, "qemu-9.2", "zstd"), "next_packet_size")
    assert (err.packet_num, err.offset) == (pkt.packet_num, pos + 20)


@pytest.mark.parametrize("dialect", ["qemu-7.2", "qemu-9.2", "qemu-10.0"])
def test_sync_packet_with_the_compression_bit(dialect):
    """QEMU's SYNC-only packets carry flags 0x1 alone (7.2 and 10.0 captures are clean in
    test_golden_qemu_captures_are_clean); a sender that keeps the method's bit is flagged."""
    conns = ref(dialect, "zlib")
    i = busy(conns, dialect)
    pos, pkt = next((p, k) for p, k in packets(conns[i], dialect)
                    if k.sync and not k.normal_pages and not k.zero_pages)
    out = patch(conns, i, pos + 8, struct.pack(">I", pkt.flags | 0x2))
    err = one(judge(out, dialect, "zlib"), "flags")
    assert (err.connection, err.packet_num, err.offset) == (i, pkt.packet_num, pos + 8)
    assert "without pages carry the compression bit 0x2" in err.message


# ------------------------------------------------------------------------------ payload framing
def test_zlib_new_stream_in_a_later_packet():
    conns = ref("qemu-7.2", "zlib")
    i = busy(conns, "qemu-7.2")
    pos, pkt = data_packets(conns[i], "qemu-7.2")[1]
    z = zlib.compressobj(1)
    new = z.compress(pages_of(pkt)) + z.flush(zlib.Z_SYNC_FLUSH)
    err = one(judge(with_payload(conns, i, pos, pkt, new), "qemu-7.2", "zlib"), "payload")
    assert (err.packet_num, err.offset) == (pkt.packet_num, pos + PLEN)
    assert "new zlib stream" in err.message


def test_zlib_level_shows_in_flevel():
    conns = ref("qemu-9.2", "zlib")
    rep = judge(conns, "qemu-9.2", "zlib", level=6)
    carrying = [i for i in (1, 2) if data_packets(conns[i], "qemu-9.2")]
    assert [e.field for e in rep.errors] == ["level"] * len(carrying), format_report(rep)
    for idx, err in zip(carrying, sorted(rep.errors, key=lambda e: e.connection), strict=True):
        pos, pkt = data_packets(conns[idx], "qemu-9.2")[0]
        assert (err.connection, err.packet_num, err.offset) == (idx, pkt.packet_num,
                                                                pos + PLEN + 1)
        assert "FLEVEL 0 does not match multifd-zlib-level 6" in err.message
    assert judge(ref("qemu-9.2", "zlib", 6), "qemu-9.2", "zlib", level=6).ok


def test_zstd_new_frame_in_a_later_packet():
    conns = ref("qemu-9.0", "zstd")
    i = busy(conns, "qemu-9.0")
    pos, pkt = data_packets(conns[i], "qemu-9.0")[1]
    z = zstandard.ZstdCompressor(level=1).compressobj()
    new = z.compress(pages_of(pkt)) + z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    err = one(judge(with_payload(conns, i, pos, pkt, new), "qemu-9.0", "zstd"), "payload")
    assert (err.packet_num, err.offset) == (pkt.packet_num, pos + PLEN)
    assert "new zstd frame" in err.message


def test_zstd_frame_ended_per_packet():
    conns = ref("qemu-9.2", "zstd")
    i = busy(conns, "qemu-9.2")
    pos, pkt = data_packets(conns[i], "qemu-9.2")[0]
    z = zstandard.ZstdCompressor(level=1).compressobj()
    new = z.compress(pages_of(pkt)) + z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
    err = one(judge(with_payload(conns, i, pos, pkt, new), "qemu-9.2", "zstd"), "payload")
    assert (err.packet_num, err.offset) == (pkt.packet_num, pos + PLEN)
    assert "frame ends" in err.message


def test_qatzip_evidence_of_the_software_path_is_counted():
    """Per channel: data packets over 64 KiB in one member (the software layout), and the
    first two payloads re-compressed with libqatzip's software producer (all identical for
    the reference); a packet in the hardware layout counts in neither."""
    conns = ref("qemu-9.2", "qatzip")
    i = busy(conns, "qemu-9.2")
    rep = judge(conns, "qemu-9.2", "qatzip")
    assert rep.ok, format_report(rep)
    for c in rep.channels:
        if c.role != "multifd":
            continue
        pkts = data_packets(conns[c.connection], "qemu-9.2")
        big = sum(1 for _, pk in pkts if pk.normal_pages * PS > 64 * 1024)
        assert (c.qatzip_sw_layout, c.qatzip_sw_checked) == (big, min(2, len(pkts)))
        assert c.qatzip_sw_identical == c.qatzip_sw_checked
    pos, pkt = data_packets(conns[i], "qemu-9.2")[0]
    assert pkt.normal_pages * PS > 64 * 1024
    hw = with_payload(conns, i, pos, pkt, qzformat.compress_hw_layout(pages_of(pkt), 1))
    rep2 = judge(hw, "qemu-9.2", "qatzip", qatzip_hw_chunks=True)
    assert rep2.ok, format_report(rep2)
    before = next(c for c in rep.channels if c.connection == i)
    after = next(c for c in rep2.channels if c.connection == i)
    assert after.qatzip_sw_layout == before.qatzip_sw_layout - 1
    assert after.qatzip_sw_identical == before.qatzip_sw_identical - 1
    assert after.qatzip_members == before.qatzip_members - 1 - (-pkt.normal_pages * PS // 65536)


def test_qatzip_one_member_per_packet():
    conns = ref("qemu-9.2", "qatzip")
    i = busy(conns, "qemu-9.2")
    pos, pkt = max(data_packets(conns[i], "qemu-9.2"), key=lambda pk: pk[1].normal_pages)
    assert pkt.normal_pages > 16  # more than one 64 KiB chunk
    new = qzformat.compress_hw_layout(pages_of(pkt), 1)
    out = with_payload(conns, i, pos, pkt, new)
    err = one(judge(out, "qemu-9.2", "qatzip"), "payload")
    second = qzformat.inspect_members(new)[1].header.offset
    assert (err.packet_num, err.offset) == (pkt.packet_num, pos + PLEN + second)
    assert "gzip members in one qatzip payload" in err.message
    assert judge(out, "qemu-9.2", "qatzip", qatzip_hw_chunks=True).ok


def test_qatzip_qz_sizes_and_xfl():
    conns = ref("qemu-9.2", "qatzip")
    i = busy(conns, "qemu-9.2")
    pos, pkt = data_packets(conns[i], "qemu-9.2")[0]
    p = pos + PLEN
    err = one(judge(patch(conns, i, p + 16, bytes(8)), "qemu-9.2", "qatzip"), "payload")
    assert (err.packet_num, err.offset) == (pkt.packet_num, p + 16)
    assert "QZ src_sz/dest_sz 0/0" in err.message
    dest = struct.unpack_from("<I", conns[i], p + 20)[0]
    err = one(judge(patch(conns, i, p + 20, struct.pack("<I", dest - 1)), "qemu-9.2", "qatzip"),
              "payload")
    assert err.offset == p and "dest_sz" in err.message
    rep = judge(conns, "qemu-9.2", "qatzip", level=9)
    carrying = [i for i in (1, 2) if data_packets(conns[i], "qemu-9.2")]
    assert [e.field for e in rep.errors] == ["level"] * len(carrying), format_report(rep)
    for idx, err in zip(carrying, sorted(rep.errors, key=lambda e: e.connection), strict=True):
        first_pos, first = data_packets(conns[idx], "qemu-9.2")[0]
        assert (err.connection, err.packet_num, err.offset) == (idx, first.packet_num,
                                                                first_pos + PLEN + 8)
        assert "XFL 4, expected 2" in err.message
    assert judge(ref("qemu-9.2", "qatzip", 9), "qemu-9.2", "qatzip", level=9).ok


# ------------------------------------------------------------------------------ main channel
def test_missing_zero_page_record():
    conns = ref("qemu-7.2", "zstd")
    img = images()["pc.ram"]
    zero = bytes(PS)
    offs = [o for o in range(0, len(img), PS) if img[o : o + PS] == zero]
    needle = struct.pack(">Q", offs[1] | 0x22) + b"\0"  # ZERO|CONTINUE, fill 0
    at = conns[0].index(needle)
    err = one(judge(patch(conns, 0, at, b"", at + 9), "qemu-7.2", "zstd"), "pages")
    assert err.connection == 0 and f"first at offset {offs[1]:#x}" in err.message
    assert "1 of" in err.message


def test_final_round_must_match_the_source():
    conns = ref("qemu-9.2", "zlib")
    src = dict(images())
    ram = bytearray(src["pc.ram"])
    ram[5 * PS] ^= 0xFF  # the source changed this page after its last copy was sent
    src["pc.ram"] = bytes(ram)
    err = one(judge(conns, "qemu-9.2", "zlib", source=src), "pages")
    assert f"first at offset {5 * PS:#x}" in err.message and "final RAM" in err.message


def test_missing_flush_in_the_end_section():
    conns = ref("qemu-9.2", "none")
    flush = struct.pack(">Q", RAM_SAVE_FLAG_MULTIFD_FLUSH)
    at = conns[0].rindex(flush)
    rep = judge(patch(conns, 0, at, b"", at + 8), "qemu-9.2", "none")
    err = has(rep, "flush", "no RAM_SAVE_FLAG_MULTIFD_FLUSH in the RAM section's END")
    assert err.connection == 0


def test_block_list_differs_from_the_guest():
    conns = ref("qemu-9.2", "none")
    err = one(judge(conns, "qemu-9.2", "none", ramblocks={"pc.ram": BLOCKS["pc.ram"]}),
              "block list")
    assert "'pc.bios' not expected" in err.message


def test_channel_count():
    conns = ref("qemu-9.2", "none")
    rep = judge(conns[:2], "qemu-9.2", "none")
    has(rep, "channels", "1 multifd connection(s) seen, multifd-channels is 2")
    rep = judge(conns, "qemu-9.2", "none", channels=3)
    has(rep, "channels", "2 multifd connection(s) seen, multifd-channels is 3")


# ------------------------------------------------------------------------------ fuzz
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dialect=st.sampled_from(["qemu-7.2", "qemu-9.2"]),
       conns=st.lists(st.binary(max_size=3000), min_size=1, max_size=4),
       chunk=st.sampled_from([0, 1, 7, 1344]))
def test_arbitrary_bytes_are_only_ever_deviations(dialect, conns, chunk):
    rep = check_capture(conns, Expectations(dialect=dialect, channels=2), chunk=chunk)
    assert not rep.ok
    for e in rep.errors:
        assert e.message and isinstance(e.connection, int)
        assert e.offset is None or 0 <= e.offset <= max(len(c) for c in conns)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_reference_streams_are_only_ever_deviations(data):
    dialect, method = data.draw(st.sampled_from(CASES))
    conns = list(ref(dialect, method))
    idx = data.draw(st.integers(0, len(conns) - 1))
    c = bytearray(conns[idx])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(c) - 1))
        c[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        c = c[: data.draw(st.integers(0, len(c)))]
    conns[idx] = bytes(c)
    rep = judge(conns, dialect, method, chunk=data.draw(st.sampled_from([0, 5000])))
    for e in rep.errors:
        assert e.message and isinstance(e.connection, int)
        assert e.offset is None or 0 <= e.offset <= len(conns[e.connection])


def test_every_test_the_docs_name_exists():
    """docs/wire-format.md's judge table names the test behind each rule: they must exist."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "wire-format.md").read_text()
    section = doc[doc.index("## The wire judge"):]
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", section))
    assert len(named) >= 25
    assert sorted(n for n in named if n not in globals()) == []


def test_cli_replay_with_level_and_final_image(tmp_path):
    """``qatmig tap --replay`` takes the level and the source's final RAM, as a user runs it."""
    import subprocess
    import sys

    from qatmig_engine.qemu.image import build_image

    m = load_manifest("qemu-7.2")
    files = []
    for i, c in enumerate(load_connections("zlib", m)):
        (tmp_path / f"conn-{i}.bin").write_bytes(c)
        files.append(str(tmp_path / f"conn-{i}.bin"))
    r = m["ram"]["recipe"]
    img = bytearray(build_image(r["size"], r["seed"], tuple(r["mix"])))
    (tmp_path / "final.img").write_bytes(img)
    cmd = [sys.executable, "-c", "import sys; from qatmig_engine.cli import main; "
           "sys.exit(main(sys.argv[1:]))", "tap", "--dialect", "qemu-7.2", "--replay", *files,
           "--final-image", str(tmp_path / "final.img"), "--ramblock", m["ramblock"]]
    ok = subprocess.run([*cmd, "--level", "1"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([*cmd, "--level", "9"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "field level" in bad.stdout
    assert "FLEVEL 0 does not match multifd-zlib-level 9" in bad.stdout
    img[0x2000] ^= 1
    (tmp_path / "final.img").write_bytes(img)
    stale = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert stale.returncode == 1 and "differs from the source's final RAM" in stale.stdout
    assert "Traceback" not in stale.stderr
