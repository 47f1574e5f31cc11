"""Golden QEMU 10.0 captures: decode every recorded byte without QEMU installed.

fixtures/golden/qemu-10.0 was recorded by ``tools/record_golden.py --qemu 10.0`` from a real
QEMU 10.0.2 (Debian bookworm-backports) -> QEMU 10.0.2 migration through the tap, machine type
``pc-i440fx-10.0``, zero-page-detection multifd, none/zlib/zstd. The tap's checker in the
``qemu-10.0`` dialect rebuilds ``pc.ram`` (sha256 of the recipe's image), sees the
MIG_CMD_SWITCHOVER_START command, and the engine's destination accepts a replay.
"""

from __future__ import annotations

import hashlib
import struct

import pytest
from qatmig_engine.errors import StreamError
from qatmig_engine.mainstream import MainStreamDecoder
from qatmig_engine.params import MigrationParameters
from qatmig_engine.qemu.golden import capture_entry, load_connections, load_manifest
from qatmig_engine.qemu.image import build_image
from qatmig_engine.tap import check_capture, format_report
from qatmig_engine.wire import decode_packet, packet_len
from qemu_support import replay_into_engine

METHODS = ("none", "zlib", "zstd")
DIALECT = "qemu-10.0"
PLEN = packet_len()


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(DIALECT)


def _packets(conn: bytes):
    pos, out = 64, []
    while pos < len(conn):
        pkt = decode_packet(conn[pos : pos + PLEN], DIALECT)
        out.append((pos, pkt))
        pos += PLEN + pkt.payload_len
    assert pos == len(conn)
    return out


def test_manifest_describes_a_qemu_10_recording(manifest):
    assert manifest["qemu_version"].startswith("QEMU emulator version 10.0.")
    assert manifest["dialect"] == DIALECT
    assert manifest["machine_type"] == "pc-i440fx-10.0"
    assert manifest["parameters"]["zero-page-detection"] == "multifd"
    assert [c["multifd_compression"] for c in manifest["captures"]] == list(METHODS)
    r = manifest["ram"]["recipe"]
    img = build_image(r["size"], r["seed"], tuple(r["mix"]))
    assert hashlib.sha256(img).hexdigest() == manifest["ram"]["sha256"]


@pytest.mark.parametrize("method", METHODS)
def test_capture_rebuilds_source_ram_and_matches_qemu_counters(manifest, method):
    entry = capture_entry(method, manifest)
    conns = load_connections(method, manifest)
    ram = {"pc.ram": bytearray(manifest["ram"]["size"])}
    report = check_capture(conns, dialect=DIALECT, method=method,
                           channels=manifest["parameters"]["multifd-channels"], ram=ram)
    assert report.ok, format_report(report)
    assert hashlib.sha256(ram["pc.ram"]).hexdigest() == manifest["ram"]["sha256"]
    assert report.commands == ["MIG_CMD_SWITCHOVER_START"]
    assert report.machine_type == "pc-i440fx-10.0"
    assert [(n, ln) for n, ln in report.ramblocks.items()] == [
        (b["name"], b["used_length"]) for b in entry["ramblocks"]]
    # multifd zero-page detection: zero pages travel in packets, none on the main channel
    qemu = entry["qemu_query_migrate_source"]
    assert report.channels[0].zero_pages == 0
    assert sum(c.zero_pages for c in report.channels[1:]) == qemu["duplicate"]
    assert report.totals()["pages"] == qemu["normal"]


def test_qemu_10_sends_offsets_out_of_order(manifest):
    """QEMU's multifd zero-page detection swaps in place: the recording has packets whose
    normal offsets do not ascend, which the tap accepts in 9.0+ dialects only."""
    conns = load_connections("none", manifest)
    unordered = [
        pkt for conn in conns[1:] for _, pkt in _packets(conn)
        if list(pkt.normal_offsets) != sorted(pkt.normal_offsets)
    ]
    assert unordered, "no packet with out-of-order offsets in the recording"


def test_a_page_twice_in_one_packet_is_a_deviation(manifest):
    conns = list(load_connections("none", manifest))
    pos, pkt = next((p, k) for p, k in _packets(conns[1]) if k.normal_pages >= 2)
    c = bytearray(conns[1])
    c[pos + 320 + 8 : pos + 320 + 16] = struct.pack(">Q", pkt.normal_offsets[0])
    conns[1] = bytes(c)
    report = check_capture(conns, dialect=DIALECT, method="none", channels=2)
    assert not report.ok
    err = report.errors[0]
    assert err.field == "offset" and "appears twice" in err.message
    assert err.packet_num == pkt.packet_num


def test_an_older_dialect_names_the_command(manifest):
    main = load_connections("zstd", manifest)[0]
    with pytest.raises(StreamError) as info:
        MainStreamDecoder("qemu-9.2").feed(main)
    assert info.value.field == "command"
    assert "MIG_CMD_SWITCHOVER_START" in str(info.value) and "qemu-10.0" in str(info.value)


@pytest.mark.parametrize("method", METHODS)
def test_engine_destination_accepts_the_recorded_qemu_10_stream(manifest, method, tmp_path):
    params = MigrationParameters(multifd_channels=2, multifd_compression=method,
                                 dialect=DIALECT, zero_page_detection="multifd")
    img = tmp_path / "dst.img"
    st = replay_into_engine(load_connections(method, manifest), manifest["ram"]["size"],
                            params, img)
    assert st.status == "completed", st.error
    assert st.vm_commands == ["MIG_CMD_SWITCHOVER_START"]
    assert hashlib.sha256(img.read_bytes()).hexdigest() == manifest["ram"]["sha256"]
