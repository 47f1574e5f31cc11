"""The destination accepts a real QEMU 7.2 source: recorded golden streams (fixtures/golden/
qemu-7.2, several RAM blocks incl. ROMs, device state + VMDESCRIPTION after RAM END, SYNC
merged into data packets, pages sent twice) replayed over TCP in accept order into
:class:`Destination`; the pc.ram block must equal QEMU's source RAM (sha256 in the manifest)."""

from __future__ import annotations

import socket
import threading

import pytest
from qatmig_engine.destination import Destination
from qatmig_engine.guest import GuestMemory, RAMBlock
from qatmig_engine.params import MigrationParameters
from qatmig_engine.qemu.golden import capture_entry, load_connections, load_manifest


def _manifest():
    return load_manifest()


def _replay(addr, blobs, chunk=65536):
    socks = []
    for _ in blobs:  # connect in the recorded accept order: main first in 7.2
        socks.append(socket.create_connection(addr, timeout=10))

    def pump(s, data):
        try:
            for i in range(0, len(data), chunk):
                s.sendall(data[i : i + chunk])
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    ts = [threading.Thread(target=pump, args=(s, b), daemon=True)
          for s, b in zip(socks, blobs, strict=True)]
    for t in ts:
        t.start()
    return socks, ts


@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
def test_replayed_qemu72_source_completes_into_the_destination(method):
    m = _manifest()
    cap = capture_entry(method, m)
    blobs = load_connections(method, m)
    size = m["ram"]["size"]
    guest = GuestMemory([RAMBlock.anonymous(m["ramblock"], size)])
    params = MigrationParameters(multifd_compression=method, dialect="qemu-7.2",
                                 multifd_channels=m["parameters"]["multifd-channels"])
    dst = Destination(guest, params, ramblock=m["ramblock"], timeout=10)
    socks, ts = _replay(dst.address, blobs)
    st = dst.run()
    for t in ts:
        t.join(5)
    for s in socks:
        s.close()
    assert st.status == "completed", st.error
    assert guest.block(m["ramblock"]).digest() == m["ram"]["sha256"]
    # Every RAM block QEMU listed exists on the destination (ROMs in anonymous memory).
    assert [b.name for b in guest.blocks][1:] == [
        r["name"] for r in cap["ramblocks"] if r["name"] != m["ramblock"]]
    assert st.machine_type == cap["machine_type"]
    assert st.device_state_bytes > 1000  # device sections + VMDESCRIPTION, opaque
    q = cap["qemu_query_migrate_source"]
    assert st.destination.normal_pages + st.destination.zero_pages >= q["normal"] + q[
        "duplicate"]
    assert st.dirty_sync_count == cap["tap"]["eos"]
    guest.close()


def test_replay_cut_short_is_failed():
    m = _manifest()
    blobs = load_connections("zstd", m)
    blobs[2] = blobs[2][: len(blobs[2]) // 2]  # one channel stops mid-way
    guest = GuestMemory([RAMBlock.anonymous(m["ramblock"], m["ram"]["size"])])
    params = MigrationParameters(multifd_compression="zstd", dialect="qemu-7.2")
    dst = Destination(guest, params, ramblock=m["ramblock"], timeout=2)
    socks, _ = _replay(dst.address, blobs)
    st = dst.run()
    for s in socks:
        s.close()
    assert st.status == "failed"
    guest.close()
