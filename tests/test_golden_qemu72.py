"""Golden QEMU 7.2 captures: decode every recorded byte without QEMU installed.

The captures (fixtures/golden/qemu-7.2, recorded by tools/record_golden.py from a real QEMU
7.2) are decoded with the wire module and the codecs through the tap's checker; the rebuilt
``pc.ram`` must have the sha256 of the source RAM, which the recipe regenerates.
"""

from __future__ import annotations

import hashlib

import pytest
from qatmig_engine.qemu.golden import capture_entry, load_connections, load_manifest
from qatmig_engine.qemu.image import build_image
from qatmig_engine.tap import check_capture
from qatmig_engine.wire import InitPacket, decode_packet, packet_len
from qemu_support import replay_into_engine

METHODS = ("none", "zlib", "zstd")


@pytest.fixture(scope="module")
def manifest():
    return load_manifest()


def test_manifest_describes_a_qemu_72_recording(manifest):
    assert manifest["qemu_version"].startswith("QEMU emulator version 7.2")
    assert manifest["dialect"] == "qemu-7.2"
    assert manifest["machine_type"] == "pc-i440fx-7.2"
    assert [c["multifd_compression"] for c in manifest["captures"]] == list(METHODS)
    for c in manifest["captures"]:
        roles = [x["role"] for x in c["connections"]]
        assert roles[0] == "main"
        assert roles.count("multifd") == manifest["parameters"]["multifd-channels"]


def test_recipe_regenerates_the_source_ram(manifest):
    r = manifest["ram"]["recipe"]
    img = build_image(r["size"], r["seed"], tuple(r["mix"]))
    assert hashlib.sha256(img).hexdigest() == manifest["ram"]["sha256"]


@pytest.mark.parametrize("method", METHODS)
def test_capture_rebuilds_source_ram_and_matches_qemu_counters(manifest, method):
    entry = capture_entry(method, manifest)
    conns = load_connections(method, manifest)
    size = manifest["ram"]["size"]
    ram = {"pc.ram": bytearray(size)}
    report = check_capture(
        conns, dialect="qemu-7.2", method=method,
        channels=manifest["parameters"]["multifd-channels"], ram=ram,
    )
    assert report.ok, [str(e) for e in report.errors]
    assert hashlib.sha256(ram["pc.ram"]).hexdigest() == manifest["ram"]["sha256"]
    # the main stream's block list is QEMU's, names and lengths, in `info ramblock` order
    assert [(n, ln) for n, ln in report.ramblocks.items()] == [
        (b["name"], b["used_length"]) for b in entry["ramblocks"]
    ]
    assert report.machine_type == manifest["machine_type"]
    # QEMU's own counters: every normal page went over multifd (a few twice), every zero
    # page as a main-channel record
    qemu = entry["qemu_query_migrate_source"]
    notes = {n.kind: n.count for n in report.notes}
    twice = notes.get("page-sent-twice", 0)
    assert report.totals()["pages"] - twice == qemu["normal"]
    assert report.channels[0].zero_pages == qemu["duplicate"]
    # one SYNC per channel per EOS of the main stream (7.2 syncs at every section end)
    for c in report.channels[1:]:
        assert c.sync_packets == report.eos
    assert entry["tap"]["pages"] == report.totals()["pages"]
    assert entry["tap"]["payload_bytes"] == report.totals()["payload_bytes"]


def test_incremental_parsers_agree_on_odd_chunks(manifest):
    conns = load_connections("zstd", manifest)
    whole = check_capture(conns, method="zstd", channels=2)
    chunked = check_capture(conns, method="zstd", channels=2, chunk=997)
    assert chunked.ok and whole.ok
    assert chunked.to_json()["channels"] == whole.to_json()["channels"]
    assert chunked.eos == whole.eos


def test_method_is_learnt_from_the_flags(manifest):
    report = check_capture(load_connections("zlib", manifest))
    assert report.ok and report.method == "zlib"


@pytest.mark.parametrize("method", METHODS)
def test_raw_packets_decode_with_wire_module(manifest, method):
    """Walk each multifd connection with decode_packet only (no tap), as a receiver would."""
    plen = packet_len()
    for data in load_connections(method, manifest)[1:]:
        init = InitPacket.decode(data[:64], expected_uuid=None, channels=2)
        assert 0 <= init.channel_id < 2
        pos, pkts = 64, 0
        while pos < len(data):
            pkt = decode_packet(data[pos : pos + plen], "qemu-7.2", channel=init.channel_id)
            pos += plen + pkt.payload_len
            pkts += 1
            assert pkt.reserved == bytes(32)
            assert pkt.pages_alloc == 128
            # the compression bit is set only on packets that carry pages (spec §3.4)
            if pkt.normal_pages:
                assert pkt.compression_flag == {"none": 0, "zlib": 2, "zstd": 4}[method]
        assert pos == len(data) and pkts > 0


@pytest.mark.parametrize("method", METHODS)
def test_engine_destination_accepts_the_recorded_qemu_stream(manifest, method, tmp_path):
    """Replay QEMU 7.2's recorded bytes (main first, then the channels) into the engine's
    destination: it must complete with the source RAM, no QEMU needed."""
    from qatmig_engine.params import MigrationParameters

    conns = load_connections(method, manifest)
    size = manifest["ram"]["size"]
    img = tmp_path / "dst.img"
    params = MigrationParameters(multifd_channels=2, multifd_compression=method,
                                 dialect="qemu-7.2")
    st = replay_into_engine(conns, size, params, img)
    assert st.status == "completed", st.error
    assert hashlib.sha256(img.read_bytes()).hexdigest() == manifest["ram"]["sha256"]
