"""The destination is stricter than QEMU where QEMU's receiver is silent (issue 13, item 2):
recorded sessions (fixtures/sessions, and QEMU 7.2's golden captures) replayed over real
sockets with one packet changed must fail with a PacketError naming the channel, the packet and
the field - never complete with wrong RAM."""

from __future__ import annotations

import re
import struct

import pytest
from qatmig_engine.destination import Destination
from qatmig_engine.errors import PacketError
from qatmig_engine.guest import GuestMemory, RAMBlock
from qatmig_engine.params import MigrationParameters
from qatmig_engine.replay import (
    SESSION_GUEST_BYTES,
    Replay,
    load_session,
    load_sessions_manifest,
    multifd_packets,
    session_entry,
)
from qatmig_engine.wire import Packet, PacketOrder, decode_packet

SESSIONS = [(s["dialect"], s["multifd_compression"])
            for s in load_sessions_manifest()["sessions"]]


def _run(dialect: str, method: str, blobs: list[bytes]):
    guest = GuestMemory([RAMBlock.anonymous("pc.ram", SESSION_GUEST_BYTES)])
    params = MigrationParameters(multifd_compression=method, dialect=dialect,
                                 multifd_channels=len(blobs) - 1)
    dst = Destination(guest, params, ramblock="pc.ram", timeout=5)
    with Replay(dst.address, blobs):
        st = dst.run()
    digest = guest.blocks[0].digest()
    guest.close()
    return st, digest


def _data_packets(blob: bytes, dialect: str):
    return [p for p in multifd_packets(blob, has_zero_pages=dialect != "qemu-7.2")
            if p.normal_pages]


def _data_conn(blobs: list[bytes], dialect: str) -> int:
    """The multifd connection that carries data packets (accept order differs by dialect)."""
    return next(i for i, b in enumerate(blobs)
                if b[:4] == b"\x11\x22\x33\x44" and _data_packets(b, dialect))


@pytest.mark.parametrize(("dialect", "method"), SESSIONS)
def test_recorded_session_replays_to_the_same_ram(dialect, method):
    st, digest = _run(dialect, method, load_session(dialect, method))
    assert st.status == "completed", st.error
    assert digest == session_entry(dialect, method)["guest_sha256"]


def _mutate_duplicate(blob: bytes, dialect: str) -> bytes:
    """The first data packet (header + payload) sent again right after itself."""
    p = _data_packets(blob, dialect)[0]
    return blob[:p.end] + blob[p.offset:p.end] + blob[p.end:]


def _mutate_unaligned(blob: bytes, dialect: str) -> bytes:
    """The first data packet's last page offset moved 8 bytes (still inside the block)."""
    p = _data_packets(blob, dialect)[0]
    b = bytearray(blob)
    at = p.offsets_at + 8 * (p.normal_pages - 1)
    (off,) = struct.unpack_from(">Q", b, at)
    struct.pack_into(">Q", b, at, off + 8)
    return bytes(b)


def _mutate_backwards(blob: bytes, dialect: str) -> bytes:
    """The second packet on the channel carries a lower packet_num than the first."""
    pk = multifd_packets(blob, has_zero_pages=dialect != "qemu-7.2")
    b = bytearray(blob)
    struct.pack_into(">Q", b, pk[1].offset + 24, max(pk[0].packet_num - 1, 0))
    if pk[0].packet_num == 0:
        struct.pack_into(">Q", b, pk[0].offset + 24, 5)
    return bytes(b)


def _mutate_drop(blob: bytes, dialect: str) -> bytes:
    """The first data packet (header + payload) is lost."""
    p = _data_packets(blob, dialect)[0]
    return blob[:p.offset] + blob[p.end:]


