"""max-bandwidth: a token bucket over the bytes put on the wire (all channels, headers included).

QEMU enforces ``max-bandwidth`` in 100 ms windows (``BUFFER_DELAY``) with a budget of
limit/10 per window. Here the bucket refills continuously at ``rate`` bytes/s and holds at most
one window's budget (``rate * 0.1``), and it starts empty, so the long-run rate measured from the
start never exceeds the limit by more than one packet; a sender that overdraws sleeps off its
debt. ``rate == 0`` means unlimited (no locking, no sleeping).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: QEMU's BUFFER_DELAY: the rate-limit window, seconds.
BUFFER_DELAY = 0.1


class RateLimiter:
    """Shared by every sender thread of one migration."""

    def __init__(
        self, rate: int, *, cancel: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        """``clock`` and ``sleep`` (default: ``cancel.wait``) are replaceable so the pacing
        can be checked against a clock the caller controls."""
        self.rate = int(rate)
        self._cancel = cancel or threading.Event()
        self._clock = clock
        self._sleep = sleep if sleep is not None else self._cancel.wait
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._last = clock()
        self._cap = self.rate * BUFFER_DELAY
        self.total = 0

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def consume(self, nbytes: int) -> None:
        """Account ``nbytes`` about to be sent; sleep while over budget (wakes on cancel)."""
        if self.rate == 0:
            self.total += nbytes
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(self._cap, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= nbytes
            self.total += nbytes
            debt = -self._tokens
        if debt > 0:
            self._sleep(debt / self.rate)
