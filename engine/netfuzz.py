"""Network fuzzing of the destination: recorded sessions replayed mutated over real sockets.

Every case takes one recorded session (``fixtures/sessions``: every method and dialect; and
QEMU 7.2's golden captures), applies one or two mutations aimed at the wire's structure (bit
flips in headers or payloads, a packet repeated, dropped or swapped, an offset moved, a
packet_num changed, a connection cut short or reset, bytes inserted, the connection order
changed), replays it into a destination and classifies what happened:

``failed``            a typed error (the expected outcome for most mutations);
``completed-ok``      completed with the session's RAM (the mutation changed nothing that
                      matters, e.g. a stale field);
``completed-wrong-undetectable``  completed with other RAM after a case with a mutation in bytes
                      no check covers (raw page data, or compressed data of a method without a
                      checksum: zlib/zstd sync-flushed streams, qpl, uadk; page bytes on the
                      main channel);
``completed-wrong``   completed with other RAM after a mutation the wire can reveal: a bug;
``internal-error``    the destination failed with an untyped exception (a traceback): a bug;
``hang``              no result within the timeout plus a grace period: a bug;
``crash``             (subprocess cases) a signal or an exit status other than 0/1: a bug.

:func:`run_case` drives the engine's :class:`~qatmig_engine.destination.Destination` in this
process (fast); :func:`run_case_listen` starts a real ``qatmig listen`` subprocess (what users
run: catches crashes at exit and tracebacks on stderr).
"""

from __future__ import annotations

import os
import random
import resource
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .constants import MULTIFD_INIT_PACKET_SIZE
from .errors import PeerTimeout
from .pipes import read_line
from .replay import PacketSpan, Replay, multifd_packets

BUGS = ("completed-wrong", "internal-error", "hang", "crash")
OUTCOMES = ("failed", "completed-ok", "completed-wrong-undetectable", *BUGS)
#: Methods whose payload carries an integrity check (qatzip: CRC-32 + ISIZE per member).
CHECKED_PAYLOAD = frozenset({"qatzip"})
#: Seconds a ``qatmig listen`` child may take to start and announce its address.
LISTEN_START_TIMEOUT = 30.0


@dataclass
class Session:
    """One recorded migration: its connections and what the destination must end with."""

    name: str
    dialect: str
    method: str
    blobs: list[bytes]
    ram_bytes: int
    ramblock: str
    digest: str  # sha256 of the ramblock's RAM after a correct migration

    @property
    def channels(self) -> int:
        return sum(1 for b in self.blobs if b[:4] == b"\x11\x22\x33\x44")


@dataclass
class Case:
    seed: int
    session: str
    mutations: list[str] = field(default_factory=list)
    #: True when a mutation changed bytes no check covers (see module docs): wrong RAM after
    #: such a case cannot be blamed on the destination.
    undetectable_only: bool = False
    blobs: list[bytes] = field(default_factory=list)


@dataclass
class Result:
    case: Case
    outcome: str
    seconds: float
    error: str = ""


def load_sessions() -> list[Session]:
    """Every recorded session of fixtures/sessions and the QEMU 7.2 golden captures."""
    from .qemu.golden import capture_entry, load_connections, load_manifest
    from .replay import load_session, load_sessions_manifest

    out = []
    m = load_sessions_manifest()
    guest = m["guest"]
    for s in m["sessions"]:
        out.append(Session(f"{s['dialect']}/{s['multifd_compression']}", s["dialect"],
                           s["multifd_compression"],
                           load_session(s["dialect"], s["multifd_compression"]),
                           guest["bytes"], guest["ramblock"], s["guest_sha256"]))
    g = load_manifest()
    for method in ("none", "zlib", "zstd"):
        capture_entry(method, g)
        out.append(Session(f"qemu-7.2-golden/{method}", "qemu-7.2", method,
                           load_connections(method, g), g["ram"]["size"], g["ramblock"],
                           g["ram"]["sha256"]))
    return out


