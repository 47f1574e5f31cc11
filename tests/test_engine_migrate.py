"""End-to-end loopback migrations: every method and dialect, zero-page modes, multiple RAM
blocks, a dirtying workload, max-bandwidth, listen/send as two ends."""

from __future__ import annotations

import hashlib
import threading

import pytest
from qatmig_engine.api import listen, migrate_loopback, send
from qatmig_engine.guest import GuestMemory, RAMBlock, fill_deterministic
from qatmig_engine.params import MigrationParameters

MiB = 1 << 20


def _guest(size=4 * MiB, extra=()):
    blocks = [RAMBlock.anonymous("pc.ram", size)]
    blocks += [RAMBlock.anonymous(name, n) for name, n in extra]
    g = GuestMemory(blocks)
    fill_deterministic(blocks[0], seed=5)
    for b in blocks[1:]:
        b.write_page(0, b"\x5a" * 4096)
    return g


def _run(method="none", dialect="qemu-9.2", channels=2, size=4 * MiB, **kw):
    p = MigrationParameters(multifd_compression=method, dialect=dialect,
                            multifd_channels=channels, **kw.pop("params", {}))
    g = kw.pop("guest", None) or _guest(size)
    try:
        st = migrate_loopback(params=p, guest=g, timeout=10, **kw)
    finally:
        g.close()
    return st


@pytest.mark.parametrize("method", ["none", "zlib", "zstd", "qatzip", "qpl", "uadk"])
def test_each_method_completes_and_verifies(method):
    st = _run(method, params={"qat_backend": "sw"} if method == "qatzip" else {})
    j = st.to_json()
    assert j["status"] == "completed", j["error"]
    assert j["verified"] is True
    assert j["normal_pages"] + j["zero_pages"] == 1024
    assert j["dirty_sync_count"] >= 2
    assert j["transferred_bytes"] > 0 and j["throughput_mbps"] > 0
    assert j["send_cpu_percent"] > 0 and j["recv_cpu_percent"] > 0
    if method == "none":
        assert j["compression_ratio"] == 1.0
    elif method in ("zlib", "zstd", "qatzip"):
        assert j["compression_ratio"] > 1.5
    if method == "qatzip":
        assert j["qat_backend"] == "sw" and j["qat_fallback_events"] == []


@pytest.mark.parametrize(("machine", "commands"), [
    (None, ["MIG_CMD_SWITCHOVER_START"]), ("pc-i440fx-9.2", [])])
def test_qemu_10_dialect_sends_switchover_start_for_10_machine_types(machine, commands):
    st = _run("zstd", "qemu-10.0", machine_type=machine)
    assert st.status == "completed", st.error
    assert st.verified is True
    assert st.vm_commands == commands


@pytest.mark.parametrize("dialect", ["qemu-7.2", "qemu-9.0"])
@pytest.mark.parametrize("method", ["none", "zstd"])
def test_older_dialects(dialect, method):
    st = _run(method, dialect)
    assert st.status == "completed", st.error
    assert st.verified is True
    # 7.2 has no zero_pages field: zero pages ride on the main channel as ZERO records.
    if dialect == "qemu-7.2":
        assert st.source.main_bytes > 9 * st.zero_pages


@pytest.mark.parametrize("zpd", ["none", "legacy", "multifd"])
def test_zero_page_detection_modes(zpd):
    st = _run("none", params={"zero_page_detection": zpd})
    assert st.status == "completed" and st.verified
    if zpd == "none":
        assert st.zero_pages == 0 and st.normal_pages == 1024
    else:
        assert st.zero_pages > 100


@pytest.mark.parametrize("channels", [1, 3, 8])
def test_channel_counts(channels):
    st = _run("zlib", channels=channels)
    assert st.status == "completed" and st.verified
    assert st.source.sync_packets == channels * st.dirty_sync_count


def test_several_ram_blocks_like_a_pc_machine():
    g = _guest(2 * MiB, extra=[("pc.bios", 256 * 1024), ("/rom@etc/acpi/tables", 128 * 1024)])
    st = _run("zstd", "qemu-7.2", guest=g)
    assert st.status == "completed" and st.verified
    assert st.total_ram_bytes == 2 * MiB + 384 * 1024


