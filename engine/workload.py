"""A guest workload: a thread that dirties pages at a configured rate while migration runs.

It stands in for vCPUs writing to RAM. Each write changes 8 bytes of a page (a running
counter at a rotating position, so content stays compressible) and then sets the page's dirty
bit, so a concurrent bitmap sync either sees the bit or reads the page after the write.
``pause()`` stops the guest (QEMU's ``vm_stop`` before the final stage): it returns once no
write is in progress, which is when downtime starts.
"""

from __future__ import annotations

import random
import threading
import time

from .errors import ParameterError
from .guest import GuestMemory, RAMBlock

PATTERNS = ("random", "sequential")

#: Writes are issued in batches every TICK seconds (a 100 Hz "vCPU").
TICK = 0.01


class Workload:
    """Dirty ``rate`` pages/s of ``block`` (default: the guest's first block).

    ``pattern``: ``random`` (uniform over the block) or ``sequential`` (a hot set of
    ``hot_pages`` pages written round and round, like guestperf's stress loop over its share).
    """

    def __init__(
        self,
        guest: GuestMemory,
        rate: int,
        *,
        pattern: str = "random",
        hot_pages: int | None = None,
        block: str | None = None,
        seed: int = 1,
    ) -> None:
        if rate < 0:
            raise ParameterError("--dirty-rate must be >= 0 pages/s")
        if pattern not in PATTERNS:
            raise ParameterError(f"dirty pattern must be one of {', '.join(PATTERNS)}")
        blk = guest.blocks[0] if block is None else guest.block(block)
        if blk is None:
            raise ParameterError(f"no RAM block named {block!r}")
        if not blk.writable:
            raise ParameterError(f"RAM block {blk.name!r} is mapped read-only: no workload")
        self.block: RAMBlock = blk
        self.rate = rate
        self.pattern = pattern
        self.hot_pages = max(1, min(hot_pages or blk.pages, blk.pages))
        self._rng = random.Random(seed)
        self._counter = 0
        self._cursor = 0
        self._stop = threading.Event()
        self._running = threading.Event()  # cleared while paused
        self._idle = threading.Lock()  # held while a batch is being written
        self._thread: threading.Thread | None = None
        self.pages_written = 0
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        if self.rate == 0 or self._thread is not None:
            return
        self._running.set()
        self._thread = threading.Thread(target=self._run, name="qatmig-workload", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Stop the guest: no write is in progress when this returns."""
        self._running.clear()
        with self._idle:
            pass

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ------------------------------------------------------------------ the vCPU
    def _pick(self, n: int) -> list[int]:
        if self.pattern == "random":
            hi = self.hot_pages - 1
            r = self._rng.randint
            return [r(0, hi) for _ in range(n)]
        out = []
        c = self._cursor
        for _ in range(n):
            out.append(c)
            c += 1
            if c >= self.hot_pages:
                c = 0
        self._cursor = c
        return out

    def _run(self) -> None:
        blk = self.block
        view = blk.view
        ps = blk.page_size
        # A vCPU runs from the start: the first batch is due at once, not one tick later
        # (a small guest may finish its bulk round within a tick).
        owed = max(1.0, self.rate * TICK)
        last = time.monotonic()
        try:
            while not self._stop.is_set():
                self._running.wait()
                if self._stop.is_set():
                    break
                with self._idle:
                    if not self._running.is_set():
                        continue
                    now = time.monotonic()
                    owed += (now - last) * self.rate
                    last = now
                    n = int(owed)
                    owed -= n
                    if n:
                        pages = self._pick(n)
                        for p in pages:
                            self._counter += 1
                            pos = p * ps + (self._counter * 8) % ps
                            view[pos : pos + 8] = self._counter.to_bytes(8, "little")
                        blk.mark_dirty_many(pages)
                        self.pages_written += n
                time.sleep(TICK)
                if not self._running.is_set():
                    # Time spent paused is not owed when we resume.
                    last = time.monotonic()
        except BaseException as exc:  # pragma: no cover - reported by the caller
            self.error = exc
