"""pytest11 entry point ``qatmig``: ``pytest -p qatmig``.

Options and ini keys, markers, the report header, the performance summary, ``qatmig_requires``
/ ``qat_hw`` skipping, the per-device performance lock and xdist device allocation. Fixtures live
in :mod:`pytest_qatmig.fixtures`. Imports nothing heavy at load time: no engine, no cffi, no
zstandard, no yaml (they are imported inside fixtures and hooks when needed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

import pytest

from .devices import perf_lock
from .edge_guests import (
    guest_above_4g,
    guest_mostly_zero,
    guest_odd_size,
    guest_qemu_like_ramblocks,
    guest_small_text,
    guest_with_zero_pages,
)
from .fixtures import (
    get_state,
    multifd_pair,
    qat_device,
    qatmig_direction,
    qatmig_impl,
    qatmig_peer,
    qatmig_perf_guest,
    silesia_guest_memory,
    tls_creds,
)
from .results import PERF_LEGEND, perf_table
from .state import OPTIONS, is_worker

__all__ = [
    "guest_above_4g", "guest_mostly_zero", "guest_odd_size", "guest_qemu_like_ramblocks",
    "guest_small_text",
    "guest_with_zero_pages",
    "multifd_pair", "qat_device", "qatmig_direction", "qatmig_impl", "qatmig_peer",
    "qatmig_perf_guest", "silesia_guest_memory", "tls_creds",
]

MARKERS = (
    "qat_hw: needs a ready Intel QAT device owned by this worker; skips (with the reason) "
    "when there is none. Enable: a QAT device with 'dc' in qat/cfg_services and qat/state up, "
    "and --qatmig-devices=auto (default) or a list of its PCI addresses.",
    "qatmig_perf(min_mbps=None, max_send_cpu=None, max_recv_cpu=None, max_downtime_ms=None, "
    "max_total_ms=None, min_pages_per_second=None): check every multifd_pair migration of the "
    "test against these thresholds (the host profile may set defaults and per-test overrides); "
    "the test holds its device's performance lock while it runs.",
    "qatmig_cross: run the test once per direction of the cross matrix (impl-to-impl, "
    "impl-to-peer, peer-to-impl; the peer is --qatmig-peer); multifd_pair then pairs those ends.",
    "qatmig_full_matrix: part of the full conformance matrix; collected only with "
    "--qatmig-matrix full (deselected otherwise).",
    "qatmig_perf_cell: a cell of the conformance suite's performance table (also qatmig_perf); "
    "collected only when -m names qatmig_perf (e.g. -m qatmig_perf), so that a conformance "
    "run's verdict never depends on the machine's load.",
    "qatmig_requires(*capabilities): skip (UNIMPLEMENTED) unless the implementation under test "
    "has every capability, e.g. 'qatzip', 'zstd', 'dialect:qemu-7.2', 'tls'.",
)

METAVARS = {
    "impl": "SPEC", "devices": "auto|sw|BDF,...", "profile": "FILE.yaml",
    "guest_size": "SIZE", "corpus": "stand-in|silesia|DIR", "sysfs_root": "DIR",
    "peer": "SPEC", "matrix": "default|full", "perf_report": "FILE.json",
}
PERF_LOCK_TIMEOUT = 1800.0
_PERF_LOCK = pytest.StashKey[contextlib.ExitStack]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qatmig", "QEMU multifd / QAT live migration (pytest-qatmig)")
    for name, (default, help_text) in OPTIONS.items():
        flag = "--qatmig-" + name.replace("_", "-")
        shown = f" (ini: qatmig_{name})"
        group.addoption(
            flag, dest=f"qatmig_{name}", default=None, metavar=METAVARS[name],
            help=help_text + shown,
        )
        parser.addini(f"qatmig_{name}", help_text, default=default)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    state = get_state(config)
    if state.settings.profile:
        from .profile import ProfileError, load_profile

        try:
            state.profile = load_profile(state.settings.profile)
        except ProfileError as exc:
            raise pytest.UsageError(str(exc)) from None
    # Resolve --qatmig-impl now, so that a typo is a usage error before any test runs.
    _ = state.impl
    if state.settings.peer != state.settings.impl:
        _ = state.peer  # and a --qatmig-peer typo too
    config.pluginmanager.register(_Reporter(config), "qatmig-reporter")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # Release the device before an xdist worker reports that it finished: the controller may
    # end the worker process right after that, before pytest_unconfigure would run.
    from .fixtures import STATE_KEY

    state = session.config.stash.get(STATE_KEY, None)
    if state is not None:
        state.release()


def pytest_unconfigure(config: pytest.Config) -> None:
    from .fixtures import STATE_KEY

    state = config.stash.get(STATE_KEY, None)
    if state is not None:
        state.release()


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # trylast: after the test's own parametrize marks, so the direction ends the test id
    # (test_round_trip_per_method[zstd-peer-to-impl]).
    if metafunc.definition.get_closest_marker("qatmig_cross") is None:
        return
    if "qatmig_direction" not in metafunc.fixturenames:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: qatmig_cross needs the multifd_pair fixture")
    dirs = get_state(metafunc.config).directions()
    metafunc.parametrize("qatmig_direction", dirs, indirect=True, ids=list(dirs))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    full = get_state(config).settings.matrix == "full"
    perf_asked = "qatmig_perf" in (config.getoption("markexpr", "") or "")
    if full and perf_asked:
        return
    keep, drop = [], []
    for item in items:
        out = ((not full and item.get_closest_marker("qatmig_full_matrix") is not None)
               or (not perf_asked and item.get_closest_marker("qatmig_perf_cell") is not None))
        (drop if out else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = get_state(config)
    lines = [state.header_line()]
    if state.profile is not None:
        findings = state.profile.device_findings(state.ready())
        verdict = "; ".join(findings) if findings else "devices match"
        lines.append(f"qatmig: host profile {state.profile.name} ({state.profile.path}): {verdict}")
    else:
        line = state.perf_profile_line()
        if line:
            lines.append(line)
    return lines


def _skip_here(reason: str) -> None:
    """Skip the running test, reported at the test's own line (``-rs``), not at this plugin's."""
    raise pytest.skip.Exception(reason, _use_item_location=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = get_state(item.config)
    needs = [c for m in item.iter_markers("qatmig_requires") for c in m.args]
    if needs:
        caps = state.capabilities()
        missing = [c for c in needs if c not in caps]
        if missing:
            _skip_here(
                f"UNIMPLEMENTED: implementation {getattr(state.impl, 'name', '?')!r} lacks "
                f"{', '.join(missing)} (has: {', '.join(sorted(caps)) or 'nothing'})"
            )
    if item.get_closest_marker("qat_hw") is not None:
        device = state.worker_device()
        if not device.hw_ready:
            _skip_here(
                f"qat_hw: no ready QAT device for this worker ({device.reason or 'software'}). "
                "Enable: a QAT device with 'dc' in cfg_services and state up, and "
                "--qatmig-devices=auto or a list of PCI addresses"
            )
    if item.get_closest_marker("qatmig_perf") is not None:
        stack = contextlib.ExitStack()
        waited = stack.enter_context(
            perf_lock(state.lock_dir, state.perf_lock_name(), PERF_LOCK_TIMEOUT)
        )
        item.stash[_PERF_LOCK] = stack
        item.user_properties.append(("qatmig_perf_lock_wait_s", round(waited, 3)))


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        stack = item.stash.get(_PERF_LOCK, None)
        if stack is not None:
            stack.close()


class _Reporter:
    """Collects perf migrations from reports (worker reports arrive here on the controller)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if is_worker(self.config) or report.when != "call":
            return
        state = get_state(self.config)
        for key, value in report.user_properties:
            if key == "qatmig_migration" and isinstance(value, dict) and value.get("perf"):
                state.perf_records.append(value)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        state = get_state(self.config)
        if is_worker(self.config) or not state.settings.perf_report:
            return
        from .results import write_perf_report

        profile = state.perf_profile()
        write_perf_report(state.settings.perf_report, state.perf_records,
                          profile=None if profile is None else {
                              "name": profile.name, "path": str(profile.path)})

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        records = get_state(self.config).perf_records
        if not records:
            return
        terminalreporter.write_sep("=", "qatmig performance")
        for line in perf_table(records).splitlines():
            terminalreporter.write_line(line)
        for line in PERF_LEGEND.splitlines():
            terminalreporter.write_line(line)
        for rec in records:
            if rec.get("retried"):
                continue
            for failure in rec.get("failures", []):
                terminalreporter.write_line(f"FAIL {rec['nodeid']}: {failure}")


# ------------------------------------------------------------------------------ xdist
# Module-level optional hooks: -n auto is resolved in pytest_cmdline_main, before
# pytest_configure, so registering these later would be too late.
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per ready QAT device; no hardware -> xdist's own default."""
    state = get_state(config)
    if state.settings.devices == "sw":
        return None
    ready = state.ready()
    return len(ready) or None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Controller: hand the next free device to a starting (or restarted) worker."""
    state = get_state(node.config)
    if state.free is None:
        state.free = [] if state.settings.devices == "sw" else list(state.ready())
    bdf = state.free.pop(0) if state.free else None
    state.assigned[node.gateway.id] = bdf
    node.workerinput["qatmig_device"] = bdf


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Controller: a worker ended (or crashed); its device goes back to the free list."""
    state = get_state(node.config)
    bdf = state.assigned.pop(node.gateway.id, None)
    if bdf is not None and state.free is not None:
        state.free.append(bdf)
