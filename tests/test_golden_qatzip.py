"""multifd-compression qatzip sessions of a real QEMU 10.0.2 built with QATzip, decoded without
QEMU or libqatzip.

fixtures/golden/qemu-10.0-qatzip was recorded by ``tools/record_qatzip.py`` (levels 1 and 9;
QEMU -> QEMU, QEMU -> engine and engine -> QEMU, each through the tap) from QEMU 10.0.2 configured
with ``--enable-qatzip`` against libqatzip 1.3.1 on a machine without QAT hardware (libqatzip's
software path). The tap's checker rebuilds ``pc.ram`` from every capture; QEMU's packets have the
layout QEMU's multifd-qatzip.c gives them; the engine's destination accepts QEMU's streams.
"""

from __future__ import annotations

import hashlib
import struct

import pytest
from qatmig_engine.params import MigrationParameters
from qatmig_engine.qemu.golden import load_connections, load_manifest
from qatmig_engine.qemu.image import build_image
from qatmig_engine.tap import check_capture, format_report
from qatmig_engine.wire import decode_packet, packet_len
from qemu_support import replay_into_engine

RELEASE = "qemu-10.0-qatzip"
DIALECT = "qemu-10.0"
PLEN = packet_len()
MANIFEST = load_manifest(RELEASE)
NAMES = [c["name"] for c in MANIFEST["captures"]]
QEMU_SOURCED = [c["name"] for c in MANIFEST["captures"] if c["direction"] != "engine-qemu"]
#: gzip-ext header XFL byte QATzip writes per level (deflate's "max compression" 2, "fastest" 4)
XFL = {1: 0x04, 9: 0x02}


def _entry(name: str) -> dict:
    return next(c for c in MANIFEST["captures"] if c["name"] == name)


def _conns(name: str) -> list[bytes]:
    return load_connections(_entry(name)["multifd_compression"],
                            {**MANIFEST, "captures": [_entry(name)]})


def _data_packets(conn: bytes):
    pos = 64
    while pos < len(conn):
        pkt = decode_packet(conn[pos : pos + PLEN], DIALECT)
        yield pkt, conn[pos + PLEN : pos + PLEN + pkt.payload_len]
        pos += PLEN + pkt.payload_len
    assert pos == len(conn)


def test_manifest_names_qemu_libqatzip_and_every_session():
    assert MANIFEST["qemu_version"].startswith("QEMU emulator version 10.0.2")
    assert "1.3.1" in MANIFEST["libqatzip"]
    assert MANIFEST["dialect"] == DIALECT
    assert {(c["direction"], c["multifd_qatzip_level"]) for c in MANIFEST["captures"]} == {
        (d, lv) for d in ("qemu-qemu", "qemu-engine", "engine-qemu") for lv in (1, 9)}
    r = MANIFEST["ram"]["recipe"]
    assert hashlib.sha256(build_image(r["size"], r["seed"], tuple(r["mix"]))).hexdigest() == \
        MANIFEST["ram"]["sha256"]


@pytest.mark.parametrize("name", NAMES)
def test_capture_rebuilds_the_source_ram(name):
    entry = _entry(name)
    ram = {"pc.ram": bytearray(MANIFEST["ram"]["size"])}
    report = check_capture(_conns(name), dialect=DIALECT, method="qatzip",
                           level=entry["multifd_qatzip_level"],
                           channels=MANIFEST["parameters"]["multifd-channels"], ram=ram)
    assert report.ok, format_report(report)
    assert hashlib.sha256(ram["pc.ram"]).hexdigest() == MANIFEST["ram"]["sha256"]
    assert report.machine_type == "pc-i440fx-10.0"
    assert report.commands == ["MIG_CMD_SWITCHOVER_START"]
    assert report.totals()["pages"] == entry["tap"]["pages"]
    qemu = entry["qemu_query_migrate_source"]
    if qemu is not None:  # QEMU was the source: its counters match what the tap saw
        assert report.totals()["pages"] == qemu["normal"]
        assert report.totals()["zero_pages"] == qemu["duplicate"]


@pytest.mark.parametrize("name", QEMU_SOURCED)
def test_qemu_packets_have_qemus_qatzip_layout(name):
    """flags exactly QATZIP (0x20) on data packets, SYNC alone; a payload is one gzip-ext
    member (QATzip's 'QZ' extra field, XFL by level) whose sizes match the pages."""
    level = _entry(name)["multifd_qatzip_level"]
    members = 0
    for conn in _conns(name)[1:]:
        for pkt, payload in _data_packets(conn):
            if pkt.sync:
                assert pkt.flags == 0x1
                continue
            assert pkt.flags == 0x20
            if not pkt.normal_pages:
                assert payload == b""
                continue
            members += 1
            assert payload[:4] == b"\x1f\x8b\x08\x04" and payload[8] == XFL[level]
            assert payload[12:14] == b"QZ"
            src_sz, dst_sz = struct.unpack_from("<II", payload, 16)
            assert src_sz == pkt.normal_pages * 4096 and 24 + dst_sz + 8 == len(payload)
            assert struct.unpack_from("<I", payload, len(payload) - 4)[0] == src_sz
    assert members > 0


@pytest.mark.parametrize("name", QEMU_SOURCED)
def test_engine_destination_accepts_qemus_qatzip_stream(name, tmp_path):
    params = MigrationParameters(multifd_channels=MANIFEST["parameters"]["multifd-channels"],
                                 multifd_compression="qatzip", dialect=DIALECT,
                                 qat_backend="sw")
    img = tmp_path / "dst.img"
    st = replay_into_engine(_conns(name), MANIFEST["ram"]["size"], params, img)
    assert st.status == "completed", st.error
    assert hashlib.sha256(img.read_bytes()).hexdigest() == MANIFEST["ram"]["sha256"]
