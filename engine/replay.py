"""Recorded migration sessions: record the engine's own source, replay bytes into a destination.

A *session* is one migration as the destination saw it: each connection's source -> destination
bytes, in accept order (the main channel is the connection starting with QEVM; QEMU 7.2
sources open it first, 8.0+ sources usually after their multifd channels). Sessions are
recorded through the tap (:class:`~qatmig_engine.tap.TapProxy`, which also checks them),
stored xz-compressed under ``fixtures/sessions/<dialect>/<method>/`` with a ``manifest.json``,
and replayed over real sockets - unchanged (regression) or mutated (fuzzing, strictness tests).

:func:`multifd_packets` walks a multifd connection's bytes so a test can aim a mutation at one
packet field (duplicate a packet, shift an offset) instead of flipping bytes blindly.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .constants import MULTIFD_INIT_PACKET_SIZE, MULTIFD_PACKET_FIXED_SIZE, TARGET_PAGE_SIZE
from .errors import CorpusError
from .wire import packet_len

SESSIONS_SUBDIR = "sessions"
#: Sessions shipped in fixtures/sessions: every method the engine speaks without hardware, in
#: every dialect it speaks.
SESSION_METHODS = ("none", "zlib", "zstd", "qatzip", "qpl", "uadk")
SESSION_DIALECTS = ("qemu-7.2", "qemu-9.0", "qemu-9.2", "qemu-10.0")
SESSION_GUEST_BYTES = 512 << 10
SESSION_CHANNELS = 2
#: Page mix of the recorded guest (zero, text, random, sparse %; qemu.image.build_image): few
#: random pages keep the xz-compressed fixtures small while every page kind occurs.
SESSION_MIX = (30, 50, 3, 17)


@dataclass(frozen=True)
class PacketSpan:
    """Where one MultiFDPacket_t sits in a multifd connection's bytes."""

    offset: int  # of the header
    header_len: int
    payload_len: int
    packet_num: int
    flags: int
    normal_pages: int
    zero_pages: int

    @property
    def end(self) -> int:
        return self.offset + self.header_len + self.payload_len

    @property
    def offsets_at(self) -> int:
        """Byte position of the first page offset slot."""
        return self.offset + MULTIFD_PACKET_FIXED_SIZE


def multifd_packets(blob: bytes, *, page_size: int = TARGET_PAGE_SIZE,
                    has_zero_pages: bool = True) -> list[PacketSpan]:
    """The packets of one multifd connection (after its 64-byte init packet)."""
    hl = packet_len(page_size)
    out = []
    pos = MULTIFD_INIT_PACKET_SIZE
    while pos + hl <= len(blob):
        flags, _alloc, normal, nps, num, zero = struct.unpack_from(">IIIIQI", blob, pos + 8)
        zero = zero if has_zero_pages else 0
        payload = nps if normal else 0
        if normal + zero > (hl - MULTIFD_PACKET_FIXED_SIZE) // 8 or pos + hl + payload > len(blob):
            break  # not a packet QEMU could send (a mutated header): stop walking here
        out.append(PacketSpan(pos, hl, payload, num, flags, normal, zero))
        pos += hl + payload
    return out


# ------------------------------------------------------------------------------ storage
def sessions_dir() -> Path:
    """``fixtures/sessions`` inside the ``qatmig_fixtures`` package data."""
    import qatmig_fixtures

    for base in list(getattr(qatmig_fixtures, "__path__", [])):
        p = Path(base) / SESSIONS_SUBDIR
        if (p / "manifest.json").is_file():
            return p
    raise CorpusError(f"qatmig_fixtures/{SESSIONS_SUBDIR}/manifest.json not found (run "
                      "tools/record_sessions.py, or reinstall the package)")


