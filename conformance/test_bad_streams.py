"""Conformance: broken sessions fed to the implementation's destination over real sockets.

The corpus (``qatmig_fixtures/badstreams``, see :mod:`qatmig_conformance.badstreams`) holds
sessions made by the reference source and broken in one place: bad magic or version, another
VM's uuid, channel ids out of range or used twice, a repeated packet_num, bombs, truncation, a
huge next_packet_size, an unknown RAM block, bad offsets, the wrong compression flag, a missing
channel, an idle peer. Every one must end the destination ``failed`` (never ``completed``) within
its idle timeout plus a margin, and the bombs must not make it allocate more than a bounded amount
(measured: the destination's peak resident memory, not its verdict).

Cases real QEMU accepts (``qemu_lax`` in the corpus) run in ``test_strict_...``: a failure there
is a STRICT finding (QEMU behaves the same), reported as such.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from qatmig_conformance.badstreams import BadSession, Replay, case_names, load_corpus

from pytest_qatmig.adapters import PairSpec

#: The destination's idle timeout for the cases that end in silence (an idle peer, a channel
#: that never connects): seconds of silence before it gives up, and the margin after that.
IDLE_TIMEOUT = 3.0
MARGIN = 12.0
#: Every other case carries its defect in bytes the destination receives: it must fail on
#: them, not wait out an idle timeout (given as LONG_TIMEOUT, far above PROMPT).
LONG_TIMEOUT = 60.0
PROMPT = 15.0
#: Growth of the destination's peak resident memory a bomb may cause: far below what the bombs
#: inflate to (256 MiB), far above one packet (512 KiB) and its receive buffers.
BOMB_MEMORY_BOUND = 64 << 20

_CORPUS: dict[str, BadSession] = {}


def _case(name: str) -> BadSession:
    if not _CORPUS:
        _CORPUS.update((c.name, c) for c in load_corpus())
    return _CORPUS[name]


def _lax(name: str) -> bool:
    return _case(name).strict


NAMES = case_names()
STRICT = [n for n in NAMES if _lax(n)]
PLAIN = [n for n in NAMES if not _lax(n)]


# ------------------------------------------------------------------------------ memory
def _vm_hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak resident memory of the process running the destination, from now on.

    A destination in another process (exec:, qemu:) is sampled through ``/proc/PID`` until the
    replay ends; one in this process has its peak reset first (``/proc/self/clear_refs``).
    """

    def __init__(self, incoming: Any) -> None:
        proc = getattr(getattr(incoming, "proc", None), "popen", None)
        self.pid = proc.pid if proc is not None else os.getpid()
        if self.pid == os.getpid():
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        self.start = _vm_hwm(self.pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._sample, daemon=True, name="qatmig-peak-rss")
        self._t.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            v = _vm_hwm(self.pid)
            if v is None:
                return
            self.peak = max(self.peak or 0, v)

    def stop(self) -> int | None:
        """Growth of the peak since the start (None where /proc is not readable)."""
        self._stop.set()
        self._t.join(2)
        v = _vm_hwm(self.pid)
        if v is not None:
            self.peak = max(self.peak or 0, v)
        if self.start is None or self.peak is None:
            return None
        return self.peak - self.start