# ------------------------------------------------------------------------------ mutations
def _multifd(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[int, list[PacketSpan]]:
    idx = [i for i, b in enumerate(blobs) if b[:4] == b"\x11\x22\x33\x44"]
    i = rng.choice(idx)
    return i, multifd_packets(blobs[i], has_zero_pages=sess.dialect != "qemu-7.2")


def _payload_ranges(pk: list[PacketSpan]) -> list[tuple[int, int]]:
    return [(p.offset + p.header_len, p.end) for p in pk if p.payload_len]


def mutate(sess: Session, rng: random.Random) -> Case:
    """One case: 1-2 mutations of ``sess`` chosen by ``rng``."""
    blobs = list(sess.blobs)
    case = Case(seed=0, session=sess.name)
    for _ in range(rng.choice((1, 1, 1, 2))):
        op = rng.choice(_OPS)
        name, undetectable = op(sess, blobs, rng)
        case.mutations.append(name)
        case.undetectable_only = case.undetectable_only or undetectable
    case.blobs = blobs
    return case


def _flip_payload(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    i, pk = _multifd(sess, blobs, rng)
    ranges = _payload_ranges(pk)
    if not ranges:
        return _flip_header(sess, blobs, rng)
    a, b = rng.choice(ranges)
    buf = bytearray(blobs[i])
    for _ in range(rng.randint(1, 4)):
        buf[rng.randrange(a, b)] ^= 1 << rng.randrange(8)
    blobs[i] = bytes(buf)
    return "flip-payload", sess.method not in CHECKED_PAYLOAD


_HEADER_FIELDS = {"magic": (0, 4), "version": (4, 4), "flags": (8, 4), "pages_alloc": (12, 4),
                  "normal_pages": (16, 4), "next_packet_size": (20, 4), "packet_num": (24, 8),
                  "zero_pages": (32, 4), "reserved": (36, 28), "ramblock": (64, 256)}


def _flip_header(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    i, pk = _multifd(sess, blobs, rng)
    if not pk:
        return _truncate(sess, blobs, rng)
    p = rng.choice(pk)
    fld = rng.choice([*_HEADER_FIELDS, "offset"])
    if fld == "offset":
        n = max(p.normal_pages + p.zero_pages, 1)
        at = p.offsets_at + 8 * rng.randrange(n) + rng.randrange(8)
    else:
        off, ln = _HEADER_FIELDS[fld]
        at = p.offset + off + rng.randrange(ln)
    buf = bytearray(blobs[i])
    buf[at] ^= 1 << rng.randrange(8)
    blobs[i] = bytes(buf)
    return f"flip-header-{fld}", False


def _flip_init(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    i, _ = _multifd(sess, blobs, rng)
    buf = bytearray(blobs[i])
    buf[rng.randrange(MULTIFD_INIT_PACKET_SIZE)] ^= 1 << rng.randrange(8)
    blobs[i] = bytes(buf)
    return "flip-init", False


def _flip_main(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    i = next((k for k, b in enumerate(blobs) if b[:4] == b"QEVM"), 0)
    buf = bytearray(blobs[i])
    buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    blobs[i] = bytes(buf)
    # A flip may land in a page's data or a zero page's fill byte, which nothing checks.
    return "flip-main", True


def _repeat_packet(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    i, pk = _multifd(sess, blobs, rng)
    if not pk:
        return _truncate(sess, blobs, rng)
    p = rng.choice(pk)
    b = blobs[i]
    blobs[i] = b[:p.end] + b[p.offset:p.end] + b[p.end:]
    return "repeat-packet", False


def _drop_packet(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    i, pk = _multifd(sess, blobs, rng)
    if not pk:
        return _truncate(sess, blobs, rng)
    p = rng.choice(pk)
    b = blobs[i]
    blobs[i] = b[:p.offset] + b[p.end:]
    return "drop-packet", False


def _swap_packets(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    i, pk = _multifd(sess, blobs, rng)
    if len(pk) < 2:
        return _repeat_packet(sess, blobs, rng)
    k = rng.randrange(len(pk) - 1)
    p, q = pk[k], pk[k + 1]
    b = blobs[i]
    blobs[i] = b[:p.offset] + b[q.offset:q.end] + b[p.offset:p.end] + b[q.end:]
    return "swap-packets", False


def _move_offset(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    i, pk = _multifd(sess, blobs, rng)
    data = [p for p in pk if p.normal_pages + p.zero_pages]
    if not data:
        return _flip_header(sess, blobs, rng)
    p = rng.choice(data)
    buf = bytearray(blobs[i])
    at = p.offsets_at + 8 * rng.randrange(p.normal_pages + p.zero_pages)
    (off,) = struct.unpack_from(">Q", buf, at)
    delta = rng.choice((4096, -4096, 8, 1 << 20, 4096 * rng.randrange(1, 64)))
    struct.pack_into(">Q", buf, at, max(off + delta, 0))
    blobs[i] = bytes(buf)
    return "move-offset", False


def _packet_num(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    i, pk = _multifd(sess, blobs, rng)
    if not pk:
        return _truncate(sess, blobs, rng)
    p = rng.choice(pk)
    buf = bytearray(blobs[i])
    struct.pack_into(">Q", buf, p.offset + 24, rng.choice((0, p.packet_num - 1,
                                                           p.packet_num + 1, 2**64 - 1)) % 2**64)
    blobs[i] = bytes(buf)
    return "packet-num", False


def _truncate(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    i = rng.randrange(len(blobs))
    blobs[i] = blobs[i][:rng.randrange(len(blobs[i]) + 1)]
    return "truncate", False


def _insert(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    i = rng.randrange(len(blobs))
    b = blobs[i]
    at = rng.randrange(len(b) + 1)
    blobs[i] = b[:at] + rng.randbytes(rng.randint(1, 64)) + b[at:]
    return "insert-bytes", False


def _reorder(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    rng.shuffle(blobs)
    return "reorder-connections", False


def _drop_connection(sess: Session, blobs: list[bytes], rng: random.Random) -> tuple[str, bool]:
    del blobs[rng.randrange(len(blobs))]
    return "drop-connection", False


_OPS: list[Callable[[Session, list[bytes], random.Random], tuple[str, bool]]] = [
    _flip_payload, _flip_payload, _flip_header, _flip_header, _flip_init, _flip_main,
    _repeat_packet, _drop_packet, _swap_packets, _move_offset, _packet_num, _truncate,
    _insert, _reorder, _drop_connection,
]


def make_case(sessions: list[Session], seed: int) -> tuple[Session, Case]:
    rng = random.Random(seed)
    sess = rng.choice(sessions)
    case = mutate(sess, rng)
    case.seed = seed
    return sess, case


# ------------------------------------------------------------------------------ running
def _classify(sess: Session, case: Case, status: str, digest: str | None, error: str) -> str:
    if status != "completed":
        return "internal-error" if "internal error" in error else "failed"
    if digest == sess.digest:
        return "completed-ok"
    return "completed-wrong-undetectable" if case.undetectable_only else "completed-wrong"


def run_case(sess: Session, case: Case, *, timeout: float = 2.0) -> Result:
    """Replay ``case`` into an in-process Destination over real sockets."""
    from .destination import Destination
    from .guest import GuestMemory, RAMBlock
    from .params import MigrationParameters

    t0 = time.monotonic()
    guest = GuestMemory([RAMBlock.anonymous(sess.ramblock, sess.ram_bytes)])
    params = MigrationParameters(multifd_compression=sess.method, dialect=sess.dialect,
                                 multifd_channels=sess.channels)
    try:
        dst = Destination(guest, params, ramblock=sess.ramblock, timeout=timeout)
        with Replay(dst.address, case.blobs, timeout=timeout):
            st = dst.run()
        digest = guest.block(sess.ramblock).digest() if st.status == "completed" else None  # type: ignore[union-attr]
        outcome = _classify(sess, case, st.status, digest, st.error or "")
        err = st.error or ""
    finally:
        guest.close()
    secs = time.monotonic() - t0
    if secs > timeout * 4 + 10:
        outcome = "hang"
    return Result(case, outcome, secs, err)


def run_case_listen(sess: Session, case: Case, work: Path, *, timeout: float = 2.0) -> Result:
    """Replay ``case`` into a real ``qatmig listen`` subprocess (crashes and tracebacks)."""
    img = work / "fuzz-dst.img"
    cmd = [sys.executable, "-c", "import sys; from qatmig_engine.cli import main; "
           "sys.exit(main())", "listen", "--listen", "127.0.0.1:0", "--guest-image", str(img),
           "--guest-size", str(sess.ram_bytes), "--ramblock", sess.ramblock, "--dialect",
           sess.dialect, "--multifd-compression", sess.method, "--multifd-channels",
           str(sess.channels), "--timeout", str(timeout), "--quiet", "--json"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = ""
    try:
        assert proc.stderr is not None
        try:
            line = read_line(proc.stderr, LISTEN_START_TIMEOUT, "qatmig listen (its address)")
        except PeerTimeout as exc:
            return Result(case, "hang", time.monotonic() - t0, str(exc))
        try:
            port = int(line.strip().rsplit(":", 1)[1])
        except (IndexError, ValueError):
            out, rest = proc.communicate(timeout=30)
            return Result(case, "internal-error", time.monotonic() - t0, line + rest)
        with Replay(("127.0.0.1", port), case.blobs, timeout=timeout):
            try:
                out, err = proc.communicate(timeout=timeout * 4 + 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                return Result(case, "hang", time.monotonic() - t0, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    secs = time.monotonic() - t0
    rc = proc.returncode
    if rc not in (0, 1):
        return Result(case, "crash", secs, f"exit status {rc}: {err[-500:]}")
    if "Traceback" in err or "Exception" in err or len(err.strip().splitlines()) > 2:
        return Result(case, "internal-error", secs, err[-1000:])
    import json

    status, digest = "failed", None
    try:
        j = json.loads(out)
        status = j.get("status", "failed")
        digest = j.get("destination_digest")
    except ValueError:
        pass
    if status == "completed" and digest is None:
        import hashlib

        digest = hashlib.sha256(img.read_bytes()).hexdigest()
    outcome = _classify(sess, case, status, digest, err)
    return Result(case, outcome, secs, err.strip())


def peak_rss_mib() -> float:
    """This process's peak RSS (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def summarize(results: list[Result]) -> dict[str, Any]:
    counts = {o: 0 for o in OUTCOMES}
    by_mut: dict[str, dict[str, int]] = {}
    for r in results:
        counts[r.outcome] += 1
        for m in r.case.mutations:
            row = by_mut.setdefault(m, {o: 0 for o in OUTCOMES})
            row[r.outcome] += 1
    return {"cases": len(results), "outcomes": counts, "by_mutation": by_mut,
            "bugs": [{"seed": r.case.seed, "session": r.case.session,
                      "mutations": r.case.mutations, "outcome": r.outcome,
                      "error": r.error[:300]} for r in results if r.outcome in BUGS],
            "max_case_seconds": round(max((r.seconds for r in results), default=0.0), 2),
            "pid": os.getpid()}
