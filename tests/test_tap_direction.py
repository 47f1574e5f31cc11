"""The tap judges both directions: a destination that talks back to its source is a deviation
(precopy multifd without return-path has no destination -> source traffic)."""

from __future__ import annotations

import socket
import threading

from qatmig_engine.tap import TapChecker, TapProxy


def _talking_destination(reply: bytes) -> tuple[socket.socket, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            if reply:
                conn.sendall(reply)
            conn.settimeout(10)
            while conn.recv(65536):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def _run(reply: bytes) -> list[str]:
    srv, t = _talking_destination(reply)
    try:
        proxy = TapProxy(("127.0.0.1", 0), srv.getsockname()[:2], TapChecker(dialect="qemu-9.2"),
                         timeout=10, linger=0.1)
        port = proxy.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"QEVM")
            c.shutdown(socket.SHUT_WR)
            while c.recv(65536):
                pass
        report = proxy.wait(30)
        t.join(10)
    finally:
        srv.close()
    return [f"{e.field}: {e.message}" for e in report.errors]


def test_a_destination_that_sends_back_is_a_deviation() -> None:
    errors = _run(b"hello source")
    assert any(e.startswith("direction: the destination sent 12 byte(s) back") for e in errors)


def test_a_silent_destination_is_not() -> None:
    assert not any(e.startswith("direction:") for e in _run(b""))
