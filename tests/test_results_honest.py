"""Results that can say no: a destination that corrupts a page comes out ``verified: false``
through every layer (engine API, CLI, each adapter, the plugin's ``qatmig_perf`` rule), and
values nobody reported stay missing (None) instead of becoming a passing 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest
from qatmig_engine.api import migrate_loopback
from qatmig_engine.cli import main
from qatmig_engine.destination import Destination
from qatmig_engine.guest import GuestMemory, RAMBlock, fill_deterministic
from qatmig_engine.params import MigrationParameters

from pytest_qatmig.adapters import PairSpec
from pytest_qatmig.devices import software_device
from pytest_qatmig.qemu_adapter import QemuImplementation, wire_fields
from pytest_qatmig.results import MigrationResult, check_thresholds

pytest_plugins = ["pytester"]

MiB = 1 << 20
PAGE = 4096
QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(
    QEMU is None, reason="needs qemu-system-x86_64: apt-get install qemu-system-x86"
)

#: Patches the engine's Destination so that, once it has received everything, one byte of
#: page 7 is wrong: what a receiver that drops or mangles a page leaves behind.
CORRUPTING_DESTINATION = """
import pytest
from qatmig_engine.destination import Destination

_run = Destination.run


def _corrupting_run(self):
    st = _run(self)
    block = self.guest.blocks[0]
    block.view[7 * 4096] ^= 0xFF
    return st


@pytest.fixture(autouse=True)
def corrupting_destination(monkeypatch):
    monkeypatch.setattr(Destination, "run", _corrupting_run)
