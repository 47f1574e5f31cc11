"""Conformance: migrations judged by the suite, per method, dialect and channel count, in each
direction of the cross matrix; parameters refused before anything starts.

Every migration here goes through ``multifd_pair``: the suite writes the source's RAM file,
gives both ends the same fresh VM uuid, puts the wire judge between them (a deviation fails the
test, naming the connection, channel, packet and field), and compares the destination's RAM
file with the source's itself. ``qatmig_cross`` runs a test once per direction:
``impl-to-impl``, ``impl-to-peer``, ``peer-to-impl`` (the peer is ``--qatmig-peer``).
"""

from __future__ import annotations

import pytest
from qatmig_engine.dialects import DIALECTS

METHODS = ("none", "zlib", "zstd", "qatzip", "qpl", "uadk")
CHANNELS = (1, 2, 4, 8)


def _check(result, guest, channels: int) -> None:  # type: ignore[no-untyped-def]
    """The suite's verdict on one migration (never the implementation's own)."""
    assert result.status == "completed", result.get("error")
    assert result.source_unchanged, "the source's RAM file changed during the migration"
    mismatch = result.get("ram_mismatch")
    assert result.verified is True, (
        f"destination RAM differs from the source: {mismatch}" if mismatch
        else "destination RAM differs from the source")
    wire = result.wire
    if wire is not None:  # ends with roles: what the judge saw on the wire
        totals = wire["totals"]
        assert totals["multifd_channels"] == channels, (
            f"{totals['multifd_channels']} multifd connections for multifd-channels={channels}")


def test_capabilities_are_declared(qatmig_impl) -> None:  # type: ignore[no-untyped-def]
    caps = qatmig_impl.capabilities()
    assert all(isinstance(c, str) for c in caps)
    assert "none" in caps, "every implementation must migrate with multifd-compression none"
    assert any(c.startswith("dialect:") for c in caps), "no dialect:<name> capability declared"


@pytest.mark.qatmig_cross
@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.qatmig_requires(m)) for m in METHODS]
)
def test_round_trip_per_method(multifd_pair, silesia_guest_memory, method) -> None:  # type: ignore[no-untyped-def]
    result = multifd_pair(channels=2, compression=method).migrate(silesia_guest_memory)
    _check(result, silesia_guest_memory, 2)
    if result.wire is not None:
        # The judge checked every packet's flag against the method; this checks the method
        # did its work: Silesia-like RAM compresses under every method but none.
        totals = result.wire["totals"]
        if method == "none":
            assert totals["payload_bytes"] == totals["page_bytes"], "none: payload != pages"
        else:
            assert totals["payload_bytes"] < totals["page_bytes"], (
                f"{method}: {totals['payload_bytes']} payload bytes for {totals['page_bytes']} "
                "bytes of pages: nothing was compressed")


@pytest.mark.qatmig_cross
@pytest.mark.parametrize(
    "dialect",
    [pytest.param(d, marks=pytest.mark.qatmig_requires(f"dialect:{d}")) for d in DIALECTS],
)
@pytest.mark.qatmig_requires("zlib")
def test_round_trip_per_dialect(multifd_pair, silesia_guest_memory, dialect) -> None:  # type: ignore[no-untyped-def]
    result = multifd_pair(channels=2, compression="zlib", dialect=dialect).migrate(
        silesia_guest_memory
    )
    _check(result, silesia_guest_memory, 2)
    if result.wire is not None:
        # What only the requested dialect puts on the wire (the judge checks the rest):
        # qemu-7.2 syncs at every EOS, 8.1+ at RAM_SAVE_FLAG_MULTIFD_FLUSH.
        flushes = sum(c.get("flushes", 0) for c in result.wire["channels"])
        if DIALECTS[dialect].flush_after_each_section:
            assert flushes == 0, f"{flushes} MULTIFD_FLUSH records in the {dialect} dialect"
        else:
            assert flushes > 0, f"no MULTIFD_FLUSH record: not the {dialect} dialect"


@pytest.mark.qatmig_cross
@pytest.mark.parametrize("channels", [1, 4])
def test_channel_counts(multifd_pair, silesia_guest_memory, channels) -> None:  # type: ignore[no-untyped-def]
    result = multifd_pair(channels=channels).migrate(silesia_guest_memory)
    _check(result, silesia_guest_memory, channels)


@pytest.mark.qatmig_cross
@pytest.mark.qatmig_requires("zstd")
def test_one_pair_migrates_twice(multifd_pair, silesia_guest_memory) -> None:  # type: ignore[no-untyped-def]
    pair = multifd_pair(channels=2, compression="zstd", level=3)
    for _ in range(2):
        _check(pair.migrate(silesia_guest_memory), silesia_guest_memory, 2)


@pytest.mark.qatmig_cross
@pytest.mark.qatmig_requires("max-bandwidth")
def test_max_bandwidth_still_verifies(multifd_pair, silesia_guest_memory) -> None:  # type: ignore[no-untyped-def]
    # Throttled to 1 GiB/s: slow enough to engage the limiter, fast enough for a test.
    result = multifd_pair(channels=2, max_bandwidth=1 << 30).migrate(silesia_guest_memory)
    _check(result, silesia_guest_memory, 2)


def _matrix() -> list:  # type: ignore[type-arg]
    cases = []
    for dialect, d in DIALECTS.items():
        for method in METHODS:
            if method not in d.methods:
                continue
            for channels in CHANNELS:
                cases.append(pytest.param(
                    method, dialect, channels, id=f"{method}-{dialect}-{channels}ch",
                    marks=pytest.mark.qatmig_requires(method, f"dialect:{dialect}")))
    return cases


@pytest.mark.qatmig_full_matrix
@pytest.mark.qatmig_cross
@pytest.mark.parametrize(("method", "dialect", "channels"), _matrix())
def test_full_matrix(multifd_pair, silesia_guest_memory, method, dialect, channels) -> None:  # type: ignore[no-untyped-def]
    """Every method x dialect x channel count (collected with ``--qatmig-matrix full``)."""
    result = multifd_pair(channels=channels, compression=method, dialect=dialect).migrate(
        silesia_guest_memory)
    _check(result, silesia_guest_memory, channels)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"channels": 0}, "Parameter 'multifd_channels' expects a value between 1 and 255"),
        ({"channels": 256}, "Parameter 'multifd-channels' expects uint8_t"),
        ({"compression": "lz4"}, "'lz4'"),
        ({"compression": "none", "level": 1}, "level"),
    ],
    ids=["channels-0", "channels-256", "unknown-method", "level-without-method"],
)
def test_bad_parameters_are_rejected_before_starting(multifd_pair, kwargs, text) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as info:
        multifd_pair(**kwargs)
    assert text in str(info.value), f"refused without saying {text!r}: {info.value}"


@pytest.mark.qat_hw
@pytest.mark.qatmig_requires("qatzip")
def test_qatzip_on_this_workers_device(multifd_pair, silesia_guest_memory, qat_device) -> None:  # type: ignore[no-untyped-def]
    result = multifd_pair(channels=2, compression="qatzip").migrate(silesia_guest_memory)
    _check(result, silesia_guest_memory, 2)
    src = result.get("source_result") or dict(result)
    assert src.get("qat_backend") == "hw", (
        f"qat_backend {src.get('qat_backend')!r} on a worker that owns a ready QAT device: "
        f"{src.get('qat_fallback_reasons')}")
