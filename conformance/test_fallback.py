"""Conformance: QATzip without QAT hardware -- fallback, and the truth about the backend.

On a host (or xdist worker) without a ready QAT device:

* ``multifd-compression qatzip`` with ``qat-backend auto`` migrates in software and says so:
  ``qat_backend`` is ``sw`` (an implementation that reports ``hw`` here cannot have used a
  device) with the reasons it fell back;
* ``qat-backend hw`` with ``qat-fallback off`` fails before migrating any RAM, with an error
  naming what is missing.

With a device, ``test_qatzip_on_this_workers_device`` (test_migration.py) checks the hardware
path. Parameters beyond QEMU's (``--qat-backend``, ``--qat-fallback``) are the engine's and the
exec: contract passes them through (docs/conformance.md).

Faults mid-run: the QAT backend fails from a channel's second packet on
(``--qat-inject-fault``, capability ``qat-fault-injection``: only the implementation can fault
its own compressor). With the fallback on, every page still arrives (the suite's digest) and
the source says which channel fell back; with it off, the migration fails with the library's
return code named, the destination never ``completed``, the source's RAM untouched.
A connection killed mid-run (any method) is in test_faults.py.
"""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.qatmig_requires("qatzip")]

#: Seconds of silence after which both ends give up (their ``--timeout``) in the fault tests.
FAULT_TIMEOUT = 10.0
#: What a failed migration may take beyond that before it counts as a hang.
FAULT_GRACE = 15.0
#: Injected from each channel's packet 1 on: packet 0 goes through the backend, then it fails.
AFTER_PACKETS = 1


def _no_device(qat_device) -> None:  # type: ignore[no-untyped-def]
    if qat_device.hw_ready:
        pytest.skip(f"this worker owns a ready QAT device ({qat_device.bdf}): the fallback "
                    "checks need a host or worker without one (--qatmig-devices sw)")


@pytest.mark.qatmig_cross
def test_qatzip_without_a_device_falls_back_to_software_and_says_why(
    multifd_pair, guest_small_text, qat_device  # type: ignore[no-untyped-def]
) -> None:
    _no_device(qat_device)
    result = multifd_pair(channels=2, compression="qatzip", qat_backend="auto").migrate(
        guest_small_text)
    assert result.status == "completed", result.get("error")
    assert result.verified is True, "destination RAM differs from the source"
    src = result.get("source_result") or dict(result)
    assert src.get("qat_backend") == "sw", (
        f"qat_backend {src.get('qat_backend')!r} reported on a host without a ready QAT device "
        "(expected 'sw')")
    assert src.get("qat_fallback_reasons"), "fell back to software without saying why"


def test_hardware_only_without_a_device_fails_before_migrating(
    multifd_pair, guest_small_text, qat_device  # type: ignore[no-untyped-def]
) -> None:
    _no_device(qat_device)
    # No judge: a source that fails before connecting leaves the tap nothing to judge.
    pair = multifd_pair(channels=2, compression="qatzip", qat_backend="hw", qat_fallback="off",
                        judge=False)
    result = pair.migrate(guest_small_text, timeout=5)
    assert result.status == "failed", (
        "qat-backend hw with qat-fallback off migrated on a host without a QAT device")
    src = result.get("source_result") or {}
    error = str(src.get("error") or result.get("error") or "")
    assert "qat" in error.lower() or "hardware" in error.lower(), (
        f"the error does not say what is missing: {error!r}")
    dst = result.get("destination_result") or {}
    assert not dst.get("normal_pages"), (
        f"the destination received {dst.get('normal_pages')} pages before the source noticed "
        "the missing hardware")


# ------------------------------------------------------------------------ faults mid-run
def _fault(rc: str) -> str:
    return f"after_packets={AFTER_PACKETS},rc={rc}" if rc != "partial-output" else \
        f"after_packets={AFTER_PACKETS},mode=truncate"


