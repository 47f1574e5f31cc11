"""Session probe, run in a child process: ``python -m pytest_qatmig.certify.probe N``.

QATzip has no call to choose a device: the library (qatlib) hands each session an instance on
a device it picks. So "a probe per device" is N sessions held open *at the same time*, one per
ready endpoint, each in its own thread (one session per thread, QATzip #56). Every session
must land on hardware (``hw_session_stat == QZ_OK``) and round-trip 64 KiB byte-exact. A host
with fewer usable instances than ready endpoints shows up as a session in software mode.

A child process because a broken library may crash or hang the process that loads it; the
parent reads one JSON object from stdout and kills the child after a timeout.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

PROBE_BYTES = 64 * 1024


def _payload() -> bytes:
    # compressible but not trivial: a repeating text with a counter
    parts = [f"qatmig certify session probe line {i:06d}\n".encode() for i in range(2000)]
    return b"".join(parts)[:PROBE_BYTES].ljust(PROBE_BYTES, b"\0")


def probe_sessions(count: int, library: str | None, level: int = 1) -> dict[str, Any]:
    from qatmig_engine.errors import QatError
    from qatmig_engine.qat.binding import Rc, load_library, rc_name

    try:
        lib = load_library(library)
    except QatError as exc:
        return {"loaded": False, "error": str(exc), "sessions": []}
    data = _payload()
    barrier = threading.Barrier(count, timeout=30)
    results: list[dict[str, Any]] = [{} for _ in range(count)]

    def one(i: int) -> None:
        from qatmig_engine.qat.binding import QzSession

        out: dict[str, Any] = {"index": i, "hw": False, "round_trip": False, "error": ""}
        sess = None
        try:
            sess = QzSession(lib, level=level, max_input=PROBE_BYTES)
            stat = sess.hw_session_stat
            out["hw_session_stat"] = stat
            out["hw_session_stat_name"] = rc_name(stat)
            out["hw"] = stat == Rc.QZ_OK
            out["pinned"] = sess.pinned
            comp = sess.compress(data)
            out["compressed_bytes"] = len(comp)
            out["round_trip"] = sess.decompress(comp, len(data)) == data
            if not out["round_trip"]:
                out["error"] = "decompressed bytes differ from the input"
        except (QatError, ValueError, OSError) as exc:
            out["error"] = str(exc)
        finally:
            try:
                barrier.wait()  # all sessions open at once, then tear down
            except threading.BrokenBarrierError:
                pass
            if sess is not None:
                sess.close()
            results[i] = out

    threads = [threading.Thread(target=one, args=(i,), name=f"probe-{i}") for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    info = lib.info()
    return {"loaded": True, "library": info.to_json(), "sessions": results}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    count = max(1, int(args[0])) if args else 1
    library = os.environ.get("QATMIG_CERTIFY_PROBE_LIBRARY") or None
    json.dump(probe_sessions(count, library), sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