"""


def _corrupt_after_run(monkeypatch: pytest.MonkeyPatch, page: int = 7) -> None:
    original = Destination.run

    def run(self: Destination) -> Any:
        st = original(self)
        self.guest.blocks[0].view[page * PAGE] ^= 0xFF
        return st

    monkeypatch.setattr(Destination, "run", run)


# ----------------------------------------------------------------------------- engine API
def test_engine_api_reports_a_corrupted_destination_unverified(monkeypatch):
    _corrupt_after_run(monkeypatch)
    g = GuestMemory([RAMBlock.anonymous("pc.ram", 2 * MiB)])
    fill_deterministic(g.blocks[0], seed=3)
    try:
        st = migrate_loopback(params=MigrationParameters(multifd_compression="zstd"), guest=g,
                              timeout=10)
    finally:
        g.close()
    assert st.status == "completed"
    assert st.verified is False


def test_engine_api_verifies_an_intact_destination():
    g = GuestMemory([RAMBlock.anonymous("pc.ram", 2 * MiB)])
    fill_deterministic(g.blocks[0], seed=3)
    try:
        st = migrate_loopback(params=MigrationParameters(), guest=g, timeout=10)
    finally:
        g.close()
    assert st.status == "completed" and st.verified is True


# ----------------------------------------------------------------------------- CLI
def test_cli_migrate_exits_1_and_says_unverified(monkeypatch, capsys):
    _corrupt_after_run(monkeypatch)
    rc = main(["migrate", "--guest-size", "2M", "--corpus", "filler", "--json", "--quiet"])
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert rc == 1
    assert out["status"] == "completed" and out["verified"] is False
    assert "destination RAM differs from the source" in cap.err


# ----------------------------------------------------------------------------- adapters
def test_reference_adapter_through_the_plugin_reports_unverified(pytester: pytest.Pytester):
    pytester.makeconftest(CORRUPTING_DESTINATION)
    pytester.makepyfile("""
        def test_corrupt(multifd_pair, tmp_path):
            guest = tmp_path / "guest.img"
            guest.write_bytes(bytes(range(256)) * 4096)  # 1 MiB, no zero page
            result = multifd_pair(channels=2).migrate(guest)
            assert result.status == "completed"
            assert result.verified is False
    """)
    result = pytester.runpytest("--qatmig-devices=sw", "--qatmig-impl=reference")
    result.assert_outcomes(passed=1)


class FakeQemu:
    """Stands in for ``QemuProcess``: the destination's RAM file gets the source's bytes
    (minus one page when ``drop_page``), and ``wait_migration`` returns ``info``."""

    drop_page: int | None = None
    info: ClassVar[dict[str, Any]] = {}
    ends: ClassVar[dict[str, FakeQemu]] = {}

    def __init__(self, *, ram_file: Path, ram_size: int, name: str, **_: Any) -> None:
        self.ram_file = Path(ram_file)
        self.ram_size = ram_size
        self.name = name
        FakeQemu.ends[name] = self

    def start(self) -> FakeQemu:
        if not self.ram_file.exists():
            self.ram_file.write_bytes(bytes(self.ram_size))
        return self

    def stop(self) -> None:
        pass

    def setup_migration(self, **_: Any) -> None:
        pass

    def migrate_incoming(self) -> int:
        return 1

    def cpu_seconds(self) -> float:
        return 0.0

    def migrate(self, uri: str) -> None:
        data = bytearray(FakeQemu.ends["src"].ram_file.read_bytes())
        if FakeQemu.drop_page is not None:
            o = FakeQemu.drop_page * PAGE
            data[o : o + PAGE] = bytes(PAGE)
        FakeQemu.ends["dst"].ram_file.write_bytes(bytes(data))

    def wait_migration(self, timeout: float) -> dict[str, Any]:
        return dict(FakeQemu.info)


def _fake_qemu_pair(monkeypatch, tmp_path: Path, *, drop_page: int | None,
                    info: dict[str, Any], version: tuple[int, int] = (7, 2),
                    compression: str = "none") -> MigrationResult:
    import qatmig_engine.qemu.process as process

    monkeypatch.setattr(process, "QemuProcess", FakeQemu)
    monkeypatch.setattr(FakeQemu, "drop_page", drop_page)
    monkeypatch.setattr(FakeQemu, "info", info)
    monkeypatch.setattr(FakeQemu, "ends", {})
    impl = QemuImplementation.__new__(QemuImplementation)
    impl.binary = "qemu-system-x86_64"
    impl.version = version
    impl.version_line = f"QEMU emulator version {version[0]}.{version[1]}.0"
    impl.dialect = "qemu-7.2"
    guest = tmp_path / "guest.img"
    guest.write_bytes(bytes(range(1, 256)) * (MiB // 255) + b"\x01" * (MiB % 255))
    pair = impl.pair(PairSpec(channels=2, compression=compression),
                     device=software_device(), workdir=tmp_path)
    return pair.migrate(guest)


COMPLETED_INFO = {
    "status": "completed", "total-time": 120, "downtime": 8, "setup-time": 40,
    "ram": {"mbps": 900.5, "transferred": 1 << 20, "normal": 256, "duplicate": 0,
            "pages-per-second": 0, "dirty-sync-count": 2},
}


def test_qemu_adapter_compares_the_ram_files(monkeypatch, tmp_path):
    ok = _fake_qemu_pair(monkeypatch, tmp_path, drop_page=None, info=COMPLETED_INFO)
    assert ok.status == "completed" and ok.verified is True
    # QEMU's mbps is over total-time minus setup-time: the honest-stats check needs both.
    assert ok.total_time_ms == 120 and ok.setup_time_ms == 40
    bad = _fake_qemu_pair(monkeypatch, tmp_path, drop_page=5, info=COMPLETED_INFO)
    assert bad.status == "completed" and bad.verified is False


def test_qemu_adapter_missing_times_are_none_and_fail_thresholds(monkeypatch, tmp_path):
    info = {"status": "completed", "ram": dict(COMPLETED_INFO["ram"])}  # no total-time, downtime
    r = _fake_qemu_pair(monkeypatch, tmp_path, drop_page=None, info=info)
    assert r.verified is True
    assert r.total_time_ms is None and r.downtime_ms is None
    verdict = check_thresholds(r, {"max_downtime_ms": 1000, "max_total_ms": 1000})
    assert verdict.failures == (
        "downtime_ms not reported, cannot check max_downtime_ms=1000",
        "total_time_ms not reported, cannot check max_total_ms=1000",
    )


@needs_qemu
def test_qemu_adapter_real_destination_with_a_corrupted_page_is_unverified(
    monkeypatch, tmp_path
):
    from qatmig_engine.qemu import process

    from pytest_qatmig.adapters import load_implementation

    original = process.QemuProcess.wait_migration

    def wait(self: Any, timeout: float = 60.0, poll: float = 0.05) -> dict[str, Any]:
        info = original(self, timeout=timeout, poll=poll)
        if self.name == "dst":  # a destination that lost page 3 after completing
            with open(self.ram_file, "r+b") as f:
                f.seek(3 * PAGE)
                f.write(b"\xee" * PAGE)
        return info

    monkeypatch.setattr(process.QemuProcess, "wait_migration", wait)
    impl = load_implementation(f"qemu:{QEMU}")
    guest = tmp_path / "guest.img"
    guest.write_bytes(bytes(range(1, 256)) * (MiB // 255) + b"\x01" * (MiB % 255))
    pair = impl.pair(PairSpec(channels=2), device=software_device(), workdir=tmp_path)
    r = pair.migrate(guest, timeout=60)
    assert r.status == "completed" and r.verified is False


def test_qemu_role_fields_keep_setup_time() -> None:
    from pytest_qatmig.qemu_adapter import _info_fields

    f = _info_fields(COMPLETED_INFO, (10, 0), "none", "send_cpu_percent", 12.0)
    assert (f["total_time_ms"], f["setup_time_ms"], f["downtime_ms"]) == (120, 40, 8)


def test_qemu_pair_reports_the_role_paths_fields(monkeypatch, tmp_path) -> None:
    """QemuPair.migrate and the roles build one end's fields with the same function: same
    keys, same values (the pair adds the other end's CPU and its own verdict fields)."""
    from pytest_qatmig.qemu_adapter import _info_fields

    r = _fake_qemu_pair(monkeypatch, tmp_path, drop_page=None, info=COMPLETED_INFO)
    role = _info_fields(COMPLETED_INFO, (7, 2), "none", "send_cpu_percent", 0.0)
    assert {k: r[k] for k in role} == role
    assert set(r) - set(role) == {"recv_cpu_percent", "verified", "multifd_channels",
                                  "multifd_compression", "compression_level", "dialect",
                                  "implementation"}
    assert r.pages_per_second == role["pages_per_second"] == round(256 / 0.120, 1)


# ----------------------------------------------------------------------------- one Mbps
@pytest.mark.parametrize(("version", "compression", "counts"), [
    ((7, 2), "none", "wire"),
    ((7, 2), "zstd", "uncompressed"),
    ((8, 0), "zlib", "uncompressed"),
    ((8, 1), "zstd", "wire"),
    ((10, 0), "zstd", "wire"),
])
def test_qemu_mbps_is_throughput_only_when_it_counts_wire_bytes(version, compression, counts):
    ram = {"mbps": 1234.5, "transferred": 999}
    f = wire_fields(ram, version, compression)
    assert f["qemu_mbps"] == 1234.5 and f["qemu_transferred_bytes"] == 999
    assert f["qemu_byte_accounting"] == counts
    if counts == "wire":
        assert f["throughput_mbps"] == 1234.5 and f["transferred_bytes"] == 999
    else:
        assert f["throughput_mbps"] is None and f["transferred_bytes"] is None


def test_qemu_72_compressed_throughput_fails_min_mbps_as_not_reported(monkeypatch, tmp_path):
    r = _fake_qemu_pair(monkeypatch, tmp_path, drop_page=None, info=COMPLETED_INFO,
                        compression="zstd")
    assert r.qemu_mbps == 900.5 and r.throughput_mbps is None
    assert check_thresholds(r, {"min_mbps": 1}).failures == (
        "throughput_mbps not reported, cannot check min_mbps=1",
    )


def test_engine_throughput_counts_wire_bytes():
    g = GuestMemory([RAMBlock.anonymous("pc.ram", 2 * MiB)])
    g.blocks[0].view[:] = b"A" * (2 * MiB)  # compresses very well: wire << RAM
    try:
        st = migrate_loopback(params=MigrationParameters(multifd_compression="zstd"), guest=g,
                              timeout=10)
    finally:
        g.close()
    j = st.to_json()
    assert j["transferred_bytes"] == j["multifd_bytes"] + j["main_channel_bytes"]
    assert j["transferred_bytes"] < MiB  # wire bytes, not 2 MiB of uncompressed pages
    active_s = (st.total_time_ms - st.setup_time_ms) / 1000
    assert st.throughput_mbps == pytest.approx(st.transferred_bytes * 8 / active_s / 1e6)


# ----------------------------------------------------------------------------- perf rule
def test_perf_rule_fails_an_unverified_run(pytester: pytest.Pytester):
    # Performance tests run the reference engine as processes (as_processes): the corruption
    # is patched into this process, so the engine is taken in-process here (an
    # implementation without as_processes is measured as it runs).
    pytester.makeconftest(CORRUPTING_DESTINATION + """

from pytest_qatmig.adapters import ReferenceImplementation


class InProcessReference(ReferenceImplementation):
    as_processes = None


def in_process():
    return InProcessReference()
""")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.qatmig_perf(min_mbps=0.000001, max_total_ms=1e9)
        def test_fast_but_wrong(multifd_pair, tmp_path):
            guest = tmp_path / "guest.img"
            guest.write_bytes(bytes(range(256)) * 4096)
            multifd_pair(channels=1).migrate(guest)
    """)
    result = pytester.runpytest("--qatmig-devices=sw", "--qatmig-impl=conftest:in_process")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*qatmig_perf: verified is False: not a valid run*",
        "*test_fast_but_wrong*FAIL*",
    ])


def test_threshold_on_a_missing_field_fails():
    r = {"throughput_mbps": 10.0}
    assert check_thresholds(r, {"max_send_cpu": 50}).failures == (
        "send_cpu_percent not reported, cannot check max_send_cpu=50",
    )
    assert check_thresholds(r, {"min_mbps": 5}).ok


# ----------------------------------------------------------------------------- options
def test_send_passes_dirty_pattern_to_the_workload(monkeypatch, capsys, tmp_path):
    import qatmig_engine.api as api

    seen: dict[str, Any] = {}

    class RecordingWorkload(api.Workload):
        def __init__(self, guest: Any, rate: int, **kw: Any) -> None:
            seen.update(kw)
            super().__init__(guest, rate, **kw)

    monkeypatch.setattr(api, "Workload", RecordingWorkload)
    image = tmp_path / "src.img"
    image.write_bytes(b"\x11" * MiB)
    # Nobody listens on the port: the send fails, after the workload was built.
    rc = main(["send", "127.0.0.1:9", "--guest-image", str(image), "--dirty-rate", "100",
               "--dirty-pattern", "sequential", "--timeout", "2", "--json", "--quiet"])
    capsys.readouterr()
    assert rc == 1
    assert seen.get("pattern") == "sequential"


def test_migrate_ramblock_names_the_block_on_the_wire(monkeypatch, capsys):
    names: list[str] = []
    original = Destination._mem_size

    def mem_size(self: Destination, ev: Any) -> None:
        names.extend(name for name, _ in ev.blocks)
        original(self, ev)

    monkeypatch.setattr(Destination, "_mem_size", mem_size)
    rc = main(["migrate", "--guest-size", "1M", "--corpus", "filler", "--ramblock", "my.ram",
               "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["verified"] is True
    assert names == ["my.ram"]


def test_migrate_json_reports_guest_mapped_bytes(capsys):
    rc = main(["migrate", "--guest-size", "2M", "--corpus", "filler", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["guest_mapped_bytes"] == 2 * MiB
