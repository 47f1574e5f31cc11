"""The bad-stream corpus: broken migration sessions replayed into a destination over real sockets.

Each case in ``qatmig_fixtures/badstreams`` is a whole session (every connection a source opens,
in the order it opens them, with every byte it sends) made by the reference source and then
broken in one place (``tools/record_bad_streams.py``). :func:`replay` opens the connections in
order against a listening destination, writes every connection's bytes concurrently (a receiver
may wait on the main channel before it reads on) and half-closes them, or keeps them open and
silent for the ``idle`` cases.

A case is ``strict`` when real QEMU accepts it (it checks less than a careful receiver can):
such a failure is a finding about that implementation, reported as ``STRICT`` in the test id.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS_DIR = "badstreams"


@dataclass(frozen=True)
class BadSession:
    name: str
    description: str
    method: str
    dialect: str
    channels: int
    uuid: str
    ram_size: int
    ramblock: str
    #: QEMU accepts it (the text says what QEMU does); a failure here is reported as strict.
    qemu_lax: str | None
    #: keep the connections open and silent after the bytes (an idle peer)
    idle: bool
    connections: tuple[bytes, ...]

    @property
    def strict(self) -> bool:
        return self.qemu_lax is not None


def corpus_dir() -> Path:
    from qatmig_engine.resources import fixtures_dir

    return Path(fixtures_dir(CORPUS_DIR))


def load_corpus(root: Path | None = None) -> list[BadSession]:
    """Every case of the corpus, in manifest order."""
    root = root or corpus_dir()
    manifest = json.loads((root / "manifest.json").read_text())
    out = []
    for case in manifest["cases"]:
        blob = gzip.decompress((root / case["file"]).read_bytes())
        conns, pos = [], 0
        for n in case["lengths"]:
            conns.append(blob[pos : pos + n])
            pos += n
        if pos != len(blob):
            raise ValueError(f"{case['file']}: {len(blob) - pos} bytes beyond its connections")
        out.append(BadSession(
            name=case["name"], description=case["description"], method=case["method"],
            dialect=case["dialect"], channels=case["channels"], uuid=case["uuid"],
            ram_size=case["ram_size"], ramblock=case["ramblock"],
            qemu_lax=case.get("qemu_lax"), idle=bool(case.get("idle")),
            connections=tuple(conns),
        ))
    return out


def case_names(root: Path | None = None) -> list[str]:
    """Case names without loading the blobs (for parametrization at collection time)."""
    root = root or corpus_dir()
    return [c["name"] for c in json.loads((root / "manifest.json").read_text())["cases"]]


class Replay:
    """One replay in progress: the sockets stay open until :meth:`close`."""

    def __init__(self, address: tuple[str, int], connections: Sequence[bytes], *,
                 idle: bool = False, connect_timeout: float = 10.0) -> None:
        self.socks: list[socket.socket] = []
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        for i, data in enumerate(connections):
            try:
                s = socket.create_connection(address, timeout=connect_timeout)
            except OSError as exc:  # the destination may refuse once it has failed
                self.errors.append(f"connection {i}: {exc}")
                break
            self.socks.append(s)
            t = threading.Thread(target=self._write, args=(i, s, data, idle),
                                 name=f"qatmig-replay-{i}", daemon=True)
            self._threads.append(t)
            t.start()
            # Keep the order of arrival: the destination accepts in this order.
            time.sleep(0.02)

    def _write(self, i: int, s: socket.socket, data: bytes, idle: bool) -> None:
        try:
            s.settimeout(60.0)
            s.sendall(data)
            if not idle:
                s.shutdown(socket.SHUT_WR)
        except OSError as exc:  # a destination that failed resets its connections
            self.errors.append(f"connection {i}: {exc}")

    def close(self) -> None:
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)


def describe_result(result: Any) -> str:
    """status and error of a destination's result mapping, for messages."""
    get = result.get if hasattr(result, "get") else (lambda k, d=None: getattr(result, k, d))
    return f"status={get('status')!r} error={get('error')!r}"