def _backend(qat_device) -> str:  # type: ignore[no-untyped-def]
    """The backend the fault hits: the device's where this worker owns a ready one, else the
    software backend (the injected fault then stands for the library failing)."""
    return "auto" if qat_device.hw_ready else "sw"


@pytest.mark.qatmig_requires("qat-fault-injection")
@pytest.mark.parametrize("rc", ["QZ_FAIL", "QZ_NOSW_NO_HW", "partial-output"])
def test_a_qat_failure_mid_run_falls_back_and_loses_no_page(
    multifd_pair, guest_odd_size, qat_device, rc  # type: ignore[no-untyped-def]
) -> None:
    """The backend fails from each channel's packet 1 on (``partial-output``: it returns QZ_OK
    with half the output); with qat-fallback on the failing packet is compressed again in
    software, so the destination's RAM equals the source's and the wire stays valid."""
    pair = multifd_pair(channels=2, compression="qatzip", qat_backend=_backend(qat_device),
                        qat_fallback="on", qat_inject_fault=_fault(rc))
    result = pair.migrate(guest_odd_size, timeout=60)
    assert result.status == "completed", result.get("error")
    assert result.verified is True, (
        f"pages lost when the QAT backend failed mid-run: {result.get('ram_mismatch')}")
    src = result.get("source_result") or {}
    events = src.get("qat_fallback_events")
    assert isinstance(events, list) and events, (
        "the backend failed mid-run and the source fell back to software without saying so "
        f"(qat_fallback_events {events!r})")
    channels = {e.get("channel") for e in events if isinstance(e, dict)}
    assert channels and channels <= {0, 1}, (
        f"qat_fallback_events name channels {sorted(map(str, channels))}, the migration had "
        "channels 0 and 1")


@pytest.mark.qatmig_requires("qat-fault-injection")
@pytest.mark.parametrize("rc", ["QZ_FAIL", "QZ_NOSW_NO_HW"])
def test_a_qat_failure_mid_run_with_fallback_off_fails_cleanly(
    multifd_pair, guest_odd_size, qat_device, rc  # type: ignore[no-untyped-def]
) -> None:
    """With qat-fallback off the same fault ends the migration: the error names the return
    code, the destination does not report ``completed``, the source's RAM is unchanged."""
    if qat_device.hw_ready:
        # The fault must hit a running hardware backend: without a fault, hw only must work.
        plain = multifd_pair(channels=2, compression="qatzip", qat_backend="auto",
                             qat_fallback="off", judge=False).migrate(guest_odd_size,
                                                                      timeout=FAULT_TIMEOUT)
        if plain.status != "completed":
            pytest.skip(f"the implementation cannot use this worker's device "
                        f"{qat_device.bdf} with qat-fallback off even without a fault (see "
                        f"test_qatzip_on_this_workers_device): {plain.get('error')}")
    pair = multifd_pair(channels=2, compression="qatzip", qat_backend=_backend(qat_device),
                        qat_fallback="off", qat_inject_fault=_fault(rc), judge=False)
    t0 = time.monotonic()
    result = pair.migrate(guest_odd_size, timeout=FAULT_TIMEOUT)
    elapsed = time.monotonic() - t0
    assert result.status == "failed", (
        "qat-fallback off, the QAT backend failed mid-run, and the migration completed")
    dst = result.get("destination_result") or {}
    assert dst.get("status") != "completed", (
        "the destination reported completed although its source failed mid-run")
    src = result.get("source_result") or {}
    error = str(src.get("error") or "")
    assert rc in error, f"the source's error does not name the return code {rc}: {error!r}"
    assert result.get("source_unchanged") is True, "the source's RAM file was modified"
    assert elapsed < FAULT_TIMEOUT + FAULT_GRACE, (
        f"the failed migration took {elapsed:.1f} s to end (idle timeout {FAULT_TIMEOUT:g} s)")
