"""Shared by the tests that drive a real qemu-system-x86_64."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from qatmig_engine.qemu.fetch import Qemu10, find_qemu10
from qatmig_engine.qemu.process import find_qemu

#: Module marks for QEMU tests: the ``qemu`` marker, and a skip that says how to get QEMU.
QEMU_MARKS = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        find_qemu() is None,
        reason="qemu-system-x86_64 not found: install it with `apt-get install "
        "qemu-system-x86` (or `make system-deps` as root) to run the QEMU interop tests",
    ),
]

#: Module marks for QEMU 10.0 tests: skip unless it was fetched (``make system-deps`` does it).
QEMU10_MARKS = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        find_qemu10() is None,
        reason="QEMU 10.0 not fetched: run `python -m qatmig_engine.qemu.fetch` (or `make "
        "system-deps`; needs apt-get, dpkg and the Debian mirror) to run the QEMU 10.0 tests",
    ),
]


def qemu10() -> Qemu10:
    """The fetched QEMU 10.0 (use under QEMU10_MARKS)."""
    q = find_qemu10()
    if q is None:  # pragma: no cover - QEMU10_MARKS skips first
        pytest.skip("QEMU 10.0 not fetched: run `python -m qatmig_engine.qemu.fetch`")
    return q


def replay_into_engine(conns: list[bytes], size: int, params: Any, img: Path) -> Any:
    """Send recorded connections (accept order, each on its own socket, all at once) into the
    engine's ``listen``; returns its MigrationStats."""
    from qatmig_engine.api import listen

    ready = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        def on_ready(addr: tuple[str, int]) -> None:
            box["port"] = addr[1]
            ready.set()

        try:
            box["st"] = listen("127.0.0.1", 0, img, size, params, ramblock="pc.ram",
                               timeout=20, on_ready=on_ready)
        finally:
            ready.set()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(20) and "port" in box
    socks = [socket.create_connection(("127.0.0.1", box["port"]), timeout=10) for _ in conns]
    senders = [threading.Thread(target=s.sendall, args=(c,))
               for s, c in zip(socks, conns, strict=True)]
    for th in senders:
        th.start()
    for th in senders:
        th.join(30)
    for s in socks:
        s.close()
    t.join(60)
    assert not t.is_alive()
    return box["st"]
