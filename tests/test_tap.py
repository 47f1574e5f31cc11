"""The tap's checker (pure) on recorded QEMU 7.2 streams: conformance, mutations, fuzz.

Mutations of the golden captures must be reported as deviations naming the connection,
channel, packet and field; nothing a peer sends may make the checker raise.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qatmig_engine.qemu.golden import load_connections
from qatmig_engine.tap import TapChecker, check_capture, format_report
from qatmig_engine.wire import decode_packet, packet_len

PLEN = packet_len()


@pytest.fixture(scope="module")
def caps():
    return {m: load_connections(m) for m in ("none", "zlib", "zstd")}


def packets(conn: bytes):
    """(position, packet) of every header on a multifd connection."""
    pos, out = 64, []
    while pos < len(conn):
        pkt = decode_packet(conn[pos : pos + PLEN], "qemu-7.2")
        out.append((pos, pkt))
        pos += PLEN + pkt.payload_len
    return out


def first_data(conn: bytes, *, nth: int = 0):
    data = [(p, k) for p, k in packets(conn) if k.normal_pages]
    return data[nth]


def mutate(conns, idx, pos, new: bytes):
    c = bytearray(conns[idx])
    c[pos : pos + len(new)] = new
    out = list(conns)
    out[idx] = bytes(c)
    return out


def only_error(report):
    assert not report.ok, format_report(report)
    return report.errors[0]


def test_clean_capture_passes_and_summary_is_per_channel(caps):
    rep = check_capture(caps["zstd"], method="zstd", channels=2)
    assert rep.ok
    text = format_report(rep)
    assert "tap: OK" in text and "multifd" in text
    js = rep.to_json()
    assert js["ok"] and js["multifd_compression"] == "zstd"
    assert {c["role"] for c in js["channels"]} == {"main", "multifd"}
    mf = [c for c in js["channels"] if c["role"] == "multifd"]
    assert all(c["ratio"] > 1 for c in mf)  # guest bytes / wire payload bytes
    assert sum(c["pages"] for c in mf) == js["totals"]["pages"]


def test_quirks_are_notes_not_errors(caps):
    rep = check_capture(caps["none"], method="none", channels=2)
    assert rep.ok
    kinds = {n.kind for n in rep.notes}
    # what the 7.2 sender did in this recording (spec §3.6)
    assert {"stale-next-packet-size", "stale-offsets", "page-sent-twice"} <= kinds
    assert all(n.count >= len(n.examples) > 0 for n in rep.notes)


def test_bad_packet_magic_names_channel_packet_field(caps):
    conns = caps["zlib"]
    pos, _ = first_data(conns[1], nth=2)
    rep = check_capture(mutate(conns, 1, pos, b"\x11\x22\x33\x45"), method="zlib")
    err = only_error(rep)
    assert err.connection == 1 and err.field == "magic"
    assert "magic" in err.message


def test_wrong_compression_flag(caps):
    conns = caps["zstd"]
    pos, pkt = first_data(conns[2], nth=1)
    rep = check_capture(mutate(conns, 2, pos + 8, struct.pack(">I", 0x2)), method="zstd")
    err = only_error(rep)
    assert (err.field, err.packet_num) == ("flags", pkt.packet_num)
    assert err.channel is not None
    assert "flags received 2 flags expected 4" in err.message


def test_offset_outside_the_block(caps):
    conns = caps["none"]
    pos, pkt = first_data(conns[1])
    bad = struct.pack(">Q", 8 << 20)  # pc.ram is 8 MiB: first byte past it
    rep = check_capture(mutate(conns, 1, pos + 320, bad), method="none")
    err = only_error(rep)
    assert (err.field, err.packet_num) == ("offset", pkt.packet_num)
    assert "offset too long" in err.message


def test_unaligned_offset(caps):
    conns = caps["none"]
    pos, pkt = first_data(conns[2])
    off = pkt.offsets[0] + 8
    rep = check_capture(mutate(conns, 2, pos + 320, struct.pack(">Q", off)), method="none")
    err = only_error(rep)
    assert err.field == "offset" and "page aligned" in err.message


def test_corrupt_zlib_payload(caps):
    conns = caps["zlib"]
    pos, pkt = first_data(conns[1], nth=3)
    p = pos + PLEN + 5
    rep = check_capture(mutate(conns, 1, p, bytes([conns[1][p] ^ 0xFF]) * 4), method="zlib")
    err = only_error(rep)
    assert err.field == "payload" and err.packet_num == pkt.packet_num


def test_payload_size_mismatch_with_normal_pages(caps):
    conns = caps["zstd"]
    pos, pkt = first_data(conns[1], nth=1)
    # claim one page fewer: the payload decompresses to one page too many
    rep = check_capture(
        mutate(conns, 1, pos + 16, struct.pack(">I", pkt.normal_pages - 1)), method="zstd")
    err = only_error(rep)
    assert err.packet_num == pkt.packet_num and err.field == "payload"


def test_nonzero_reserved_bytes(caps):
    conns = caps["zstd"]
    pos, _ = first_data(conns[2])
    rep = check_capture(mutate(conns, 2, pos + 40, b"\x01"), method="zstd")
    assert only_error(rep).field == "reserved"


def test_missing_sync_is_reported_against_the_main_streams_eos(caps):
    conns = caps["none"]
    sync_pos = next(p for p, k in packets(conns[2]) if k.sync and not k.normal_pages)
    flags = struct.unpack(">I", conns[2][sync_pos + 8 : sync_pos + 12])[0]
    rep = check_capture(mutate(conns, 2, sync_pos + 8, struct.pack(">I", flags & ~1)),
                        method="none", channels=2)
    err = only_error(rep)
    assert err.field == "flags" and "SYNC packets for" in err.message


def test_packet_num_going_backwards(caps):
    conns = caps["zlib"]
    pk = packets(conns[1])
    pos = pk[3][0]
    rep = check_capture(mutate(conns, 1, pos + 24, struct.pack(">Q", 0)), method="zlib")
    err = only_error(rep)
    assert err.field == "packet_num"


def test_truncated_channel(caps):
    conns = list(caps["zstd"])
    pos, _ = first_data(conns[1], nth=2)
    conns[1] = conns[1][: pos + PLEN + 10]
    rep = check_capture(conns, method="zstd", channels=2)
    errs = [e for e in rep.errors if e.connection == 1]
    assert errs and errs[0].field == "next_packet_size"
    assert "ended inside a payload" in errs[0].message


def test_uuid_and_channel_checks(caps):
    conns = caps["zstd"]
    rep = check_capture(conns, method="zstd", uuid="12345678-1234-1234-1234-123456789abc")
    assert only_error(rep).field == "uuid"
    rep = check_capture(conns, method="zstd", channels=1)
    assert any(e.field == "id" for e in rep.errors)
    # both channels claim id 0
    rep = check_capture(mutate(conns, 2, 24, b"\x00") if conns[2][24] else
                        mutate(conns, 2, 24, b"\x01"), method="zstd")
    assert not rep.ok


def test_multifd_connection_first_is_what_72_rejects(caps):
    c = caps["zstd"]
    rep = check_capture([c[1], c[0], c[2]], method="zstd")
    assert not rep.ok
    assert rep.errors[0].connection == 0 and rep.errors[0].field == "magic"
    assert "connected first" in rep.errors[0].message


def test_expected_method_mismatch(caps):
    rep = check_capture(caps["zlib"], method="zstd")
    assert only_error(rep).field == "flags"


def test_verify_against_expected_image(caps):
    from qatmig_engine.qemu.golden import load_manifest
    from qatmig_engine.qemu.image import build_image

    r = load_manifest()["ram"]["recipe"]
    img = build_image(r["size"], r["seed"], tuple(r["mix"]))
    assert check_capture(caps["zlib"], expect={"pc.ram": img}).ok
    img[0x3000:0x3001] = bytes([img[0x3000] ^ 1])
    rep = check_capture(caps["zlib"], expect={"pc.ram": img})
    assert not rep.ok
    assert rep.errors[0].field in ("payload", "ram")


def test_pages_wait_for_the_block_list():
    """Multifd bytes fed before the main stream are checked once the block list arrives."""
    conns = load_connections("zstd")
    tap = TapChecker(method="zstd", channels=2)
    tap.feed(1, conns[1][:200_000])
    tap.feed(0, conns[0])
    tap.feed(1, conns[1][200_000:])
    tap.feed(2, conns[2])
    rep = tap.finish()
    assert rep.ok, format_report(rep)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutations_never_raise(caps, data):
    method = data.draw(st.sampled_from(["zlib", "zstd"]))
    conns = list(caps[method])
    idx = data.draw(st.integers(0, len(conns) - 1))
    c = bytearray(conns[idx])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, min(len(c) - 1, 300_000)))
        c[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        c = c[: data.draw(st.integers(0, len(c)))]
    conns[idx] = bytes(c)
    rep = check_capture(conns, chunk=data.draw(st.sampled_from([0, 4096, 65536])))
    assert isinstance(rep.ok, bool)
    for e in rep.errors:
        assert e.message and isinstance(e.connection, int)


def _main_stream(blocks, *, records=b""):
    from qatmig_engine.mainstream import MainStreamEncoder

    enc = MainStreamEncoder("qemu-7.2")
    return (enc.header() + enc.section_start(blocks) + enc.eos() + enc.footer()
            + enc.section_end() + records + enc.eos() + enc.footer() + enc.eof())


def test_main_stream_block_list_checks():
    ok = check_capture([_main_stream([("pc.ram", 1 << 20), ("pc.bios", 1 << 16)])],
                       every_page=False)
    assert ok.ok and ok.ramblocks == {"pc.ram": 1 << 20, "pc.bios": 1 << 16}
    assert ok.machine_type == "pc-i440fx-7.2" and ok.eos == 2
    dup = check_capture([_main_stream([("pc.ram", 1 << 20), ("pc.ram", 1 << 20)])])
    assert only_error(dup).field == "block list"


def test_main_stream_zero_page_outside_block():
    rec = struct.pack(">Q", (1 << 20) | 0x02) + bytes([6]) + b"pc.ram" + b"\0"
    rep = check_capture([_main_stream([("pc.ram", 1 << 20)], records=rec)])
    assert only_error(rep).field == "offset"


def test_main_stream_truncated_in_ram_section():
    data = _main_stream([("pc.ram", 1 << 20)])
    rep = check_capture([data[:60]])
    assert only_error(rep).field == "ram"


def test_main_stream_error_keeps_what_came_before(caps):
    """A bad record after the block list: the block list still frees the multifd channels,
    so the only deviation is the bad record itself, located by field."""
    main = bytearray(caps["zstd"][0])
    # the setup section's EOS follows the block list; turn it into an unknown flag
    eos = main.index(struct.pack(">Q", 0x10))
    main[eos : eos + 8] = struct.pack(">Q", 0x40)
    rep = check_capture([bytes(main), *caps["zstd"][1:]], method="zstd", channels=2)
    err = only_error(rep)
    assert (err.connection, err.field) == (0, "ram flags") and "0x40" in err.message
    assert len(rep.errors) == 1, format_report(rep)
    assert rep.ramblocks  # learnt before the deviation


def test_main_stream_flush_is_a_9x_record():
    from qatmig_engine.mainstream import MainStreamEncoder

    enc = MainStreamEncoder("qemu-9.2")
    data = (enc.header() + enc.section_start([("pc.ram", 1 << 20)]) + enc.end_of_round()
            + enc.section_end() + enc.end_of_round() + enc.eof())
    assert check_capture([data], dialect="qemu-9.2", every_page=False).ok
    rep = check_capture([data], dialect="qemu-7.2")
    assert only_error(rep).field == "ram flags" and "0x200" in rep.errors[0].message


def test_main_stream_ended_before_header_and_inside_ram():
    rep = check_capture([b"QEV"])
    assert only_error(rep).field == "magic"
    data = _main_stream([("pc.ram", 1 << 20)])
    rep = check_capture([data[:60]], chunk=7)
    err = only_error(rep)
    assert err.field == "ram" and "inside the RAM section" in err.message