@pytest.mark.parametrize("dialect", ["qemu-7.2", "qemu-9.2"])
def test_dirtying_workload_converges_and_reports_downtime(dialect):
    # A hot set of 16 pages (64 KiB) fits the 300 ms downtime limit at any bandwidth above
    # ~0.2 MB/s, so convergence does not depend on how loaded the machine is.
    st = _run("zstd", dialect, size=16 * MiB, dirty_rate=20000, hot_pages=16,
              params={"downtime_limit": 300})
    j = st.to_json()
    assert j["status"] == "completed", j["error"]
    assert j["verified"] is True
    assert j["converged"] is True
    assert j["workload_pages_written"] > 0
    assert j["downtime_ms"] is not None and j["downtime_ms"] > 0
    assert j["dirty_sync_count"] >= 3


def test_non_convergence_is_reported_and_still_verified(request):
    # downtime-limit 0 with a guest that keeps dirtying a hot set of most of its pages, and
    # max_iters 2: a forced switchover. The bandwidth cap paces every round (~0.3 s: the hot
    # set is ~4 MB, the cap 10 MB/s) so that the guest's thread runs during each of them.
    for attempt in (1, 2):
        st = _run("none", size=4 * MiB, dirty_rate=20000, hot_pages=1000, max_iters=2,
                  params={"downtime_limit": 0, "max_bandwidth": 10_000_000})
        assert st.status == "completed" and st.verified
        if attempt == 1 and st.converged and st.expected_downtime_ms == 0:
            # Nothing was dirty at the end of a round: the guest's thread never ran during
            # it (a loaded host), and with nothing left to send converging is right. That
            # says nothing about non-convergence: run once more, and record it. An engine
            # converging with pages left (expected downtime > 0) fails below at once.
            request.node.user_properties.append(("non_convergence_retried", {
                "rounds": st.rounds, "workload_pages_written": st.workload_pages_written}))
            continue
        break
    assert st.converged is False and st.rounds == 3, (st.converged, st.rounds,
                                                       st.expected_downtime_ms)
    assert st.expected_downtime_ms is not None and st.expected_downtime_ms > 0


def test_max_bandwidth_is_never_exceeded():
    # 40 MB/s for ~2 s of wire traffic: all-non-zero pages, no zero-page detection. A loaded
    # machine can only make the migration slower, so only the bound that holds under load is
    # asserted: the rate never exceeds the limit by more than one 100 ms window's budget (the
    # limiter's exact pacing is checked on a controlled clock in test_engine_units.py; how
    # close to the limit the engine gets is a benchmark figure, not a unit test).
    limit = 40_000_000
    g = GuestMemory([RAMBlock.anonymous("pc.ram", 76 * MiB)])
    v = g.blocks[0].view
    for o in range(0, len(v), 4096):
        v[o : o + 8] = (o + 1).to_bytes(8, "little")
    st = _run("none", guest=g, params={"max_bandwidth": limit, "zero_page_detection": "none"})
    assert st.status == "completed" and st.verified
    assert st.transferred_bytes > 76 * MiB
    elapsed = st.total_time_ms / 1000
    assert st.transferred_bytes <= limit * elapsed + limit * 0.1


def test_listen_and_send_as_two_ends(tmp_path):
    src = tmp_path / "src.img"
    g = _guest(4 * MiB)
    src.write_bytes(g.blocks[0].view)
    g.close()
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    dst = tmp_path / "dst.img"
    p = MigrationParameters(multifd_compression="zstd", dialect="qemu-7.2")
    ready = threading.Event()
    addr: list = []
    out: list = []

    def on_ready(a):
        addr.append(a)
        ready.set()

    t = threading.Thread(target=lambda: out.append(listen(
        "127.0.0.1", 0, dst, 4 * MiB, p, timeout=10, on_ready=on_ready)))
    t.start()
    assert ready.wait(10)
    s = send(addr[0][0], addr[0][1], src, p, timeout=10)
    t.join(20)
    d = out[0]
    assert s.status == "completed", s.error
    assert d.status == "completed", d.error
    assert d.destination_digest == s.source_digest == before
    assert dst.read_bytes() == src.read_bytes()
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before  # source untouched
