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
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.qatmig_requires("qatzip")]


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
