"""Small units of the engine: rate limiter, stats renderings, host:port parsing, activity."""

from __future__ import annotations

import threading
import time

import pytest
from qatmig_engine.errors import ParameterError, PeerTimeout
from qatmig_engine.ratelimit import RateLimiter
from qatmig_engine.stats import MigrationStats, SideCounters
from qatmig_engine.transport import Activity, Cancelled, parse_hostport


def test_rate_limiter_paces_threads_to_the_limit():
    rate = 4_000_000
    lim = RateLimiter(rate)
    t0 = time.monotonic()

    def worker():
        for _ in range(10):
            lim.consume(100_000)

    ts = [threading.Thread(target=worker) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    el = time.monotonic() - t0
    # 2 MB at 4 MB/s: the bucket starts empty, so at least 0.5 s (minus one 100 KB packet).
    assert el >= (2_000_000 - 100_000) / rate
    assert el < 0.5 * 1.5
    assert lim.total == 2_000_000


def test_rate_limiter_unlimited_never_sleeps_and_wakes_on_cancel():
    lim = RateLimiter(0)
    t0 = time.monotonic()
    lim.consume(10**12)
    assert time.monotonic() - t0 < 0.05
    cancel = threading.Event()
    slow = RateLimiter(1, cancel=cancel)
    threading.Timer(0.1, cancel.set).start()
    t0 = time.monotonic()
    slow.consume(10**6)  # would sleep ~11 days
    assert time.monotonic() - t0 < 2


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
        with pytest.raises(ParameterError):
            parse_hostport(bad)


def test_activity_idle_and_cancel():
    act = Activity(0.2)
    act.check("x")
    time.sleep(0.25)
    with pytest.raises(PeerTimeout, match="silent"):
        act.check("x")
    act.touch()
    act.cancel.set()
    with pytest.raises(Cancelled):
        act.wait(threading.Event(), "y")
