"""Conformance: migrations that verify, per method, dialect and channel count; bad input."""

from __future__ import annotations

import pytest

METHODS = ("none", "zlib", "zstd", "qatzip", "qpl", "uadk")
DIALECTS = ("qemu-7.2", "qemu-9.0", "qemu-9.2")


def _check(result, guest) -> None:  # type: ignore[no-untyped-def]
    assert result.status == "completed", result.get("error")
    assert result.verified is True, "destination RAM differs from the source"
    assert result.normal_pages + result.zero_pages >= guest.pages
    assert result.transferred_bytes > 0


def test_capabilities_are_declared(qatmig_impl) -> None:  # type: ignore[no-untyped-def]
    caps = qatmig_impl.capabilities()
    assert all(isinstance(c, str) for c in caps)
    assert "none" in caps, "every implementation must migrate with multifd-compression none"


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.qatmig_requires(m)) for m in METHODS]
)
def test_round_trip_per_method(multifd_pair, silesia_guest_memory, method) -> None:  # type: ignore[no-untyped-def]
    result = multifd_pair(channels=2, compression=method).migrate(silesia_guest_memory)
    _check(result, silesia_guest_memory)
    assert result.get("multifd_compression", method) == method


@pytest.mark.parametrize(
    "dialect",
    [pytest.param(d, marks=pytest.mark.qatmig_requires(f"dialect:{d}")) for d in DIALECTS],
)
@pytest.mark.qatmig_requires("zlib")
def test_round_trip_per_dialect(multifd_pair, silesia_guest_memory, dialect) -> None:  # type: ignore[no-untyped-def]
    result = multifd_pair(channels=2, compression="zlib", dialect=dialect).migrate(
        silesia_guest_memory
    )
    _check(result, silesia_guest_memory)


@pytest.mark.parametrize("channels", [1, 4])
def test_channel_counts(multifd_pair, silesia_guest_memory, channels) -> None:  # type: ignore[no-untyped-def]
    result = multifd_pair(channels=channels).migrate(silesia_guest_memory)
    _check(result, silesia_guest_memory)


@pytest.mark.qatmig_requires("zstd")
def test_one_pair_migrates_twice(multifd_pair, silesia_guest_memory) -> None:  # type: ignore[no-untyped-def]
    pair = multifd_pair(channels=2, compression="zstd", level=3)
    for _ in range(2):
        _check(pair.migrate(silesia_guest_memory), silesia_guest_memory)


@pytest.mark.qatmig_requires("max-bandwidth")
def test_max_bandwidth_still_verifies(multifd_pair, silesia_guest_memory) -> None:  # type: ignore[no-untyped-def]
    # Throttled to 1 GiB/s: slow enough to engage the limiter, fast enough for a test.
    result = multifd_pair(channels=2, max_bandwidth=1 << 30).migrate(silesia_guest_memory)
    _check(result, silesia_guest_memory)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": 0},
        {"channels": 256},
        {"compression": "lz4"},
        {"compression": "none", "level": 1},
    ],
    ids=["channels-0", "channels-256", "unknown-method", "level-without-method"],
)
def test_bad_parameters_are_rejected_before_starting(multifd_pair, kwargs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        multifd_pair(**kwargs)


@pytest.mark.qatmig_requires("zlib")
def test_level_out_of_range_is_rejected(multifd_pair) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        multifd_pair(compression="zlib", level=10)


@pytest.mark.qat_hw
@pytest.mark.qatmig_requires("qatzip")
def test_qatzip_on_this_workers_device(multifd_pair, silesia_guest_memory, qat_device) -> None:  # type: ignore[no-untyped-def]
    result = multifd_pair(channels=2, compression="qatzip").migrate(silesia_guest_memory)
    _check(result, silesia_guest_memory)
    if "qat_backend" in result:
        assert result.qat_backend == "hw", result.get("qat_fallback_reasons")