# ------------------------------------------------------------------------------ replay
def _replay(impl: Any, case: BadSession, tmp: Path, device: Any) -> tuple[dict[str, Any],
                                                                           float, int | None]:
    from pytest_qatmig.roles import RoleContext, has_roles

    if not has_roles(impl):
        pytest.skip(f"UNIMPLEMENTED: {impl.name} has no destination role (docs/plugin.md)")
    caps = frozenset(impl.capabilities())
    for need in (case.method, f"dialect:{case.dialect}"):
        if need not in caps:
            pytest.skip(f"UNIMPLEMENTED: {impl.name} lacks {need}")
    ram = tmp / "dst.ram"
    with open(ram, "wb") as f:
        f.truncate(case.ram_size)
    wd = tmp / "dst"
    wd.mkdir()
    spec = PairSpec(channels=case.channels, compression=case.method, dialect=case.dialect)
    timeout = IDLE_TIMEOUT if case.idle else LONG_TIMEOUT
    ctx = RoleContext(ram=ram, ram_size=case.ram_size, uuid=case.uuid, workdir=wd,
                      timeout=timeout, device=device, ramblock=case.ramblock)
    incoming = impl.destination(spec, ctx)
    replay = None
    try:
        mt = getattr(incoming, "machine_type", None)
        if mt and mt != "pc-i440fx-7.2":
            pytest.skip(f"UNIMPLEMENTED: this destination wants machine type {mt}; the corpus "
                        "announces pc-i440fx-7.2")
        mem = PeakMemory(incoming)
        t0 = time.monotonic()
        replay = Replay(tuple(incoming.address), case.connections, idle=case.idle)
        result = dict(incoming.wait(IDLE_TIMEOUT + MARGIN if case.idle else PROMPT + 2))
        elapsed = time.monotonic() - t0
        grown = mem.stop()
    finally:
        if replay is not None:
            replay.close()
        incoming.close()
    return result, elapsed, grown


def _judge(case: BadSession, result: dict[str, Any], elapsed: float, grown: int | None,
           prefix: str = "") -> None:
    status = result.get("status")
    assert status != "completed", (
        f"{prefix}the destination reported completed for a broken session ({case.name}: "
        f"{case.description})")
    assert status == "failed", f"{prefix}status {status!r}, expected failed ({case.name})"
    assert result.get("error"), f"{prefix}failed without saying why ({case.name})"
    if case.idle:
        bound, why = IDLE_TIMEOUT + MARGIN, f"idle timeout {IDLE_TIMEOUT:g} s + {MARGIN:g} s"
    else:
        bound, why = PROMPT, (f"the defect is in the bytes it received; its idle timeout was "
                              f"{LONG_TIMEOUT:g} s")
    assert elapsed <= bound, (
        f"{prefix}the destination took {elapsed:.1f} s to give up on {case.name} ({why}): "
        f"{result.get('error')}")
    if "bomb" in case.name and grown is not None:
        assert grown <= BOMB_MEMORY_BOUND, (
            f"{prefix}the destination's peak memory grew by {grown >> 20} MiB on "
            f"{case.description}: it inflated the bomb instead of stopping at the packet's "
            f"size (bound {BOMB_MEMORY_BOUND >> 20} MiB)")


@pytest.mark.parametrize("name", PLAIN)
def test_bad_session_is_refused(qatmig_impl, qat_device, tmp_path, name) -> None:  # type: ignore[no-untyped-def]
    case = _case(name)
    result, elapsed, grown = _replay(qatmig_impl, case, tmp_path, qat_device)
    _judge(case, result, elapsed, grown)


@pytest.mark.parametrize("name", STRICT)
def test_strict_bad_session_is_refused(qatmig_impl, qat_device, tmp_path, name) -> None:  # type: ignore[no-untyped-def]
    case = _case(name)
    result, elapsed, grown = _replay(qatmig_impl, case, tmp_path, qat_device)
    _judge(case, result, elapsed, grown,
           prefix=f"STRICT (QEMU does the same: {case.qemu_lax}): ")


def test_the_corpus_is_what_the_suite_expects() -> None:
    cases = load_corpus()
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    expected = {"bad-init-magic", "bad-packet-version", "uuid-mismatch", "channel-id-out-of-range",
                "duplicate-channel", "packet-num-repeated", "zlib-bomb", "zstd-bomb", "qatzip-bomb",
                "truncated-packet", "next-packet-size-huge", "unknown-ramblock",
                "offset-unaligned", "offset-beyond-block", "idle-peer"}
    assert expected <= set(names), sorted(expected - set(names))
    for c in cases:
        assert c.connections and all(c.connections), c.name
