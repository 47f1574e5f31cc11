"""Small units of the engine: rate limiter, stats renderings, host:port parsing, activity."""

from __future__ import annotations

import threading
import time

import pytest
from qatmig_engine.errors import ParameterError, PeerTimeout
from qatmig_engine.ratelimit import RateLimiter
from qatmig_engine.stats import MigrationStats, SideCounters
from qatmig_engine.transport import Activity, Cancelled, parse_hostport


class FakeClock:
    """A clock the test controls: time moves only when a sender sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)
            self.now += seconds


def test_rate_limiter_paces_to_the_limit_on_a_controlled_clock():
    clock = FakeClock()
    rate = 4_000_000
    lim = RateLimiter(rate, clock=clock, sleep=clock.sleep)
    for _ in range(20):
        lim.consume(100_000)
    # 2 MB at 4 MB/s from an empty bucket: exactly 0.5 s of pacing, whatever the machine does.
    assert clock.now == pytest.approx(2_000_000 / rate)
    assert lim.total == 2_000_000
    # Time that passed on its own (a slow sender) is credited, up to one window's budget.
    clock.now += 10.0
    before = len(clock.sleeps)
    lim.consume(int(rate * 0.1))  # one 100 ms window's budget: no sleep
    assert len(clock.sleeps) == before
    lim.consume(rate)  # a second's worth beyond it: sleeps that second
    assert clock.sleeps[-1] == pytest.approx(1.0)


def test_rate_limiter_shared_by_threads_holds_the_total_rate():
    clock = FakeClock()
    lim = RateLimiter(4_000_000, clock=clock, sleep=clock.sleep)

    def worker() -> None:
        for _ in range(10):
            lim.consume(100_000)

    ts = [threading.Thread(target=worker) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert lim.total == 2_000_000
    assert clock.now >= (2_000_000 - 100_000) / 4_000_000


def test_rate_limiter_unlimited_never_sleeps_and_wakes_on_cancel():
    clock = FakeClock()
    lim = RateLimiter(0, clock=clock, sleep=clock.sleep)
    lim.consume(10**12)
    assert clock.sleeps == [] and lim.total == 10**12
    cancel = threading.Event()
    slow = RateLimiter(1, cancel=cancel)
    t = threading.Thread(target=slow.consume, args=(10**6,))  # would sleep ~11 days
    t.start()
    cancel.set()
    t.join(60)  # a hang guard, not a speed claim
    assert not t.is_alive()


def test_stats_renderings():
    st = MigrationStats(status="completed", total_time_ms=2000, setup_time_ms=0,
                        downtime_ms=12.3, multifd_channels=2, multifd_compression="zstd",
                        dirty_sync_count=3, total_ram_bytes=1 << 20, role="both",
                        wall_seconds_source=2.0, wall_seconds_destination=2.0, verified=True)
    st.source = SideCounters(multifd_bytes=900_000, main_bytes=100_000, payload_bytes=500_000,
                             normal_pages=250, zero_pages=6, cpu_seconds=1.0)
    st.destination = SideCounters(cpu_seconds=0.5)
    j = st.to_json()
    assert j["transferred_bytes"] == 1_000_000
    assert j["throughput_mbps"] == 4.0
    assert j["pages_per_second"] == 128
    assert j["compression_ratio"] == round(250 * 4096 / 500_000, 3)
    assert j["send_cpu_percent"] == 50.0 and j["recv_cpu_percent"] == 25.0
    q = st.to_qmp()
    assert q["ram"]["duplicate"] == 6 and q["ram"]["normal"] == 250
    assert q["ram"]["multifd-bytes"] == 900_000 and q["downtime"] == 12
    row = st.table_row()
    assert row[0] == "zstd" and row[-1] == "yes" and row[6] == "50%"
    assert len(row) == len(MigrationStats.TABLE_HEADERS)


def test_parse_hostport():
    assert parse_hostport("127.0.0.1:4444") == ("127.0.0.1", 4444)
    assert parse_hostport("[::1]:5") == ("::1", 5)
    for bad in ("4444", "host:", "h:99999", "h:x"):
        with pytest.raises(ParameterError, match=r"expected HOST:PORT, got"):
            parse_hostport(bad)


def test_activity_idle_and_cancel():
    act = Activity(0.2)
    act.check("x")
    time.sleep(0.25)
    with pytest.raises(PeerTimeout, match="silent"):
        act.check("x")
    act.touch()
    act.cancel.set()
    with pytest.raises(Cancelled, match=r"y: migration cancelled"):
        act.wait(threading.Event(), "y")


def test_connect_names_the_address_and_hints_only_when_refused() -> None:
    """One error text for every failed connect; the --connect-wait hint only for a refusal
    (nobody listening yet), not for an unreachable network."""
    import socket

    from qatmig_engine import transport
    from qatmig_engine.errors import MigrationError

    act = transport.Activity(2.0)
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(MigrationError) as refused:
        transport.connect("127.0.0.1", port, act, "main channel")
    assert str(refused.value) == (
        f"main channel: cannot connect to 127.0.0.1:{port}: Connection refused (is `qatmig "
        "listen` running there? use --connect-wait S to retry while it starts)")
    with pytest.raises(MigrationError) as waited:
        transport.connect("127.0.0.1", port, act, "main channel", wait=0.2)
    assert str(waited.value).endswith("running there? still refused after --connect-wait "
                                      "0.2 s)")
    with pytest.raises(MigrationError) as unreachable:  # broadcast: no route, not a refusal
        transport.connect("255.255.255.255", 9, act, "multifd channel 1")
    assert str(unreachable.value).startswith(
        "multifd channel 1: cannot connect to 255.255.255.255:9: ")
    assert str(unreachable.value).endswith("(is `qatmig listen` running there?)")


def test_read_line_gives_up_on_a_silent_child_and_leaves_the_rest_in_the_pipe() -> None:
    import subprocess
    import sys

    from qatmig_engine.pipes import read_line

    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        with pytest.raises(PeerTimeout, match=r"^the child: no line within 0.5 s$"):
            read_line(silent.stdout, 0.5, "the child")  # type: ignore[arg-type]
        assert time.monotonic() - t0 < 10
    finally:
        silent.kill()
        silent.wait(10)
    talker = subprocess.Popen([sys.executable, "-c", "print('READY 4242'); print('{}')"],
                              stdout=subprocess.PIPE, text=True)
    assert read_line(talker.stdout, 30, "the child") == "READY 4242\n"  # type: ignore[arg-type]
    out, _ = talker.communicate(timeout=30)
    assert out == "{}\n"
