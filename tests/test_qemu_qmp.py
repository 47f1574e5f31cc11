"""The QMP client and process helper against fake peers (no QEMU needed): every wait ends."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

import pytest
from qatmig_engine.errors import QemuError, QemuTimeout
from qatmig_engine.qemu.process import (
    QemuProcess,
    RamBlockInfo,
    parse_info_ramblock,
    proc_cpu_seconds,
)
from qatmig_engine.qemu.qmp import QMPClient, QMPError

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 22}},
                    "capabilities": ["oob"]}}


class FakeQMP:
    """A unix-socket QMP server scripted by ``handler(message) -> list of replies``."""

    def __init__(self, path: str, handler, greet: bool = True) -> None:
        self.path = path
        self.handler = handler
        self.greet = greet
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(path)
        self.srv.listen(1)
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _serve(self) -> None:
        self.srv.settimeout(10)
        try:
            conn, _ = self.srv.accept()
        except OSError:
            return
        with conn:
            f = conn.makefile("rwb")
            if self.greet:
                f.write(json.dumps(GREETING).encode() + b"\r\n")
                f.flush()
            for line in f:
                for reply in self.handler(json.loads(line)):
                    f.write(json.dumps(reply).encode() + b"\r\n")
                    f.flush()

    def close(self) -> None:
        self.srv.close()
        self.t.join(5)


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "qmp.sock")


def test_execute_returns_and_keeps_events(sock_path):
    def handler(msg):
        if msg["execute"] == "query-status":
            return [{"event": "STOP", "data": {}}, {"return": {"status": "prelaunch"}}]
        return [{"return": {}}]

    srv = FakeQMP(sock_path, handler)
    try:
        with QMPClient.connect(sock_path, timeout=5) as q:
            assert q.greeting["version"]["qemu"]["major"] == 7
            assert q.execute("query-status") == {"status": "prelaunch"}
            assert q.events and q.events[0]["event"] == "STOP"
    finally:
        srv.close()


def test_error_reply_is_a_qmp_error(sock_path):
    def handler(msg):
        if msg["execute"] == "qmp_capabilities":
            return [{"return": {}}]
        return [{"error": {"class": "GenericError",
                           "desc": "Parameter 'multifd-channels' expects uint8_t"}}]

    srv = FakeQMP(sock_path, handler)
    try:
        with QMPClient.connect(sock_path, timeout=5) as q:
            with pytest.raises(QMPError, match="expects uint8_t") as ei:
                q.execute("migrate-set-parameters", {"multifd-channels": 300})
            assert ei.value.error_class == "GenericError"
    finally:
        srv.close()


def test_wedged_monitor_times_out(sock_path):
    """A QEMU whose QMP stops answering (7.2 after a compression mismatch) must not hang us."""

    def handler(msg):
        return [{"return": {}}] if msg["execute"] == "qmp_capabilities" else []

    srv = FakeQMP(sock_path, handler)
    try:
        with QMPClient.connect(sock_path, timeout=5) as q:
            t0 = time.monotonic()
            with pytest.raises(QemuTimeout, match="query-migrate"):
                q.execute("query-migrate", timeout=0.5)
            assert time.monotonic() - t0 < 3
    finally:
        srv.close()


def test_no_greeting_times_out(sock_path):
    srv = FakeQMP(sock_path, lambda m: [], greet=False)
    try:
        with pytest.raises(QemuTimeout, match=r"QMP did not answer in time \(QEMU wedged\?\)"):
            QMPClient.connect(sock_path, timeout=0.5)
    finally:
        srv.close()


def test_missing_socket_times_out(sock_path):
    t0 = time.monotonic()
    with pytest.raises(QemuTimeout, match="did not accept"):
        QMPClient.connect(sock_path, timeout=0.3)
    assert time.monotonic() - t0 < 3


def test_dead_process_fails_fast(sock_path):
    with pytest.raises(QemuError, match="exited"):
        QMPClient.connect(sock_path, timeout=30, alive=lambda: False)


def test_garbage_is_a_qemu_error(sock_path):
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(sock_path)
    srv.listen(1)

    def serve():
        c, _ = srv.accept()
        c.sendall(b"this is not json\n")
        time.sleep(0.5)
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pytest.raises(QemuError, match="not JSON"):
            QMPClient.connect(sock_path, timeout=5)
    finally:
        t.join(5)
        srv.close()


def test_parse_info_ramblock():
    rows = [
        ("Block Name", "PSize", "Offset", "Used", "Total"),
        ("pc.ram", "4 KiB", "0x0000000000000000", "0x0000000004000000", "0x0000000004000000"),
        ("/rom@etc/acpi/tables", "4 KiB", "0x0000000004080000", "0x0000000000020000",
         "0x0000000000200000"),
    ]
    text = "".join(f"{a:>24}    {b}  {c:>18} {d:>18} {e:>18}\n" for a, b, c, d, e in rows)
    assert parse_info_ramblock(text) == [
        RamBlockInfo("pc.ram", 64 << 20, 64 << 20),
        RamBlockInfo("/rom@etc/acpi/tables", 128 << 10, 2 << 20),
    ]
    with pytest.raises(QemuError, match=r"could not parse `info ramblock` output: 'nothing"):
        parse_info_ramblock("nothing here")


def test_parse_info_ramblock_of_qemu_10():
    # QEMU 10.0 adds the host address and RO columns, and ends lines with \r\n
    text = (
        "              Block Name    PSize              Offset               Used              "
        "Total                HVA  RO\r\n"
        "                  pc.ram    4 KiB  0x0000000000000000 0x0000000000800000 "
        "0x0000000000800000 0x00007f67acd7d000  rw\r\n"
        "    /rom@etc/acpi/tables    4 KiB  0x0000000000880000 0x0000000000020000 "
        "0x0000000000200000 0x00007f67ac800000  ro\r\n"
    )
    assert parse_info_ramblock(text) == [
        RamBlockInfo("pc.ram", 8 << 20, 8 << 20),
        RamBlockInfo("/rom@etc/acpi/tables", 128 << 10, 2 << 20),
    ]


def test_cpu_seconds_of_this_process():
    assert proc_cpu_seconds(os.getpid()) > 0


def test_missing_binary_is_a_clear_error(tmp_path):
    q = QemuProcess(ram_file=tmp_path / "r.img", ram_size=16 << 20,
                    binary=str(tmp_path / "no-such-qemu"), workdir=tmp_path / "w")
    with pytest.raises(QemuError, match="apt-get install qemu-system-x86"):
        q.start()


def test_process_that_never_opens_qmp_is_killed(tmp_path):
    """A 'QEMU' that ignores SIGTERM and never opens its socket: start times out, pid killed."""
    fake = tmp_path / "fake-qemu"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import signal, time, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('fake qemu: stuck', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    fake.chmod(0o755)
    q = QemuProcess(ram_file=tmp_path / "r.img", ram_size=16 << 20, binary=str(fake),
                    workdir=tmp_path / "w", start_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(QemuTimeout) as ei:
        q.start()
    assert time.monotonic() - t0 < 10
    assert "fake qemu: stuck" in str(ei.value)
    assert q.proc is not None and q.proc.poll() is not None  # ended by SIGKILL
