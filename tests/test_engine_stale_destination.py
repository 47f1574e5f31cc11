"""Destinations whose RAM holds stale non-zero data (a reused destination) must end equal to
the source: zero pages have to be written, on each path they travel — multifd packets'
``zero_pages`` (``zero-page-detection multifd``) and the main channel's ZERO records
(``legacy``, QEMU 7.2's only mode) — and with detection off they travel as normal pages."""

from __future__ import annotations

import pytest
from qatmig_engine.api import migrate_loopback
from qatmig_engine.guest import STALE_BYTE, GuestMemory, RAMBlock, fill_deterministic
from qatmig_engine.params import MigrationParameters

MiB = 1 << 20
PAGE = 4096


def _migrate(dialect: str, detection: str | None, method: str = "none", **kw):
    g = GuestMemory([RAMBlock.anonymous("pc.ram", 4 * MiB)])
    fill_deterministic(g.blocks[0], seed=11)  # about 20% zero pages
    zero = bytes(PAGE)
    zeros = sum(g.blocks[0].view[o : o + PAGE] == zero for o in range(0, 4 * MiB, PAGE))
    p = MigrationParameters(multifd_compression=method, dialect=dialect,
                            zero_page_detection=detection)
    try:
        st = migrate_loopback(params=p, guest=g, timeout=10, destination_stale=True, **kw)
    finally:
        g.close()
    return st.to_json(), zeros


@pytest.mark.parametrize("method", ["none", "zstd"])
def test_multifd_zero_pages_overwrite_stale_ram(method):
    j, zeros = _migrate("qemu-9.2", "multifd", method)
    assert j["status"] == "completed" and j["verified"] is True
    assert j["zero_page_detection"] == "multifd"
    assert zeros > 100 and j["zero_pages"] == zeros
    # Zero pages rode in multifd packets: the main channel carries no 9-byte ZERO records.
    assert j["main_channel_bytes"] < 9 * zeros


@pytest.mark.parametrize("dialect", ["qemu-7.2", "qemu-9.2"])
def test_main_channel_zero_records_overwrite_stale_ram(dialect):
    j, zeros = _migrate(dialect, "legacy")
    assert j["status"] == "completed" and j["verified"] is True
    assert j["zero_page_detection"] == "legacy"
    assert zeros > 100 and j["zero_pages"] == zeros
    assert j["main_channel_bytes"] >= 9 * zeros  # one ZERO record (be64 + fill byte) each


def test_without_zero_page_detection_every_page_travels_as_data():
    j, _ = _migrate("qemu-9.2", "none")
    assert j["status"] == "completed" and j["verified"] is True
    assert j["zero_pages"] == 0 and j["normal_pages"] == 1024


def test_a_live_guest_into_stale_ram():
    j, _ = _migrate("qemu-9.2", None, "zstd", dirty_rate=2000)
    assert j["status"] == "completed" and j["verified"] is True
    assert j["dirty_sync_count"] >= 2


def test_the_stale_fill_leaves_no_zero_page():
    blk = RAMBlock.anonymous("pc.ram", MiB)
    try:
        from qatmig_engine.guest import fill_stale

        fill_stale(blk)
        assert not any(blk.is_zero(o) for o in range(0, MiB, PAGE))
        assert bytes(blk.view[:8]) == bytes([STALE_BYTE]) * 8
    finally:
        blk.close()
