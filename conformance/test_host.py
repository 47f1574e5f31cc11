"""Conformance of the host to its profile (``--qatmig-profile``)."""

from __future__ import annotations

import pytest

from pytest_qatmig.fixtures import get_state


def test_host_matches_its_profile(request: pytest.FixtureRequest) -> None:
    state = get_state(request.config)
    if state.profile is None:
        pytest.skip("no host profile: pass --qatmig-profile FILE.yaml (see fixtures/hosts/)")
    findings = state.profile.device_findings(state.ready())
    assert not findings, "; ".join(findings)
