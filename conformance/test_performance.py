"""Conformance: performance thresholds. The seed table's metrics (QEMU's QATzip document:
total time, downtime, throughput, pages/s, send and recv CPU %) per method and channel count,
against the limits of the host profile in effect.

* The profile is ``--qatmig-profile FILE|NAME``; without one, the shipped ``software-only``
  when no QAT device is ready (its floors were measured on a 2-core machine with
  ``tools/derive_profile.py``). A QAT host without a profile reports, asserts nothing.
* The cells are ``perf.suite.methods`` (default none, zlib, zstd, qatzip) x
  ``perf.suite.channels``, on the Silesia guest of ``perf.suite.guest_size``
  (``qatmig_perf_guest``: the real corpus with ``--qatmig-corpus silesia``, else the stand-in).
* Limits: ``perf.suite.cells`` ``METHOD`` then ``METHOD-<N>ch``; the profile's ``perf.tests``
  entries beat them, ``perf.defaults`` fill in. A metric with no limit is reported (summary
  table, ``--qatmig-perf-report``), not asserted.
* Both ends run as processes; the suite measures their CPU itself (utime+stime of each
  process over the migration), the same way for the reference, ``exec:`` programs and QEMU.
* A cell passes when one of ``perf.suite.attempts`` migrations meets every limit (a shared
  machine has slow moments; an implementation that is slow every time fails every attempt).

They run only when asked: ``-m qatmig_perf`` (or any ``-m`` expression naming it), so that
a conformance verdict never depends on the machine's load (marker ``qatmig_perf_cell``).
"""

from __future__ import annotations

import pytest

from pytest_qatmig.fixtures import get_state
from pytest_qatmig.profile import PerfSuite


def _suite(config: pytest.Config) -> tuple[PerfSuite, object]:
    profile = get_state(config).perf_profile()
    return ((profile.suite if profile is not None else None) or PerfSuite()), profile


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.originalname != "test_seed_metrics":
        return
    suite, _profile = _suite(metafunc.config)
    metafunc.parametrize(("method", "channels"), [
        pytest.param(m, ch, id=f"{m}-{ch}ch", marks=pytest.mark.qatmig_requires(m))
        for m in suite.methods for ch in suite.channels
    ])


@pytest.mark.qatmig_perf_cell
@pytest.mark.qatmig_perf
def test_seed_metrics(multifd_pair, qatmig_perf_guest, method, channels, request) -> None:  # type: ignore[no-untyped-def]
    suite, profile = _suite(request.config)
    limits, where = suite.limits(method, channels)
    label = getattr(profile, "label", "no host profile")
    origins = {k: f"{label} {w}" for k, w in where.items()}
    pair = multifd_pair(channels=channels, compression=method,
                        max_bandwidth=suite.max_bandwidth)
    tried: list[list[str]] = []
    for attempt in range(1, suite.attempts + 1):
        pair.migrate(qatmig_perf_guest, perf_limits=limits, perf_origins=origins,
                     attempt=attempt, retry=True, timeout=600.0)
        if not pair.perf_failures:
            return
        tried.append(pair.perf_failures)
    lines = "\n".join(f"  attempt {i}: {'; '.join(f)}" for i, f in enumerate(tried, 1))
    pair.fail_perf(
        f"qatmig_perf: {method} with {channels} channel(s) on the "
        f"{qatmig_perf_guest.size >> 20} MiB {qatmig_perf_guest.corpus} guest missed the "
        f"limits of {label} in each of {len(tried)} attempt(s):\n{lines}")
