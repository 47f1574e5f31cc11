"""Conformance: faults the suite injects itself, mid-run, into any implementation with roles.

The suite's tap (``qatmig_engine.tap.TapProxy``) sits between the two ends of every migration;
here it kills one multifd connection in the middle of the stream. A migration that lost a
connection has lost pages: the destination must fail (within a bounded time) and never report
``completed``; the source's RAM file stays untouched. QAT backend failures mid-run (which only
the implementation can inject into its own compressor) are in test_fallback.py.
"""

from __future__ import annotations

import time

import pytest

from .test_fallback import FAULT_GRACE, FAULT_TIMEOUT

#: Four multifd packets (512 KiB each) at least, so that a channel is cut between two.
MIN_GUEST = 2 << 20


@pytest.mark.qatmig_cross
@pytest.mark.parametrize("mode", ["reset", "eof"])
def test_a_channel_killed_mid_run_fails_cleanly(
    multifd_pair, silesia_guest_memory, mode  # type: ignore[no-untyped-def]
) -> None:
    """The suite's tap kills the first multifd connection that has carried a quarter of its
    share of the guest (``reset``: both sides get a TCP reset; ``eof``: the destination sees
    a clean end of stream mid-packet). Pages are missing: the destination must fail, never
    report ``completed``, and not hang. (The source may report completed: without a return
    path QEMU's source cannot know either.)"""
    from qatmig_engine.tap import ChannelCut

    channels = 2
    guest = silesia_guest_memory
    if guest.size < MIN_GUEST:
        pytest.skip(f"a {guest.size}-byte guest is too small to cut a channel mid-run: "
                    f"--qatmig-guest-size {MIN_GUEST >> 20}M or more")
    cut = ChannelCut(after_bytes=guest.size // (channels * 4), mode=mode)
    # No judge: the stream is cut by the suite itself, its truncation is no defect.
    pair = multifd_pair(channels=channels, compression="none", judge=False)
    t0 = time.monotonic()
    result = pair.migrate(guest, timeout=FAULT_TIMEOUT, cut=cut)
    elapsed = time.monotonic() - t0
    assert result.get("channel_cut"), (
        f"no multifd connection carried {cut.after_bytes} bytes: nothing was cut")
    dst = result.get("destination_result") or {}
    assert dst.get("status") != "completed", (
        f"the destination reported completed although multifd connection "
        f"{result['channel_cut']['connection']} was killed after {cut.after_bytes} bytes "
        f"({'reset' if mode == 'reset' else 'end of stream mid-packet'})")
    assert result.status == "failed"
    assert dst.get("error"), "the destination failed without an error"
    assert result.get("source_unchanged") is True, "the source's RAM file was modified"
    assert elapsed < FAULT_TIMEOUT + FAULT_GRACE, (
        f"the broken migration took {elapsed:.1f} s to end (idle timeout {FAULT_TIMEOUT:g} s)")
