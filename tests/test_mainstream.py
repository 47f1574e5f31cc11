"""Main channel: encoder/decoder round trips per dialect, a QEMU-7.2-shaped stream with device
state after RAM END, and fuzzing (only StreamError may come out)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qatmig_engine.constants import MIG_CMD_ARGS, MIG_CMD_SWITCHOVER_START
from qatmig_engine.dialects import get_dialect, machine_sends_switchover_start
from qatmig_engine.errors import StreamError
from qatmig_engine.mainstream import (
    Configuration,
    DeviceState,
    EndOfSection,
    FileHeader,
    Footer,
    MainStreamDecoder,
    MainStreamEncoder,
    MemSize,
    MultifdFlush,
    Page,
    RamEnd,
    SectionHeader,
    VmCommand,
    ZeroPage,
)

BLOCKS = [("pc.ram", 64 * 4096), ("pc.bios", 4 * 4096), ("/rom@etc/acpi/tables", 2 * 4096)]


def build(dialect, records, *, trailer=None):
    """A full RAM-only stream; ``records`` is a list of rounds of (kind, block, offset, data)."""
    enc = MainStreamEncoder(dialect)
    out = bytearray(enc.header() + enc.section_start(BLOCKS) + enc.end_of_round())
    for i, rnd in enumerate(records):
        last = i == len(records) - 1
        if last and enc.sends_switchover_start:
            out += enc.switchover_start()
        out += enc.section_end() if last else enc.section_part()
        for kind, blk, off, data in rnd:
            if kind == "zero":
                out += enc.zero_page(blk, off)
            else:
                out += enc.page(blk, off, data)
        out += enc.end_of_round()
    out += trailer if trailer is not None else enc.eof()
    return bytes(out)


def decode(dialect, data, chunk=None):
    dec = MainStreamDecoder(dialect)
    events = []
    if chunk is None:
        events += dec.feed(data)
    else:
        for i in range(0, len(data), chunk):
            events += dec.feed(data[i : i + chunk])
    dec.close()
    return dec, events


ROUNDS = [
    [("zero", "pc.ram", 0), ("page", "pc.ram", 4096), ("zero", "pc.ram", 8192),
     ("zero", "pc.bios", 0), ("page", "pc.ram", 63 * 4096)],
    [("page", "/rom@etc/acpi/tables", 4096), ("zero", "pc.ram", 0)],
]


def rounds():
    return [[(k, b, o, bytes([o // 4096 % 251 + 1]) * 4096) for k, b, o in r] for r in ROUNDS]


@pytest.mark.parametrize("dialect", ["qemu-7.2", "qemu-9.0", "qemu-9.2", "qemu-10.0"])
@pytest.mark.parametrize("chunk", [None, 1, 7, 4096])
def test_round_trip(dialect, chunk):
    data = build(dialect, rounds())
    dec, events = decode(dialect, data, chunk)
    kinds = [type(e) for e in events]
    assert kinds[0] is FileHeader
    assert events[1] == Configuration(get_dialect(dialect).machine_type)
    commands = [e for e in events if isinstance(e, VmCommand)]
    if dialect == "qemu-10.0":  # sent once, right before the stop-and-copy SECTION_END
        assert commands == [VmCommand(MIG_CMD_SWITCHOVER_START, "MIG_CMD_SWITCHOVER_START")]
        at = events.index(commands[0])
        assert events[at + 1] == SectionHeader(3, 2)
        assert dec.commands == ["MIG_CMD_SWITCHOVER_START"]
    else:
        assert commands == []
    assert events[2] == SectionHeader(1, 2, "ram", 0, 4)
    assert events[3] == MemSize(sum(n for _, n in BLOCKS), tuple(BLOCKS))
    flushes = kinds.count(MultifdFlush)
    eos = kinds.count(EndOfSection)
    assert eos == 3  # setup + 2 rounds
    assert flushes == (0 if dialect == "qemu-7.2" else 3)
    zeros = [e for e in events if isinstance(e, ZeroPage)]
    pages = [e for e in events if isinstance(e, Page)]
    assert [(z.block, z.offset) for z in zeros] == [
        ("pc.ram", 0), ("pc.ram", 8192), ("pc.bios", 0), ("pc.ram", 0)]
    assert [(p.block, p.offset) for p in pages] == [
        ("pc.ram", 4096), ("pc.ram", 63 * 4096), ("/rom@etc/acpi/tables", 4096)]
    assert pages[0].data == b"\x02" * 4096
    assert kinds.count(RamEnd) == 1 and kinds.count(Footer) == 3
    assert dec.complete
    assert dec.device_state_bytes == 1  # the EOF byte, passed on opaquely


def test_zero_records_use_continue_and_are_nine_bytes():
    enc = MainStreamEncoder("qemu-7.2")
    first = enc.zero_page("pc.ram", 0)
    assert first == struct.pack(">Q", 0x02) + b"\x06pc.ram" + b"\x00"
    nxt = enc.zero_page("pc.ram", 4096)
    assert nxt == struct.pack(">Q", 4096 | 0x22) + b"\x00"
    buf = bytearray()
    enc.zero_pages("pc.ram", [8192, 12288], buf)
    assert bytes(buf) == struct.pack(">Q", 8192 | 0x22) + b"\x00" + struct.pack(
        ">Q", 12288 | 0x22) + b"\x00"


def test_start_section_bytes_match_qemu_layout():
    enc = MainStreamEncoder("qemu-7.2")
    hdr = enc.header()
    assert hdr == b"QEVM\x00\x00\x00\x03\x07\x00\x00\x00\x0dpc-i440fx-7.2"
    s = enc.section_start([("pc.ram", 1 << 20)])
    assert s[:13] == b"\x01\x00\x00\x00\x02\x03ram\x00\x00\x00\x00"
    assert s[13:17] == b"\x00\x00\x00\x04"
    assert s[17:25] == struct.pack(">Q", (1 << 20) | 0x04)
    assert s[25:] == b"\x06pc.ram" + struct.pack(">Q", 1 << 20)
    assert enc.end_of_round() == struct.pack(">Q", 0x10) + b"\x7e\x00\x00\x00\x02"
    assert MainStreamEncoder("qemu-9.2").end_of_round() == struct.pack(
        ">QQ", 0x200, 0x10) + b"\x7e\x00\x00\x00\x02"
    with pytest.raises(StreamError, match=r"RAM_SAVE_FLAG_MULTIFD_FLUSH does not exist in th"):
        enc.multifd_flush()


def test_device_state_after_ram_end_is_an_opaque_blob():
    # What a real QEMU 7.2 sends after RAM END: SECTION_FULL device sections, EOF,
    # VMDESCRIPTION -- none of it length-prefixed. Consumed until the peer closes.
    blob = b"\x04\x00\x00\x00\x03\x05timer\x00\x00\x00\x00\x00\x00\x00\x02" + b"\x11" * 50
    blob += b"\x00\x06\x00\x00\x00\x0b{\"page\":1}"
    data = build("qemu-7.2", rounds(), trailer=blob)
    dec, events = decode("qemu-7.2", data, 13)
    got = b"".join(e.data for e in events if isinstance(e, DeviceState))
    assert got == blob
    assert dec.device_state_bytes == len(blob)


def test_flush_rejected_in_72_dialect():
    data = build("qemu-9.2", rounds())
    with pytest.raises(StreamError, match="0x200") as info:
        decode("qemu-7.2", data)
    assert "look like dialect qemu-9.0 or newer" in str(info.value)


@pytest.mark.parametrize("dialect", ["qemu-9.0", "qemu-9.2", "qemu-10.0"])
def test_a_72_stream_in_a_per_round_dialect_says_it_looks_like_72(dialect):
    """A 7.2 source ends its setup section without MULTIFD_FLUSH (it syncs at every EOS);
    8.1+ sources never do: the decoder says so instead of waiting for a flush forever."""
    with pytest.raises(StreamError) as info:
        decode(dialect, build("qemu-7.2", rounds()))
    assert info.value.field == "dialect"
    assert "look like dialect qemu-7.2" in str(info.value) and dialect in str(info.value)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: b"QEVX" + d[4:], "magic"),
        (lambda d: d[:4] + b"\x00\x00\x00\x02" + d[8:], "version"),
        (lambda d: d[:-30], "closed mid-stream"),
        (lambda d: b"", "closed mid-stream"),
    ],
)
def test_malformed_streams(mutate, match):
    data = mutate(build("qemu-7.2", rounds()))
    with pytest.raises(StreamError, match=match):
        decode("qemu-7.2", data)


def test_page_beyond_block_and_unknown_block():
    enc = MainStreamEncoder("qemu-7.2")
    head = enc.header() + enc.section_start(BLOCKS) + enc.end_of_round() + enc.section_part()
    with pytest.raises(StreamError, match="beyond"):
        decode("qemu-7.2", head + enc.zero_page("pc.bios", 4 * 4096))
    enc2 = MainStreamEncoder("qemu-7.2")
    with pytest.raises(StreamError, match="unknown RAM block"):
        decode("qemu-7.2", head + enc2.zero_page("pc.nope", 0))


def test_mem_size_inconsistent():
    enc = MainStreamEncoder("qemu-7.2")
    s = bytearray(enc.section_start([("pc.ram", 8192)]))
    s[17:25] = struct.pack(">Q", 4096 | 0x04)  # total smaller than the block
    with pytest.raises(StreamError, match="inconsistent"):
        decode("qemu-7.2", enc.header() + bytes(s))


def _err(data, dialect="qemu-7.2"):
    with pytest.raises(StreamError) as info:
        decode(dialect, data)
    return info.value


def test_errors_name_the_field():
    """Every decoder error locates itself (the tap reports ``field`` verbatim)."""
    enc = MainStreamEncoder("qemu-7.2")
    good = build("qemu-7.2", rounds())
    head = enc.header() + enc.section_start(BLOCKS) + enc.end_of_round() + enc.section_part()
    dup = enc.section_start([("pc.ram", 8192), ("pc.ram", 8192)])
    assert _err(b"QEVX" + good[4:]).field == "magic"
    assert _err(good[:4] + b"\x00\x00\x00\x02" + good[8:]).field == "version"
    assert _err(b"").field == "magic"
    assert _err(good[:-30]).field == "ram"
    assert _err(enc.header() + dup).field == "block list"
    assert _err(head + enc.zero_page("pc.bios", 4 * 4096)).field == "offset"
    assert _err(head + MainStreamEncoder("qemu-7.2").zero_page("pc.nope", 0)).field == "ramblock"
    assert _err(head + struct.pack(">Q", 0x22) + b"\x00").field == "ram flags"
    assert _err(head + struct.pack(">Q", 0x200)).field == "ram flags"
    assert _err(head + enc.eos() + b"\x7e\x00\x00\x00\x09").field == "footer"
    assert _err(enc.header() + b"\x09").field == "section type"
    assert _err(enc.header() + b"\x04\x00\x00\x00\x01\x05timer").field == "section"


SWITCHOVER_START = b"\x08\x00\x0b\x00\x00"  # as QEMU 10.0 sends it (qemu-10.0-observed.md)


def _stream_with(dialect, command_bytes, machine_type=None):
    enc = MainStreamEncoder(dialect, machine_type=machine_type)
    return (enc.header() + enc.section_start(BLOCKS) + enc.end_of_round() + command_bytes
            + enc.section_end() + enc.end_of_round() + enc.eof())


def test_switchover_start_bytes_match_qemu_10():
    enc = MainStreamEncoder("qemu-10.0")
    assert enc.machine_type == "pc-i440fx-10.0" and enc.sends_switchover_start
    assert enc.switchover_start() == SWITCHOVER_START
    with pytest.raises(StreamError, match="MIG_CMD_SWITCHOVER_START does not exist"):
        MainStreamEncoder("qemu-9.2").switchover_start()


@pytest.mark.parametrize(("machine", "sends"), [
    ("pc-i440fx-10.0", True), ("pc-q35-10.1", True), ("pc-i440fx-11.0", True),
    ("microvm", True), ("pc-i440fx-9.2", False), ("pc-q35-7.2", False), ("pc-i440fx-2.12", False),
])
def test_machine_type_decides_switchover_start(machine, sends):
    assert machine_sends_switchover_start(machine) is sends
    assert MainStreamEncoder("qemu-10.0", machine_type=machine).sends_switchover_start is sends
    assert not MainStreamEncoder("qemu-9.2", machine_type=machine).sends_switchover_start


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_switchover_start_is_an_event_in_qemu_10(chunk):
    dec, events = decode("qemu-10.0", _stream_with("qemu-10.0", SWITCHOVER_START), chunk)
    assert VmCommand(11, "MIG_CMD_SWITCHOVER_START") in events and dec.complete
    # a 10.0 source with a 9.2 machine type sends none: the 10.0 decoder takes that too
    dec, events = decode("qemu-10.0", _stream_with("qemu-10.0", b"", "pc-i440fx-9.2"))
    assert dec.complete and not any(isinstance(e, VmCommand) for e in events)


def test_switchover_start_in_an_older_dialect_names_the_dialect():
    err = _err(_stream_with("qemu-9.2", SWITCHOVER_START), "qemu-9.2")
    assert err.field == "command"
    assert "MIG_CMD_SWITCHOVER_START" in str(err) and "qemu-10.0" in str(err)
    assert "unknown section type" not in str(err)


OTHER_COMMANDS = sorted(set(MIG_CMD_ARGS) - {MIG_CMD_SWITCHOVER_START} | {12, 0xFFFF})


@pytest.mark.parametrize("cmd", OTHER_COMMANDS)
def test_other_commands_are_refused_by_name(cmd):
    name, length = MIG_CMD_ARGS.get(cmd, (f"unknown MIG_CMD {cmd}", 0))
    payload = bytes(max(length, 0))
    raw = b"\x08" + struct.pack(">HH", cmd, len(payload)) + payload
    for dialect in ("qemu-7.2", "qemu-10.0"):
        err = _err(_stream_with(dialect, raw), dialect)
        assert err.field == "command" and name in str(err), str(err)


def test_switchover_start_with_a_payload_is_refused():
    err = _err(_stream_with("qemu-10.0", b"\x08\x00\x0b\x00\x02ab"), "qemu-10.0")
    assert err.field == "command" and "expected 0" in str(err)


def test_multifd_magic_on_the_main_channel_says_what_happened():
    err = _err(struct.pack(">II", 0x11223344, 1) + bytes(56))
    assert err.field == "magic" and "connected first" in str(err)


def test_configuration_subsection_is_named():
    enc = MainStreamEncoder("qemu-7.2")
    err = _err(enc.header() + b"\x05\x11target-page-bits")
    assert err.field == "configuration" and "subsection" in str(err)


def test_events_before_an_error_are_kept_in_out():
    enc = MainStreamEncoder("qemu-7.2")
    bad = (enc.header() + enc.section_start(BLOCKS) + enc.end_of_round() + enc.section_part()
           + enc.zero_page("pc.ram", 0) + struct.pack(">Q", 0x40))
    dec = MainStreamDecoder("qemu-7.2")
    out: list = []
    with pytest.raises(StreamError, match="RAM flags 0x40"):
        dec.feed(bad, out)
    kinds = [type(e) for e in out]
    assert MemSize in kinds and kinds[-1] is ZeroPage
    assert out[-1] == ZeroPage("pc.ram", 0, 0)
    # without ``out`` the same prefix decodes identically when the stream is good
    good = bad[:-8] + enc.eos() + enc.footer()
    assert [type(e) for e in MainStreamDecoder("qemu-7.2").feed(good)][: len(kinds)] == kinds
    assert dec.header_seen and not MainStreamDecoder("qemu-7.2").header_seen


_VALID = {d: build(d, rounds()) for d in ("qemu-7.2", "qemu-9.2")}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dialect=st.sampled_from(sorted(_VALID)),
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from("fid")),
        min_size=1, max_size=4,
    ),
    chunk=st.integers(1, 600),
)
def test_mutations_raise_only_stream_error(dialect, edits, chunk):
    data = bytearray(_VALID[dialect])
    for pos, val, op in edits:
        i = pos % (len(data) + 1)
        if op == "f" and i < len(data):
            data[i] ^= val or 1
        elif op == "i":
            data[i:i] = bytes([val])
        elif op == "d" and i < len(data):
            del data[i]
    dec = MainStreamDecoder(dialect)
    try:
        for i in range(0, len(data), chunk):
            dec.feed(bytes(data[i : i + chunk]))
        dec.close()
    except StreamError:
        pass


@settings(max_examples=100, deadline=None)
@given(
    dialect=st.sampled_from(["qemu-7.2", "qemu-9.0", "qemu-9.2"]),
    rnds=st.lists(
        st.lists(
            st.tuples(st.sampled_from(["zero", "page"]), st.sampled_from([b for b, _ in BLOCKS]),
                      st.integers(0, 63)),
            max_size=12,
        ),
        min_size=1, max_size=4,
    ),
    chunk=st.integers(1, 5000),
)
def test_round_trip_property(dialect, rnds, chunk):
    sizes = dict(BLOCKS)
    recs = [
        [(k, b, (p * 4096) % sizes[b], bytes([p + 1]) * 4096) for k, b, p in r] for r in rnds
    ]
    _, events = decode(dialect, build(dialect, recs), chunk)
    got = [(type(e).__name__, e.block, e.offset) for e in events
           if isinstance(e, ZeroPage | Page)]
    want = [("ZeroPage" if k == "zero" else "Page", b, o) for r in recs for k, b, o, _ in r]
    assert got == want
