"""The tap's socket edge on loopback: forwarding order, byte identity, timeouts, the CLI.

A recorded QEMU 7.2 migration is replayed by a plain-socket "source" into the tap, which
forwards to a plain-socket "destination" that records what it receives. Nothing may hang.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from qatmig_engine.qemu.golden import load_connections
from qatmig_engine.tap import ChannelCut, TapChecker, TapProxy

#: The ``qatmig`` command line, run by the test's interpreter.
QATMIG = [sys.executable, "-c", "import sys; from qatmig_engine.cli import main; "
          "sys.exit(main(sys.argv[1:]))"]


class Sink:
    """A destination that accepts connections in order and records their bytes."""

    def __init__(self, close_after: int | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytearray] = []
        self.close_after = close_after
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            buf = bytearray()
            self.received.append(buf)
            t = threading.Thread(target=self._read, args=(c, buf), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, c: socket.socket, buf: bytearray) -> None:
        c.settimeout(10)
        with c:
            while True:
                try:
                    d = c.recv(1 << 20)
                except OSError:
                    return
                if not d:
                    return
                buf += d
                if self.close_after is not None and len(buf) >= self.close_after:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    return

    def close(self) -> None:
        self._stop.set()
        self.t.join(5)
        for t in self._threads:
            t.join(5)
        self.sock.close()


def replay(port: int, conns: list[bytes], *, stagger: float = 0.02, pause: float = 0) -> None:
    """Connect main first, then the channels (as QEMU 7.2 does), and send concurrently."""
    socks = []
    for _c in conns:
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(stagger)

    def send(s: socket.socket, data: bytes) -> None:
        with s:
            for i in range(0, len(data), 100_000):
                try:
                    s.sendall(data[i : i + 100_000])
                except OSError:
                    return
                time.sleep(pause)

    ts = [threading.Thread(target=send, args=(s, d)) for s, d in zip(socks, conns, strict=True)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)


@pytest.fixture(scope="module")
def zstd_capture():
    return load_connections("zstd")


def test_forwards_byte_identical_in_accept_order(zstd_capture):
    sink = Sink()
    try:
        tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", sink.port),
                       TapChecker(method="zstd", channels=2), timeout=10)
        port = tap.start()
        replay(port, zstd_capture)
        report = tap.wait(30)
    finally:
        sink.close()
    assert report.ok, [str(e) for e in report.errors]
    assert [bytes(b) for b in sink.received] == zstd_capture
    assert report.totals()["wire_bytes"] == sum(map(len, zstd_capture))


def test_deviation_is_reported_but_bytes_still_forwarded(zstd_capture):
    conns = list(zstd_capture)
    bad = bytearray(conns[1])
    bad[64 + 8 : 64 + 12] = b"\0\0\0\x02"  # first packet claims zlib
    conns[1] = bytes(bad)
    sink = Sink()
    try:
        tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", sink.port),
                       TapChecker(method="zstd"), timeout=10)
        port = tap.start()
        replay(port, conns)
        report = tap.wait(30)
    finally:
        sink.close()
    assert not report.ok
    assert [bytes(b) for b in sink.received] == conns


def test_unreachable_destination_fails_fast():
    free = socket.create_server(("127.0.0.1", 0))
    dead_port = free.getsockname()[1]
    free.close()
    tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", dead_port), TapChecker(), timeout=5,
                   connect_timeout=2)
    port = tap.start()
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(5)
        try:
            assert s.recv(1) == b""  # the tap closes our side
        except ConnectionResetError:
            pass
    report = tap.wait(15)
    assert time.monotonic() - t0 < 10
    assert any("cannot connect" in e.message for e in report.errors)


def test_silent_source_times_out_instead_of_hanging():
    sink = Sink()
    try:
        tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", sink.port), TapChecker(), timeout=1.0)
        port = tap.start()
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"QEVM")
            report = tap.wait(15)
        elapsed = time.monotonic() - t0
    finally:
        sink.close()
    assert elapsed < 8
    assert any(e.field == "timeout" for e in report.errors)


def test_no_source_at_all_times_out():
    tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", 9), TapChecker(), timeout=0.5)
    tap.start()
    report = tap.wait(10)
    assert any("no connection arrived" in e.message for e in report.errors)


def test_destination_dropping_the_connection_does_not_hang(zstd_capture):
    sink = Sink(close_after=1)  # resets each connection after its first bytes
    try:
        tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", sink.port),
                       TapChecker(method="zstd"), timeout=3)
        port = tap.start()
        t0 = time.monotonic()
        replay(port, zstd_capture, pause=0.1)
        report = tap.wait(30)
    finally:
        sink.close()
    assert time.monotonic() - t0 < 20
    assert not report.ok
    assert any("sending to the destination failed" in e.message for e in report.errors)


@pytest.mark.parametrize("mode", ["reset", "eof"])
def test_a_cut_kills_the_first_multifd_connection_after_exactly_n_bytes(zstd_capture, mode):
    """QEMU 7.2's main channel (connection 0) is not multifd: the cut picks a channel, lets
    exactly ``after_bytes`` through on it, and forwards the other connections whole."""
    n = 100_000  # less than the main channel's 118744 bytes, sent first
    sink = Sink()
    try:
        tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", sink.port), None, timeout=5,
                       cut=ChannelCut(n, mode=mode))
        port = tap.start()
        t0 = time.monotonic()
        replay(port, zstd_capture, pause=0.05)
        tap.wait(30)
        elapsed = time.monotonic() - t0
    finally:
        sink.close()
    assert elapsed < 15
    cut = tap.cut_done
    assert cut is not None and cut["connection"] in (1, 2), cut
    idx = cut["connection"]
    assert tap.bytes_down[idx] == n
    got = bytes(sink.received[idx])
    # a reset may discard what the destination had not read yet; an end of stream does not
    assert (got == zstd_capture[idx][:n]) if mode == "eof" else zstd_capture[idx].startswith(got)
    for i, data in enumerate(zstd_capture):
        if i != idx:
            assert bytes(sink.received[i]) == data, f"connection {i} was not forwarded whole"


def _how_it_ends(sock: socket.socket, timeout: float = 10) -> tuple[bytes, str]:
    """Read ``sock`` to its end: (bytes read, "reset" | "eof" | "timeout")."""
    sock.settimeout(timeout)
    got = bytearray()
    while True:
        try:
            d = sock.recv(1 << 16)
        except ConnectionResetError:
            return bytes(got), "reset"
        except TimeoutError:
            return bytes(got), "timeout"
        if not d:
            return bytes(got), "eof"
        got += d


@pytest.mark.parametrize(("mode", "destination_end"), [("reset", "reset"), ("eof", "eof")])
def test_a_cut_resets_the_source_side(mode, destination_end):
    """Whatever the mode, the source's connection is reset (RST), as when the link or the
    peer dies: a source that saw a clean close could take its channel for finished. The
    destination sees a reset (``reset``) or a clean end of stream mid-packet (``eof``)."""
    from qatmig_engine.constants import MULTIFD_MAGIC

    n = 1000
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    sent = struct.pack(">I", MULTIFD_MAGIC) + bytes(range(256)) * 8  # one segment: 2052 bytes
    ends: dict[str, tuple[bytes, str]] = {}
    try:
        tap = TapProxy(("127.0.0.1", 0), server.getsockname(), None, timeout=5,
                       cut=ChannelCut(n, mode=mode))
        port = tap.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as src:
            dst, _ = server.accept()
            with dst:
                # all of it in the tap's socket before the cut: a plain close() would then
                # send FIN, not RST, so only a real reset passes
                src.sendall(sent)
                t = threading.Thread(target=lambda: ends.__setitem__("dst", _how_it_ends(dst)))
                t.start()
                ends["src"] = _how_it_ends(src)
                t.join(15)
        tap.wait(30)
    finally:
        server.close()
    assert tap.cut_done == {"connection": 0, "role": "multifd", "mode": mode, "after_bytes": n}
    assert ends["src"] == (b"", "reset"), "the tap did not reset the source's connection"
    got, how = ends["dst"]
    assert how == destination_end
    assert sent.startswith(got) and (got == sent[:n] if mode == "eof" else len(got) <= n)


def test_a_cut_by_role_main_and_one_that_never_comes(zstd_capture):
    sink = Sink()
    try:
        tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", sink.port), None, timeout=5,
                       cut=ChannelCut(1000, role="main", mode="eof"))
        replay(tap.start(), zstd_capture)
        tap.wait(30)
        never = TapProxy(("127.0.0.1", 0), ("127.0.0.1", sink.port), None, timeout=5,
                         cut=ChannelCut(10 << 20))
        replay(never.start(), zstd_capture)
        never.wait(30)
    finally:
        sink.close()
    assert tap.cut_done == {"connection": 0, "role": "main", "mode": "eof", "after_bytes": 1000}
    assert bytes(sink.received[0]) == zstd_capture[0][:1000]
    assert never.cut_done is None  # no connection carried 10 MiB
    assert [bytes(b) for b in sink.received[3:]] == zstd_capture


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"after_bytes": 0}, "after_bytes must be >= 1"),
    ({"after_bytes": 1, "role": "sync"}, "role must be one of multifd, main, any"),
    ({"after_bytes": 1, "mode": "fin"}, "mode must be one of reset, eof"),
])
def test_a_bad_cut_is_refused(kwargs, text):
    with pytest.raises(ValueError, match=text):
        ChannelCut(**kwargs)


def test_cli_forwards_and_prints_json(zstd_capture, tmp_path):
    sink = Sink()
    proc = subprocess.Popen(
        [*QATMIG, "tap", "--listen", "127.0.0.1:0", "--dialect", "qemu-7.2",
         "--forward", f"127.0.0.1:{sink.port}", "--json", "--timeout", "10",
         "--multifd-channels", "2", "--record", str(tmp_path / "rec")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stderr.readline()
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.split("listening on 127.0.0.1:")[1].split(",")[0])
        replay(port, zstd_capture)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        sink.close()
    assert proc.returncode == 0, err
    js = json.loads(out)
    assert js["ok"] and js["multifd_compression"] == "zstd"
    assert js["totals"]["multifd_channels"] == 2
    assert (tmp_path / "rec" / "conn-0.bin").read_bytes() == zstd_capture[0]
    # the recording checks again offline, and a deviation exits 1
    files = [str(tmp_path / "rec" / f"conn-{i}.bin") for i in range(3)]
    ok = subprocess.run([*QATMIG, "tap", "--dialect", "qemu-7.2", "--replay", *files],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "tap: OK" in ok.stdout
    bad = subprocess.run([*QATMIG, "tap", "--dialect", "qemu-7.2", "--replay",
                          files[1], files[0], files[2]], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "field magic" in bad.stdout
    # the default dialect (the newest, qemu-10.0) says what these 7.2 bytes look like
    other = subprocess.run([*QATMIG, "tap", "--replay", *files], capture_output=True,
                           text=True, timeout=60)
    assert other.returncode == 1 and "look like dialect qemu-7.2" in other.stdout


def test_cli_usage_errors():
    r = subprocess.run([*QATMIG, "tap", "--listen", "nope"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
    r = subprocess.run([*QATMIG, "tap",
                        "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--forward" in r.stderr


@pytest.mark.parametrize(("dialect", "method"), [("qemu-7.2", "zlib"), ("qemu-9.0", "zstd"),
                                                 ("qemu-9.2", "qatzip")])
def test_engine_to_engine_through_the_tap(tmp_path, dialect, method):
    """The engine's own streams pass the tap in every dialect (9.x: channels identified by
    magic, zero pages as offsets in packets, rounds ended by MULTIFD_FLUSH)."""
    from qatmig_engine import api
    from qatmig_engine.params import MigrationParameters
    from qatmig_engine.qemu.image import build_image

    size = 16 << 20
    img = build_image(size, seed=7)
    (tmp_path / "src.img").write_bytes(img)
    params = MigrationParameters(multifd_channels=3, multifd_compression=method,
                                 dialect=dialect)
    box: dict[str, object] = {}
    ready = threading.Event()

    def serve() -> None:
        def on_ready(addr):
            box["port"] = addr[1]
            ready.set()

        try:
            box["st"] = api.listen("127.0.0.1", 0, tmp_path / "dst.img", size, params,
                                   timeout=20, on_ready=on_ready)
        finally:
            ready.set()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(20) and "port" in box
    tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", box["port"]),
                   TapChecker(dialect=dialect, method=method, channels=3,
                              expect={"pc.ram": img}), timeout=20)
    port = tap.start()
    st = api.send("127.0.0.1", port, tmp_path / "src.img", params, timeout=20)
    t.join(60)
    report = tap.wait(30)
    assert st.status == "completed" and box["st"].status == "completed"
    assert report.ok, [str(e) for e in report.errors]
    mf = [c for c in report.channels if c.role == "multifd"]
    assert sorted(c.channel for c in mf) == [0, 1, 2]
    if dialect != "qemu-7.2":
        assert sum(c.zero_pages for c in mf) > 0  # zero pages ride in the packets
    assert (tmp_path / "dst.img").read_bytes() == img