MUTATIONS = {
    "packet-repeated": (_mutate_duplicate, "packet_num", ("repeated on the channel",)),
    "unaligned-offset": (_mutate_unaligned, "offset", ("not a multiple of the page size",)),
    # whichever check sees it first: the channel's order, or the round's numbers
    "packet-num-backwards": (_mutate_backwards, "packet_num", (
        "goes backwards", "never arrived", "earlier round")),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize(("dialect", "method"), [
    ("qemu-7.2", "zlib"), ("qemu-7.2", "zstd"), ("qemu-9.2", "none"), ("qemu-9.2", "zstd"),
    ("qemu-10.0", "qatzip")])
def test_a_packet_qemu_would_accept_is_refused_naming_it(dialect, method, mutation):
    mutate, _fld, texts = MUTATIONS[mutation]
    blobs = load_session(dialect, method)
    i = _data_conn(blobs, dialect)
    blobs[i] = mutate(blobs[i], dialect)
    st, _ = _run(dialect, method, blobs)
    assert st.status == "failed"
    assert any(t in st.error for t in texts), st.error
    assert "the reference is strict here" in st.error, st.error
    assert re.search(r"multifd( \d)?: packet_num \d+", st.error), st.error


@pytest.mark.parametrize(("dialect", "method"), [
    ("qemu-9.0", "zlib"), ("qemu-9.2", "zstd"), ("qemu-10.0", "none"), ("qemu-10.0", "qatzip")])
def test_a_lost_packet_is_refused(dialect, method):
    """A data packet that never arrives (the only one on its channel: nothing after it shows
    the loss) leaves a gap in QEMU's packet numbering, checked at the round's end (9.0+)."""
    blobs = load_session(dialect, method)
    i = _data_conn(blobs, dialect)
    blobs[i] = _mutate_drop(blobs[i], dialect)
    st, _digest = _run(dialect, method, blobs)
    assert st.status == "failed", "completed with a packet missing"
    assert "never arrived" in st.error, st.error


def test_duplicated_packet_in_qemu72_golden_capture_is_refused():
    """QEMU 7.2's own capture (zstd), one data packet repeated: QEMU's receiver would decode
    the payload again into a stream that moved on (wrong RAM); ours names the packet."""
    from qatmig_engine.qemu.golden import load_connections, load_manifest

    m = load_manifest()
    blobs = load_connections("zstd", m)
    blobs[1] = _mutate_duplicate(blobs[1], "qemu-7.2")
    guest = GuestMemory([RAMBlock.anonymous(m["ramblock"], m["ram"]["size"])])
    params = MigrationParameters(multifd_compression="zstd", dialect="qemu-7.2")
    dst = Destination(guest, params, ramblock=m["ramblock"], timeout=5)
    with Replay(dst.address, blobs):
        st = dst.run()
    guest.close()
    assert st.status == "failed" and "repeated on the channel" in st.error, st.error


# ------------------------------------------------------------------ PacketOrder, sans I/O

def _packets(dialect: str, method: str):
    blobs = load_session(dialect, method)
    blob = blobs[_data_conn(blobs, dialect)]
    return [decode_packet(blob[p.offset:p.offset + p.header_len], dialect)
            for p in multifd_packets(blob, has_zero_pages=dialect != "qemu-7.2")]


def test_page_sent_twice_in_one_round_is_refused_except_in_72():
    pk = [p for p in _packets("qemu-9.2", "none") if p.normal_pages]
    order = PacketOrder("qemu-9.2")
    order.contiguous_numbers = False  # the numbers below are made up
    order.check(pk[0], 0, 0, {"pc.ram": SESSION_GUEST_BYTES})
    again = type(pk[0])(**{**{f: getattr(pk[0], f) for f in pk[0].__slots__},
                           "packet_num": pk[0].packet_num + 1000})
    with pytest.raises(PacketError, match="already sent in round 1") as info:
        order.check(again, 1, 0, {"pc.ram": SESSION_GUEST_BYTES})
    assert info.value.packet_num == pk[0].packet_num + 1000 and info.value.channel == 1
    order.end_round()
    again.packet_num += 1
    order.check(again, 1, 1, {"pc.ram": SESSION_GUEST_BYTES})  # next round: fine
    order72 = PacketOrder("qemu-7.2")
    order72.check(pk[0], 0, 0, {"pc.ram": SESSION_GUEST_BYTES})
    order72.check(again, 1, 0, {"pc.ram": SESSION_GUEST_BYTES})  # the 7.2 sender race


def test_packet_num_shared_by_channels_and_rounds():
    pk = [p for p in _packets("qemu-9.2", "zstd") if p.normal_pages]
    order = PacketOrder("qemu-9.2")
    order.contiguous_numbers = False
    order.check(pk[0], 0, 0, {"pc.ram": SESSION_GUEST_BYTES})
    with pytest.raises(PacketError, match="already used on channel 0"):
        order.check(pk[0], 1, 0, {"pc.ram": SESSION_GUEST_BYTES})
    order.end_round()
    with pytest.raises(PacketError, match="earlier round"):
        order.check(pk[0], 2, 1, {"pc.ram": SESSION_GUEST_BYTES})


def _pkt(num: int, offsets: list[int], zero: int = 0) -> Packet:
    return Packet(flags=0, pages_alloc=128, normal_pages=len(offsets) - zero,
                  next_packet_size=(len(offsets) - zero) * 4096, packet_num=num,
                  zero_pages=zero, ramblock="pc.ram", offsets=offsets)


def test_packet_order_fast_path_for_contiguous_packets_stays_strict():
    """A packet covering one contiguous range of pages (normal then zero, any order) takes
    the vectorised check; each rule still holds on it and on its neighbours."""
    ps, blocks = 4096, {"pc.ram": 64 * 4096}
    order = PacketOrder("qemu-9.2")
    order.contiguous_numbers = False
    normal_then_zero = [ps * i for i in (0, 1, 3, 4, 5, 2)]  # pages 0-5, page 2 zero
    order.check(_pkt(1, normal_then_zero, zero=1), 0, 0, blocks)
    for num, offs in ((2, [5 * ps, 6 * ps]),        # overlaps the first packet's last page
                      (3, [2 * ps]),                 # its zero page
                      (4, [7 * ps, 8 * ps, 0])):     # not contiguous, page 0 again
        with pytest.raises(PacketError, match="already sent in round 1"):
            order.check(_pkt(num, offs), 1, 0, blocks)
    order.check(_pkt(5, [ps * i for i in (11, 9, 10)]), 1, 0, blocks)  # contiguous, shuffled
    with pytest.raises(PacketError, match="already sent in round 1"):
        order.check(_pkt(6, [10 * ps]), 0, 0, blocks)
    with pytest.raises(PacketError, match="appears twice in one packet"):
        order.check(_pkt(7, [12 * ps, 13 * ps, 12 * ps]), 0, 0, blocks)
    with pytest.raises(PacketError, match="not a multiple of the page size"):
        order.check(_pkt(8, [14 * ps + 8, 15 * ps + 8]), 0, 0, blocks)
    order.end_round()
    order.check(_pkt(9, [ps * i for i in range(6)]), 0, 1, blocks)  # next round: fine
    with pytest.raises(PacketError, match="already sent in round 2"):
        order.check(_pkt(10, [ps * i for i in range(5, 9)]), 1, 1, blocks)
