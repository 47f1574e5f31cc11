"""Conformance: guests at the edges, and statistics the suite checks against the wire.

Edge guests (``pytest_qatmig.edge_guests``): zero pages migrated into a destination whose RAM is
*not* zero beforehand (a destination that skips zero pages, or a source that counts them without
sending them, leaves stale bytes the suite's digest sees); a guest of 16 MiB + 4 KiB (the last
packet of the block holds one page); a sparse guest above 4 GiB (offsets that need 64 bits;
``--qatmig-matrix full``); a guest of seven RAM blocks named and sized as QEMU's (packets,
zero-page records and stream state across block boundaries).

Honest statistics: the source's figures are compared with what the wire judge counted between
the two ends: pages by kind, bytes, throughput = bytes x 8 / time, downtime > 0 (the guest was
stopped), compression ratio = page bytes / payload bytes, one connection per channel, and
max-bandwidth honoured within +-5 % at a limit well below the unthrottled rate measured in the
same test.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_qatmig.edge_guests import ABOVE_4G_DATA_PAGES, QEMU_LIKE_RAMBLOCKS

pytestmark = pytest.mark.qatmig_cross

#: Byte the destination's RAM holds before a migration into "dirty" RAM.
STALE = 0xA5


def _completed(result: Any) -> dict[str, Any]:
    assert result.status == "completed", result.get("error")
    assert result.verified is True, (
        f"destination RAM differs from the source: {result.get('ram_mismatch') or ''}")
    if result.wire is None:
        pytest.skip("UNIMPLEMENTED: no wire judge between these ends (they lack the roles)")
    return dict(result.wire["totals"])


# ------------------------------------------------------------------------------ edge guests
def _zero_pages_in(path: Any, page: int = 4096) -> int:
    zero = bytes(page)
    with open(path, "rb") as f:
        return sum(1 for chunk in iter(lambda: f.read(page), b"") if chunk == zero)


@pytest.mark.parametrize(
    ("dialect", "detection"),
    [pytest.param("qemu-7.2", None, marks=pytest.mark.qatmig_requires("dialect:qemu-7.2")),
     pytest.param("qemu-9.2", None, marks=pytest.mark.qatmig_requires("dialect:qemu-9.2")),
     pytest.param("qemu-9.2", "none", marks=pytest.mark.qatmig_requires(
         "dialect:qemu-9.2", "zero-page-detection"))],
    ids=["qemu-7.2", "qemu-9.2", "qemu-9.2-detection-none"])
def test_zero_pages_reach_a_destination_whose_ram_is_not_zero(
    multifd_pair, guest_with_zero_pages, dialect, detection  # type: ignore[no-untyped-def]
) -> None:
    # qemu-7.2: zero pages travel as ZERO records on the main channel (zero-page-detection
    # legacy); 9.x: as offsets in the packets (multifd); with "none" every page is data.
    options = {"zero_page_detection": detection} if detection else {}
    result = multifd_pair(channels=2, dialect=dialect, **options).migrate(
        guest_with_zero_pages, destination_fill=STALE)
    totals = _completed(result)
    pages = guest_with_zero_pages.pages
    zeros = _zero_pages_in(guest_with_zero_pages.path) if detection != "none" else 0
    seen = (totals["normal_pages"], totals["zero_pages"])
    if str(result.get("source_implementation", "")).startswith("qemu"):
        # QEMU also sends its firmware and ROM blocks' pages.
        assert seen[0] >= pages - zeros and seen[1] >= zeros, seen
        return
    assert seen == (pages - zeros, zeros), (
        f"{seen[0]} normal and {seen[1]} zero pages crossed the wire; the guest has "
        f"{pages - zeros} non-zero and {zeros} zero pages (zero-page-detection "
        f"{detection or 'the dialect default'}: "
        + ("every page as data)" if detection == "none" else "each zero page as a zero page)"))


#: Pages/s the source's workload dirties in the final-round test: on a 16 MiB guest (4096
#: pages) the bulk round alone leaves hundreds dirty, so the stop-and-copy round always carries
#: pages whatever the host's speed.
DIRTY_RATE = 3000


@pytest.mark.qatmig_requires("dirty-rate")
@pytest.mark.parametrize(
    "dialect", [pytest.param(d, marks=pytest.mark.qatmig_requires(f"dialect:{d}"))
                for d in ("qemu-7.2", "qemu-9.2")])
def test_the_final_dirty_round_arrives(
    multifd_pair, guest_with_zero_pages, dialect  # type: ignore[no-untyped-def]
) -> None:
    # The source's workload dirties its guest during precopy; the destination must end with
    # the source's RAM as it was when the guest stopped (exec: send --final-image), i.e. the
    # pages dirtied in the last iteration and during it all arrived in the stop-and-copy round.
    result = multifd_pair(channels=2, dialect=dialect).migrate(
        guest_with_zero_pages, dirty_rate=DIRTY_RATE)
    assert result.status == "completed", result.get("error")
    changed = result.get("workload_pages_changed")
    assert changed, (
        f"the source was asked to dirty {DIRTY_RATE} pages/s during precopy, but its RAM at "
        f"stop time differs from the image in {changed!r} pages: no workload ran")
    _completed(result)


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.qatmig_requires(m)) for m in ("none", "zlib")])
def test_a_guest_that_is_not_a_multiple_of_a_packet(multifd_pair, guest_odd_size, method) -> None:  # type: ignore[no-untyped-def]
    result = multifd_pair(channels=2, compression=method).migrate(guest_odd_size)
    totals = _completed(result)
    # A static guest: every page exactly once (the judge also checks each arrived).
    assert totals["normal_pages"] + totals["zero_pages"] == guest_odd_size.pages, (
        f"{totals['normal_pages']} normal + {totals['zero_pages']} zero pages crossed the "
        f"wire for a guest of {guest_odd_size.pages} pages")


def test_a_sparse_guest_with_data_above_4_gib(
    multifd_pair, guest_above_4g, qatmig_direction, qatmig_impl, request  # type: ignore[no-untyped-def]
) -> None:
    # One direction: both ends of impl-to-impl are the implementation (a sender truncating
    # offsets and a receiver truncating them are both seen); the holes cost nothing to an
    # implementation that keeps them sparse, the zero pages 8 bytes each on the wire
    # (zero-page-detection multifd, the 9.x dialects) -- the cost is measured in
    # docs/conformance.md.
    if qatmig_direction != "impl-to-impl":
        pytest.skip("impl-to-impl covers both ends; a 4 GiB guest once is enough")
    qemu = bool(getattr(qatmig_impl, "other_ramblocks", False))
    if qemu and request.config.getoption("--qatmig-matrix") != "full":
        pytest.skip("a real QEMU reads all 4 GiB of its RAM (about a minute here): run with "
                    "--qatmig-matrix full")
    result = multifd_pair(channels=2).migrate(guest_above_4g, timeout=300)
    totals = _completed(result)
    above = [b for b in (result.wire or {}).get("ramblocks", {}).values() if b > 1 << 32]
    assert above, f"the source announced no RAM block above 4 GiB: {result.wire['ramblocks']}"
    # A real QEMU also sends its firmware and ROM blocks' pages.
    assert totals["normal_pages"] == ABOVE_4G_DATA_PAGES or (
        qemu and totals["normal_pages"] > ABOVE_4G_DATA_PAGES), (
        f"{totals['normal_pages']} normal pages crossed the wire; the guest has "
        f"{ABOVE_4G_DATA_PAGES} non-zero pages (half of them above 4 GiB)")


@pytest.mark.qatmig_requires("ramblocks")
@pytest.mark.parametrize(
    ("dialect", "method"),
    [pytest.param("qemu-7.2", "none", marks=pytest.mark.qatmig_requires("dialect:qemu-7.2")),
     pytest.param("qemu-9.2", "zstd", marks=pytest.mark.qatmig_requires("dialect:qemu-9.2",
                                                                        "zstd"))],
    ids=["qemu-7.2-none", "qemu-9.2-zstd"])
def test_several_ram_blocks_with_qemu_names_and_sizes(
    multifd_pair, guest_qemu_like_ramblocks, dialect, method  # type: ignore[no-untyped-def]
) -> None:
    # Every block must arrive whole into a destination whose RAM is stale: a source that
    # sends only the first block, a packet that carries the next block's pages under the
    # previous block's name, a qemu-7.2 ZERO record that keeps CONTINUE across a block
    # change, or a receiver that writes every block into the first all leave blocks the
    # suite's per-block digests see. qemu-7.2 and none: zero pages on the main channel with
    # an idstr per block change; qemu-9.2 and zstd: one stream per channel across blocks.
    guest = guest_qemu_like_ramblocks
    result = multifd_pair(channels=2, compression=method, dialect=dialect).migrate(
        guest, destination_fill=STALE)
    totals = _completed(result)
    want = {"pc.ram": guest.size, **dict(QEMU_LIKE_RAMBLOCKS)}
    assert result.wire["ramblocks"] == want, (
        f"the source announced the RAM blocks {result.wire['ramblocks']}; the guest has {want}")
    differing = {name: b for name, b in (result.get("ramblocks") or {}).items()
                 if b["destination_digest"] != b["source_digest"]}
    assert not differing, f"RAM blocks that arrived different: {sorted(differing)}"
    assert totals["normal_pages"] + totals["zero_pages"] == guest.pages, (
        f"{totals['normal_pages']} normal + {totals['zero_pages']} zero pages crossed the "
        f"wire for a static guest of {guest.pages} pages in {len(want)} RAM blocks")


# ------------------------------------------------------------------------------ honest stats
def _honest_stats(result: Any, totals: dict[str, Any], channels: int,
                  qemu_bytes_tolerance: float = 0.02) -> None:
    who = f"the source ({result.get('source_implementation')})"
    assert totals["multifd_channels"] == channels, (
        f"{totals['multifd_channels']} multifd connections for multifd-channels={channels}")
    # Page counts within 2 % (QEMU counts at enqueue time and leaves out a few ROM pages the
    # wire carries): a source that counts packets, or doubles, is far outside.
    for kind in ("normal_pages", "zero_pages"):
        reported, seen = result.get(kind), totals[kind]
        assert reported is not None and abs(reported - seen) <= 0.02 * seen, (
            f"{who} reports {reported} {kind.replace('_', ' ')}; the wire carried {seen}")
    qemu = str(result.get("source_implementation", "")).startswith("qemu")
    if qemu and result.get("transferred_bytes") is None:
        # QEMU <= 8.0 counts compressed migrations in uncompressed bytes; the adapter keeps
        # that figure as qemu_mbps and reports no wire bytes: nothing to compare.
        assert result.get("throughput_mbps") is None
    else:
        for key in ("transferred_bytes", "total_time_ms", "throughput_mbps", "downtime_ms"):
            assert result.get(key) is not None, f"{who} reports no {key}"
        _bytes_and_rate(result, totals, who, qemu_bytes_tolerance)
    # QEMU reports whole milliseconds: a stop shorter than 1 ms reads 0 there.
    assert result.downtime_ms is not None and (result.downtime_ms > 0 or (
        qemu and result.downtime_ms == 0)), (
        f"{who} reports downtime {result.downtime_ms!r} ms: the guest was stopped for the last "
        "round, so it cannot be 0")
    assert result.downtime_ms < result.total_time_ms, (
        f"{who} reports downtime {result.downtime_ms} ms of a {result.total_time_ms} ms "
        "migration: the guest ran during precopy, so downtime is shorter than the migration")
    ratio = result.get("compression_ratio")
    if totals["payload_bytes"]:
        expected = totals["page_bytes"] / totals["payload_bytes"]
        if ratio is None and qemu:
            return  # query-migrate has no compression ratio to check
        assert ratio is not None, f"{who} reports no compression_ratio"
        assert abs(ratio - expected) <= 0.02 * expected, (
            f"{who} reports compression ratio {ratio}; the wire shows {expected:.3f} "
            "(page bytes / payload bytes)")


def _bytes_and_rate(result: Any, totals: dict[str, Any], who: str,
                    qemu_tolerance: float = 0.02) -> None:
    wire = totals["wire_bytes"]
    # Every byte counts: packet headers are ~1.5 % of a compressed stream, so a count of
    # payloads alone must not pass; QEMU counts its own way (2 %).
    tol = qemu_tolerance if str(result.get("source_implementation", "")).startswith(
        "qemu") else 0.002
    assert abs(result.transferred_bytes - wire) <= tol * wire, (
        f"{who} reports {result.transferred_bytes} bytes transferred; {wire} crossed the wire")
    # Times in whole milliseconds (QEMU's) on a short migration: 2 ms of slack either way.
    total_s = result.total_time_ms / 1000.0
    setup_s = (result.get("setup_time_ms") or 0.0) / 1000.0
    lo = wire * 8 / (total_s + 0.002) / 1e6
    hi = wire * 8 / max(total_s - setup_s - 0.002, 1e-3) / 1e6
    # QEMU computes mbps over a shorter span than its total-time (up to a third more on
    # migrations under 0.1 s); others must agree within 10 %. A doubled figure fails both.
    slack = 1.5 if str(result.get("source_implementation", "")).startswith("qemu") else 1.1
    assert 0.9 * lo <= result.throughput_mbps <= slack * hi, (
        f"{who} reports {result.throughput_mbps} Mbit/s; {wire} bytes in {total_s:.3f} s "
        f"(setup {setup_s:.3f} s) is {lo:.1f}..{hi:.1f}")
    if str(result.get("source_implementation", "")).startswith("qemu"):
        return  # QEMU's pages-per-second is its last iteration's rate
    pages = totals["normal_pages"] + totals["zero_pages"]
    plo, phi = pages / (total_s + 0.002), pages / max(total_s - setup_s - 0.002, 1e-3)
    pps = result.get("pages_per_second")
    assert pps is not None and 0.9 * plo <= pps <= 1.1 * phi, (
        f"{who} reports {pps} pages/s; {pages} pages (normal + zero) in {total_s:.3f} s "
        f"(setup {setup_s:.3f} s) is {plo:.0f}..{phi:.0f}")


@pytest.mark.parametrize(
    ("method", "channels", "dialect", "guest"),
    [pytest.param("none", 2, None, "guest_with_zero_pages",
                  marks=pytest.mark.qatmig_requires("none")),
     pytest.param("zstd", 3, None, "guest_with_zero_pages",
                  marks=pytest.mark.qatmig_requires("zstd")),
     # Zero pages as ZERO records on the main channel: most of the bytes are the main
     # channel's, so a count of the multifd channels alone is far off.
     pytest.param("none", 2, "qemu-7.2", "guest_mostly_zero",
                  marks=pytest.mark.qatmig_requires("none", "dialect:qemu-7.2"))],
    ids=["none-2ch", "zstd-3ch", "none-2ch-qemu-7.2-mostly-zero"])
def test_statistics_match_the_wire(  # type: ignore[no-untyped-def]
    multifd_pair, request, method, channels, dialect, guest
) -> None:
    result = multifd_pair(channels=channels, compression=method, dialect=dialect).migrate(
        request.getfixturevalue(guest))
    # QEMU 7.2 counts a few bytes per zero page fewer than its ZERO records take on the
    # wire: on a mostly-zero guest that is several per cent of the stream.
    _honest_stats(result, _completed(result), channels,
                  qemu_bytes_tolerance=0.06 if guest == "guest_mostly_zero" else 0.02)


@pytest.mark.qatmig_requires("max-bandwidth")
def test_max_bandwidth_is_honoured(multifd_pair, silesia_guest_memory, request) -> None:  # type: ignore[no-untyped-def]
    """The throttled wire rate is within +-5 % of a limit set well below the unthrottled rate
    measured just before. Above the limit fails at once: load only ever slows an end down, so
    an overshoot is the implementation's. Below it, the shared host may have lost speed since
    the unthrottled run: both runs are measured once more and every attempt is recorded
    (``qatmig_max_bandwidth`` user properties, and the failure text)."""
    tried: list[str] = []
    result = None
    for attempt in (1, 2):
        free = multifd_pair(channels=2).migrate(silesia_guest_memory)
        t_free = _completed(free)
        unthrottled = t_free["wire_bytes"] / max(free.total_time_ms / 1000.0, 1e-3)
        # Well below what the host reached, and long enough (~2 s) for a 100 ms window to
        # average.
        limit = int(min(unthrottled / 3, t_free["wire_bytes"] / 2.0))
        result = multifd_pair(channels=2, max_bandwidth=limit).migrate(silesia_guest_memory)
        totals = _completed(result)
        rate = totals["wire_bytes"] / (result.total_time_ms / 1000.0)
        request.node.user_properties.append(("qatmig_max_bandwidth", {
            "attempt": attempt, "limit": limit, "unthrottled": round(unthrottled),
            "rate": round(rate), "wire_bytes": totals["wire_bytes"],
            "total_time_ms": result.total_time_ms}))
        if 0.95 * limit <= rate <= 1.05 * limit:
            return
        tried.append(f"attempt {attempt}: max-bandwidth {limit} B/s (unthrottled: "
                     f"{unthrottled:.0f} B/s): {totals['wire_bytes']} bytes in "
                     f"{result.total_time_ms:.0f} ms = {rate:.0f} B/s, outside +-5 %")
        if rate > 1.05 * limit:
            break
    text = "; ".join(tried)
    if str(result.get("source_implementation", "")).startswith("qemu"):  # type: ignore[union-attr]
        # A finding about QEMU, kept visible: 7.2 counts multifd bytes against the limit
        # at enqueue time, uncompressed, and overshoots on short migrations.
        pytest.xfail(f"finding about the QEMU source: {text}")
    pytest.fail(text, pytrace=False)
