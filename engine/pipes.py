"""Waiting on a child process's pipe with a deadline: like a socket, a pipe wait needs a timeout.

``proc.stdout.readline()`` blocks for as long as the child stays silent; :func:`read_line`
gives up after ``timeout`` seconds with a :class:`~qatmig_engine.errors.PeerTimeout` instead.
"""

from __future__ import annotations

import os
import select
import time
from typing import IO, Any

from .errors import PeerTimeout


def read_line(stream: IO[Any], timeout: float, what: str) -> str:
    """The first line a child writes on ``stream`` (its stdout or stderr pipe), within
    ``timeout`` seconds; ``""`` or a partial line when the pipe ends first.

    Reads the pipe's file descriptor a byte at a time, never past the newline, so what follows
    stays in the pipe for ``communicate()``. Use it before anything else reads ``stream`` (a
    text wrapper's own buffer is not looked at). Raises PeerTimeout naming ``what``.
    """
    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            got = bytes(buf[:200]).decode(errors="replace")
            raise PeerTimeout(f"{what}: no line within {timeout:g} s" +
                              (f" (got {got!r} so far)" if got else ""))
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        byte = os.read(fd, 1)
        if not byte:
            break
        buf += byte
    return buf.decode(errors="replace")
