#!/usr/bin/env python3
"""Record the bad-stream corpus under fixtures/badstreams/ (conformance item: bad streams).

The reference source migrates a small deterministic guest (1 MiB: text, repeated bytes, zero and
random pages) into a recording server that keeps every connection's bytes in the order the source
opened them. Each case then breaks that clean session in exactly one place (bad magic, uuid
mismatch, bomb payload, ...), found by walking the recorded packets with the engine's wire
decoder. The corpus is data: the conformance suite replays it (``qatmig_conformance.badstreams``)
and never runs this script.

    .venv/bin/python tools/record_bad_streams.py            # rewrite fixtures/badstreams/
"""

from __future__ import annotations

import gzip
import json
import random
import socket
import struct
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

from qatmig_engine.codecs import qzformat
from qatmig_engine.guest import GuestMemory, RAMBlock
from qatmig_engine.params import MigrationParameters
from qatmig_engine.source import Source
from qatmig_engine.wire import decode_packet, packet_len

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "badstreams"
RAM_SIZE = 1 << 20
RAMBLOCK = "pc.ram"
UUID = "8d6d4b6e-2f4c-4c1e-9a57-3b1f0c2d9e11"
OTHER_UUID = "11111111-2222-4333-8444-555555555555"
PAGE = 4096
HLEN = packet_len(PAGE)
CHANNELS = 2