def load_sessions_manifest(base: Path | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(((base or sessions_dir()) / "manifest.json").read_text())
    return data


def session_entry(dialect: str, method: str, manifest: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    m = manifest or load_sessions_manifest()
    for s in m["sessions"]:
        if s["dialect"] == dialect and s["multifd_compression"] == method:
            return dict(s)
    raise CorpusError(f"no recorded session for {dialect} / {method}")


def load_session(dialect: str, method: str, base: Path | None = None) -> list[bytes]:
    """A recorded session's connections (accept order), each checked by sha256."""
    base = base or sessions_dir()
    entry = session_entry(dialect, method, load_sessions_manifest(base))
    out = []
    for conn in sorted(entry["connections"], key=lambda c: c["connection"]):
        raw = lzma.decompress((base / conn["file"]).read_bytes())
        if hashlib.sha256(raw).hexdigest() != conn["sha256"]:
            raise CorpusError(f"{conn['file']}: sha256 differs from manifest.json")
        out.append(raw)
    return out


# ------------------------------------------------------------------------------ replay
class Replay:
    """Replay ``blobs`` into ``address``: one connection each, in order, pumped by threads.

    Connecting stops at the first refused connection (a destination that already failed).
    Use as a context manager; :meth:`close` joins the pumps and closes the sockets.
    """

    def __init__(self, address: tuple[str, int], blobs: Sequence[bytes], *,
                 chunk: int = 65536, timeout: float = 10.0) -> None:
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        for blob in blobs:
            try:
                s = socket.create_connection(address, timeout=timeout)
            except OSError:
                break
            self.socks.append(s)
            t = threading.Thread(target=self._pump, args=(s, blob, chunk), daemon=True,
                                 name="qatmig-replay")
            self.threads.append(t)
        for t in self.threads:
            t.start()

    @staticmethod
    def _pump(s: socket.socket, data: bytes, chunk: int) -> None:
        try:
            for i in range(0, len(data), chunk):
                s.sendall(data[i:i + chunk])
            s.shutdown(socket.SHUT_WR)
            # Wait for the destination to close (or reset) so the bytes are all read.
            while s.recv(65536):
                pass
        except OSError:
            pass

    def close(self, timeout: float = 10.0) -> None:
        for t in self.threads:
            t.join(timeout)
        for s in self.socks:
            s.close()

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ record
def record_session(method: str, dialect: str, *, size: int = SESSION_GUEST_BYTES,
                   channels: int = SESSION_CHANNELS, seed: int = 13,
                   work: Path) -> tuple[list[bytes], str]:
    """Migrate a deterministic guest with the engine's source through the tap into the
    engine's destination; returns the recorded connections and the guest's sha256.

    Raises CorpusError when the tap finds a deviation or the migration does not complete.
    """
    from .api import send
    from .destination import Destination
    from .guest import GuestMemory, RAMBlock
    from .params import MigrationParameters
    from .qemu.image import build_image
    from .tap import TapChecker, TapProxy

    params = MigrationParameters(multifd_compression=method, dialect=dialect,
                                 multifd_channels=channels)
    src = GuestMemory([RAMBlock.anonymous("pc.ram", size)])
    src.blocks[0].view[:] = build_image(size, seed, SESSION_MIX)
    dst_guest = GuestMemory([RAMBlock.anonymous("pc.ram", size)])
    dst = Destination(dst_guest, params, ramblock="pc.ram", timeout=20)
    rec = work / f"rec-{dialect}-{method}"
    tap = TapProxy(("127.0.0.1", 0), dst.address,
                   TapChecker(channels=channels, method=method, dialect=dialect), timeout=30,
                   record_dir=rec)
    port = tap.start()
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(st=dst.run()), daemon=True)
    t.start()
    st = send("127.0.0.1", port, params=params, guest=src, timeout=20)
    t.join(60)
    report = tap.wait(60)
    dst_st = result.get("st")
    try:
        if st.status != "completed" or dst_st is None or dst_st.status != "completed":
            raise CorpusError(f"{dialect}/{method}: recording migration failed: {st.error} / "
                              f"{getattr(dst_st, 'error', 'no result')}")
        if not report.ok:
            raise CorpusError(f"{dialect}/{method}: the tap found deviations")
        digest = src.blocks[0].digest()
        if dst_guest.blocks[0].digest() != digest:
            raise CorpusError(f"{dialect}/{method}: destination RAM differs")
        blobs = [(rec / f"conn-{i}.bin").read_bytes() for i in range(len(report.channels))]
    finally:
        src.close()
        dst_guest.close()
    return blobs, digest
