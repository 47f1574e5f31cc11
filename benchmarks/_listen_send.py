"""One migration between a destination process and a source process, for the benchmarks that
measure each end in its own process (bench_memory.py, profile_engine.py).

``runner`` is a ``python -c`` script taking ``ROLE PORT IMAGE SIZE METHOD CHANNELS``: as
``listen`` it prints ``READY <port>`` once it listens, then one JSON line when done; as
``send`` one JSON line. Every wait has a deadline; the destination never outlives the call.
"""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from qatmig_engine.errors import PeerTimeout
from qatmig_engine.pipes import read_line

#: Seconds a destination process may take to import and listen.
START_TIMEOUT = 60.0


def listen_and_send(runner: str, src: Path, dst: Path, size: int, method: str, channels: int,
                    *, timeout: float, start_timeout: float = START_TIMEOUT
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Migrate ``src`` into ``dst`` (recreated); (destination's JSON, source's JSON).

    Raises SystemExit naming the method and channel count when an end fails, a wait runs out,
    or the destination's RAM differs from the source's."""
    what = f"{method} x{channels}"
    dst.unlink(missing_ok=True)
    args = [str(size), method, str(channels)]
    listen = subprocess.Popen([sys.executable, "-c", runner, "listen", "0", str(dst), *args],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert listen.stdout is not None
        try:
            ready = read_line(listen.stdout, start_timeout, f"{what}: the destination process")
        except PeerTimeout as exc:
            raise SystemExit(f"{exc} (expected 'READY <port>')") from None
        if not ready.startswith("READY "):
            raise SystemExit(f"{what}: the destination did not start: {ready.strip()!r}")
        port = ready.split()[1]
        try:
            send = subprocess.run([sys.executable, "-c", runner, "send", port, str(src), *args],
                                  capture_output=True, text=True, timeout=timeout, check=False)
            out, _ = listen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise SystemExit(f"{what}: {exc}") from None
    finally:
        if listen.poll() is None:
            listen.kill()
            listen.wait(10)
    try:
        d = json.loads(out.strip().splitlines()[-1])
        s = json.loads(send.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise SystemExit(f"{what}: an end printed no JSON result (source stderr: "
                         f"{send.stderr.strip()[-300:]!r})") from None
    if d["status"] != "completed" or s["status"] != "completed":
        raise SystemExit(f"{what}: {s['error'] or d['error']}")
    if not filecmp.cmp(src, dst, shallow=False):
        raise SystemExit(f"{what}: destination RAM differs")
    return d, s