def guest_bytes(size: int = RAM_SIZE, seed: int = 11) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    for p in range(size // PAGE):
        kind = p % 8
        if kind in (0, 1, 2, 3):
            line = f"page {p:05d}: the quick brown fox jumps over the lazy dog {seed}\n".encode()
            out += (line * (PAGE // len(line) + 1))[:PAGE]
        elif kind == 4:
            out += bytes([rng.randrange(1, 256)]) * PAGE
        elif kind == 5 and p % 32 == 5:
            out += rng.randbytes(PAGE)
        elif kind == 5:
            out += bytes([p % 251 + 1, 0]) * (PAGE // 2)
        else:
            out += bytes(PAGE)
    return bytes(out)


def record(method: str, dialect: str, channels: int = CHANNELS) -> list[bytes]:
    """The clean session: each connection's bytes, in the order the source connected."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(10)
    conns: list[bytearray] = []
    threads: list[threading.Thread] = []

    def drain(s: socket.socket, buf: bytearray) -> None:
        with s:
            while chunk := s.recv(1 << 16):
                buf += chunk

    def acceptor() -> None:
        for _ in range(channels + 1):
            s, _ = lsock.accept()
            buf = bytearray()
            conns.append(buf)
            t = threading.Thread(target=drain, args=(s, buf))
            threads.append(t)
            t.start()

    acc = threading.Thread(target=acceptor)
    acc.start()
    blk = RAMBlock.anonymous(RAMBLOCK, RAM_SIZE)
    blk.view[:] = guest_bytes()
    guest = GuestMemory([blk])
    params = MigrationParameters(multifd_channels=channels, multifd_compression=method,
                                 dialect=dialect)
    if method == "qatzip":
        params.qat_backend = "sw"
    st = Source(guest, params, "127.0.0.1", lsock.getsockname()[1], uuid=UUID, timeout=10,
                wait_for_destination=0).run()
    acc.join()
    for t in threads:
        t.join()
    lsock.close()
    guest.close()
    if st.status != "completed":
        raise SystemExit(f"recording {method}/{dialect} failed: {st.error}")
    return [bytes(c) for c in conns]


def is_main(conn: bytes) -> bool:
    return conn[:4] == b"QEVM"


def multifd_index(conns: list[bytes], channel: int) -> int:
    """Index of the connection whose init packet carries ``channel``."""
    for i, c in enumerate(conns):
        if not is_main(c) and c[24] == channel:
            return i
    raise LookupError(channel)


def packets(conn: bytes, dialect: str) -> list[tuple[int, int, object]]:
    """(header offset, payload length, Packet) of every packet after the init packet."""
    out = []
    pos = 64
    while pos < len(conn):
        pkt = decode_packet(conn[pos : pos + HLEN], dialect)
        out.append((pos, pkt.payload_len, pkt))
        pos += HLEN + pkt.payload_len
    return out


def first_data_packet(conn: bytes, dialect: str) -> tuple[int, int, object]:
    return next(p for p in packets(conn, dialect) if p[2].normal_pages)  # type: ignore[attr-defined]


def put32(b: bytearray, off: int, v: int) -> None:
    b[off : off + 4] = struct.pack(">I", v)


# ------------------------------------------------------------------------------- mutations
Mutation = Callable[[list[bytes], str], list[bytes]]


def on_channel(ch: int | None, fn: Callable[[bytearray, str], bytes]) -> Mutation:
    """Apply ``fn`` to channel ``ch``'s connection (None: the first one carrying pages)."""
    def apply(conns: list[bytes], dialect: str) -> list[bytes]:
        out = list(conns)
        if ch is None:
            i = next(k for k, c in enumerate(out) if not is_main(c)
                     and any(p[2].normal_pages for p in packets(c, dialect)))  # type: ignore
        else:
            i = multifd_index(out, ch)
        out[i] = fn(bytearray(out[i]), dialect)
        return out
    return apply


def bad_init_magic(c: bytearray, d: str) -> bytes:
    put32(c, 0, 0x11223345)
    return bytes(c)


def bad_packet_version(c: bytearray, d: str) -> bytes:
    off = first_data_packet(bytes(c), d)[0]
    put32(c, off + 4, 2)
    return bytes(c)


def uuid_mismatch(c: bytearray, d: str) -> bytes:
    import uuid

    c[8:24] = uuid.UUID(OTHER_UUID).bytes
    return bytes(c)


def channel_id(value: int) -> Callable[[bytearray, str], bytes]:
    def fn(c: bytearray, d: str) -> bytes:
        c[24] = value
        return bytes(c)
    return fn


def packet_num_repeated(c: bytearray, d: str) -> bytes:
    pk = packets(bytes(c), d)
    i = next(k for k, p in enumerate(pk) if k and p[2].normal_pages)  # type: ignore[attr-defined]
    num = pk[i - 1][2].packet_num  # type: ignore[attr-defined]
    c[pk[i][0] + 24 : pk[i][0] + 32] = struct.pack(">Q", num)
    return bytes(c)


def next_packet_size_huge(c: bytearray, d: str) -> bytes:
    off = first_data_packet(bytes(c), d)[0]
    put32(c, off + 20, 0xFFFFFF00)
    return bytes(c)


def unknown_ramblock(c: bytearray, d: str) -> bytes:
    off = first_data_packet(bytes(c), d)[0]
    c[off + 64 : off + 320] = b"pc.ram.missing".ljust(256, b"\0")
    return bytes(c)


def offset_edit(delta_from: str) -> Callable[[bytearray, str], bytes]:
    def fn(c: bytearray, d: str) -> bytes:
        off = first_data_packet(bytes(c), d)[0]
        (o,) = struct.unpack_from(">Q", c, off + 320)
        new = o + 1 if delta_from == "unaligned" else RAM_SIZE
        c[off + 320 : off + 328] = struct.pack(">Q", new)
        return bytes(c)
    return fn


def truncated(c: bytearray, d: str) -> bytes:
    off, plen, _ = first_data_packet(bytes(c), d)
    return bytes(c[: off + HLEN + plen // 2])


def wrong_flags(c: bytearray, d: str) -> bytes:
    for off, _, pkt in packets(bytes(c), d):
        if pkt.normal_pages:  # type: ignore[attr-defined]
            flags = struct.unpack_from(">I", c, off + 8)[0]
            put32(c, off + 8, flags & 1)  # compression bit cleared: "none"
    return bytes(c)


def bomb(c: bytearray, d: str) -> bytes:
    """The channel's first data packet replaced by a zlib stream that inflates to 256 MiB,
    within the payload bound of a full packet: only an output-bounded inflate stops it early."""
    off, plen, _pkt = first_data_packet(bytes(c), d)
    z = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    parts = [z.compress(chunk) for _ in range(256)]
    payload = b"".join(parts) + z.flush(zlib.Z_SYNC_FLUSH)
    hdr = bytearray(c[off : off + HLEN])
    put32(hdr, 20, len(payload))
    return bytes(c[:off]) + bytes(hdr) + payload + bytes(c[off + HLEN + plen :])


def qatzip_bomb(c: bytearray, d: str) -> bytes:
    off, plen, _pkt = first_data_packet(bytes(c), d)
    payload = qzformat.compress(bytes(256 << 20), 9) if False else _gzip_bomb()
    hdr = bytearray(c[off : off + HLEN])
    put32(hdr, 20, len(payload))
    return bytes(c[:off]) + bytes(hdr) + payload + bytes(c[off + HLEN + plen :])


def _gzip_bomb() -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    return b"".join(z.compress(chunk) for _ in range(256)) + z.flush()


def zstd_bomb(c: bytearray, d: str) -> bytes:
    """The channel's first data packet (its first payload: the frame header starts it)
    replaced by a zstd stream of 256 MiB of zeros flushed at a block boundary, as QEMU's
    sender flushes: ~8 KiB on the wire, within a full packet's bound; only an output-bounded
    decoder stops it early."""
    import zstandard

    off, plen, _pkt = first_data_packet(bytes(c), d)
    z = zstandard.ZstdCompressor(level=3).compressobj()
    chunk = bytes(1 << 20)
    payload = b"".join(z.compress(chunk) for _ in range(256)) + z.flush(
        zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    hdr = bytearray(c[off : off + HLEN])
    put32(hdr, 20, len(payload))
    return bytes(c[:off]) + bytes(hdr) + payload + bytes(c[off + HLEN + plen :])


def qatzip_crc_flip(c: bytearray, d: str) -> bytes:
    off, plen, _pkt = first_data_packet(bytes(c), d)
    end = off + HLEN + plen
    c[end - 8] ^= 0x01  # the gzip member's CRC-32 (last 8 bytes: CRC-32, ISIZE)
    return bytes(c)


def idle_after_init(conns: list[bytes], d: str) -> list[bytes]:
    """Every channel opens and says hello, then the peer goes silent (nothing closes)."""
    out = []
    for c in conns:
        if is_main(c):
            out.append(c[:4 + 4])  # QEVM + version, then silence
        else:
            out.append(c[:64])
    return out


def main_truncated(conns: list[bytes], d: str) -> list[bytes]:
    """The main channel stops half-way (before the RAM section's end) and closes."""
    out = list(conns)
    for i, c in enumerate(out):
        if is_main(c):
            out[i] = c[: len(c) // 2]
    return out


def main_cut_before_end(conns: list[bytes], d: str) -> list[bytes]:
    """The main channel ends after the last MULTIFD_FLUSH: every page has arrived, but not the
    RAM section's EOS, its footer, nor EOF."""
    out = list(conns)
    for i, c in enumerate(out):
        if is_main(c):
            assert c[-22:-14] == struct.pack(">Q", 0x200), "no MULTIFD_FLUSH before the end"
            out[i] = c[:-14]
    return out


def channel_missing(conns: list[bytes], d: str) -> list[bytes]:
    """Only channel 0 of 2 connects; the main channel and channel 0 send everything."""
    i = multifd_index(conns, 1)
    return conns[:i] + conns[i + 1 :]


CASES: list[dict[str, object]] = [
    dict(name="bad-init-magic", method="zlib", dialect="qemu-9.2",
         mutate=on_channel(0, bad_init_magic),
         description="channel 0's init packet magic is 0x11223345"),
    dict(name="bad-packet-version", method="zlib", dialect="qemu-9.2",
         mutate=on_channel(None, bad_packet_version),
         description="a data packet says version 2"),
    dict(name="uuid-mismatch", method="zlib", dialect="qemu-9.2",
         mutate=on_channel(1, uuid_mismatch),
         description="channel 1's init packet carries another VM's uuid"),
    dict(name="channel-id-out-of-range", method="zlib", dialect="qemu-9.2",
         mutate=on_channel(1, channel_id(2)),
         description="channel 1 announces id 2 with multifd-channels 2 (QEMU's off-by-one lets "
                     "id == channels through its check)",
         qemu_lax="QEMU 7.2 only rejects ids greater than multifd-channels"),
    dict(name="duplicate-channel", method="zlib", dialect="qemu-9.2",
         mutate=on_channel(1, channel_id(0)),
         description="both multifd channels announce id 0"),
    dict(name="packet-num-repeated", method="zlib", dialect="qemu-9.2",
         mutate=on_channel(None, packet_num_repeated),
         description="a data packet repeats the packet_num of the packet before it",
         qemu_lax="QEMU never checks packet_num on receive"),
    dict(name="zlib-bomb", method="zlib", dialect="qemu-9.2", mutate=on_channel(None, bomb),
         description="a 128-page zlib payload that inflates to 256 MiB"),
    dict(name="qatzip-bomb", method="qatzip", dialect="qemu-9.2",
         mutate=on_channel(None, qatzip_bomb),
         description="a 128-page qatzip payload (gzip member) that inflates to 256 MiB"),
    dict(name="zstd-bomb", method="zstd", dialect="qemu-9.2", mutate=on_channel(None, zstd_bomb),
         description="a zstd payload within one packet's bound that decompresses to 256 MiB"),
    dict(name="qatzip-crc-flip", method="qatzip", dialect="qemu-9.2",
         mutate=on_channel(None, qatzip_crc_flip),
         description="one bit of a qatzip member's CRC-32 flipped"),
    dict(name="truncated-packet", method="zlib", dialect="qemu-9.2",
         mutate=on_channel(None, truncated),
         description="a multifd channel closes half-way through a payload"),
    dict(name="next-packet-size-huge", method="zlib", dialect="qemu-9.2",
         mutate=on_channel(None, next_packet_size_huge),
         description="a data packet announces next_packet_size 0xffffff00",
         qemu_lax="QEMU bounds next_packet_size only for qatzip (its 1 MiB buffer); zlib/zstd "
                  "read it into a buffer of that size"),
    dict(name="unknown-ramblock", method="zlib", dialect="qemu-9.2",
         mutate=on_channel(None, unknown_ramblock),
         description="a data packet names RAM block 'pc.ram.missing'"),
    dict(name="offset-beyond-block", method="none", dialect="qemu-9.2",
         mutate=on_channel(None, offset_edit("beyond")),
         description="a page offset equal to the block's length"),
    dict(name="offset-unaligned", method="none", dialect="qemu-9.2",
         mutate=on_channel(None, offset_edit("unaligned")),
         description="a page offset one byte past a page boundary (inside the block)",
         qemu_lax="QEMU accepts unaligned in-range offsets"),
    dict(name="flags-say-none", method="zlib", dialect="qemu-9.2",
         mutate=on_channel(None, wrong_flags),
         description="zlib payloads in packets flagged as uncompressed"),
    dict(name="main-channel-truncated", method="zlib", dialect="qemu-7.2", mutate=main_truncated,
         description="the main channel closes half-way through the RAM section"),
    dict(name="main-channel-cut-before-end", method="zlib", dialect="qemu-9.2",
         mutate=main_cut_before_end,
         description="the main channel closes after the last MULTIFD_FLUSH, before the RAM "
                     "section's EOS, footer and EOF"),
    dict(name="channel-missing", method="zlib", dialect="qemu-9.2", mutate=channel_missing,
         description="only 1 of 2 multifd channels ever connects", idle=True),
    dict(name="idle-peer", method="zlib", dialect="qemu-9.2", mutate=idle_after_init, idle=True,
         description="every channel says hello, then the peer stays connected and silent",
         qemu_lax="QEMU waits without a timeout for an idle source"),
]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    clean: dict[tuple[str, str], list[bytes]] = {}
    manifest: dict[str, object] = {
        "what": "broken migration sessions for the conformance suite; made by "
                "tools/record_bad_streams.py from reference sessions",
        "guest": {"size": RAM_SIZE, "ramblock": RAMBLOCK, "uuid": UUID},
        "cases": [],
    }
    for case in CASES:
        key = (str(case["method"]), str(case["dialect"]))
        if key not in clean:
            clean[key] = record(*key)
        conns = case["mutate"](clean[key], key[1])  # type: ignore[operator]
        if conns == clean[key]:
            raise SystemExit(f"{case['name']}: the mutation changed nothing")
        fname = f"{case['name']}.bin.gz"
        (OUT / fname).write_bytes(gzip.compress(b"".join(conns), 9, mtime=0))
        manifest["cases"].append({  # type: ignore[union-attr]
            "name": case["name"], "description": case["description"], "method": key[0],
            "dialect": key[1], "channels": CHANNELS, "uuid": UUID, "ram_size": RAM_SIZE,
            "ramblock": RAMBLOCK, "qemu_lax": case.get("qemu_lax"),
            "idle": bool(case.get("idle")), "file": fname,
            "lengths": [len(c) for c in conns],
        })
        print(f"{case['name']}: {len(conns)} connections, {sum(map(len, conns))} bytes",
              file=sys.stderr)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
