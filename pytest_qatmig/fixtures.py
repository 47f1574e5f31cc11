"""The plugin's fixtures: ``qatmig_impl``, ``qat_device``, ``silesia_guest_memory``,
``multifd_pair``. The engine is imported inside them, never at module import."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .adapters import Implementation, MigrationPair, PairSpec
from .devices import QatDevice, file_lock
from .leaks import Snapshot, leaks_after
from .results import (
    MigrationResult,
    check_thresholds,
    unchecked_metrics,
    validate_threshold_keys,
)
from .roles import RAMBlockFile
from .state import QatmigState, is_worker, xdist_worker_id

STATE_KEY = pytest.StashKey[QatmigState]()
#: Seconds a session waits for another worker that is building the guest image.
GUEST_BUILD_TIMEOUT = 1800.0


def get_state(config: pytest.Config) -> QatmigState:
    try:
        return config.stash[STATE_KEY]
    except KeyError:
        from .state import Settings

        state = QatmigState(config, Settings.from_config(config))
        config.stash[STATE_KEY] = state
        return state


@dataclass(frozen=True)
class GuestImage:
    """A guest RAM image file: usable wherever a path is (``os.fspath(guest)``)."""

    path: Path
    size: int
    #: The corpus the image was built from (e.g. ``stand-in (silesia-standin v1)``,
    #: ``silesia``, ``dir:/path``), read from the image's sidecar.
    corpus: str
    #: RAM blocks after the first (``path``, QEMU's ``pc.ram``), in the order the source
    #: lists them: a guest of several blocks (e.g. ``guest_qemu_like_ramblocks``).
    extra_ramblocks: tuple[RAMBlockFile, ...] = ()

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def pages(self) -> int:
        """Pages of the whole guest (every RAM block)."""
        return (self.size + sum(b.size for b in self.extra_ramblocks)) // 4096


@pytest.fixture(scope="session")
def qatmig_impl(request: pytest.FixtureRequest) -> Implementation:
    """The adapter of the implementation under test (``--qatmig-impl``)."""
    return get_state(request.config).impl


@pytest.fixture(scope="session")
def qatmig_peer(request: pytest.FixtureRequest) -> Implementation:
    """The other end of the cross directions (``--qatmig-peer``, default ``reference``)."""
    return get_state(request.config).peer


@pytest.fixture
def qatmig_direction(request: pytest.FixtureRequest) -> str:
    """Which ends ``multifd_pair`` connects: ``impl-to-impl`` unless the test is marked
    ``qatmig_cross`` (then once per direction: impl-to-impl, impl-to-peer, peer-to-impl)."""
    return str(getattr(request, "param", "impl-to-impl"))


@pytest.fixture(scope="session")
def qat_device(request: pytest.FixtureRequest) -> QatDevice:
    """The QAT device this worker owns, or the software device when there is none."""
    return get_state(request.config).worker_device()


@pytest.fixture(scope="session")
def tls_creds(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """x509 credentials for TLS migrations, made once per session with ``openssl``:
    a ``qatmig_engine.tlscerts.TLSTestCreds`` (``good``, ``wrong_ca``, ``no_client``,
    ``other_client`` directories laid out as QEMU's tls-creds-x509 dir, and the client DNs)."""
    if shutil.which("openssl") is None:
        _skip_here("the openssl command is needed to make TLS test certificates: "
                   "apt-get install openssl")
    from qatmig_engine.tlscerts import make_test_creds

    return make_test_creds(tmp_path_factory.mktemp("tls-creds"))


@pytest.fixture(scope="session")
def silesia_guest_memory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> GuestImage:
    """A guest RAM image filled from the corpus (``--qatmig-corpus``), sized by
    ``--qatmig-guest-size``; built once per run (and cached across runs by the Silesia layer)."""
    return _guest_image(request, tmp_path_factory, get_state(request.config).settings.guest_size)


def _guest_image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 size: int) -> GuestImage:
    """A cached guest image of ``size`` bytes from ``--qatmig-corpus`` (one builder at a time
    across xdist workers)."""
    s = get_state(request.config).settings
    cached_guest_image = _cached_guest_image()
    # Under xdist every worker has its own basetemp; their parent is shared by the run.
    base = tmp_path_factory.getbasetemp()
    lock_root = base.parent if is_worker(request.config) else base
    with file_lock(lock_root / "qatmig-guest-image.lock", GUEST_BUILD_TIMEOUT):
        path = cached_guest_image(size, corpus=s.corpus)
    from qatmig_engine.silesia.image import read_image_info

    # The corpus actually used ("auto" resolves to the real corpus or the stand-in), as the
    # image's sidecar records it; not the option text.
    return GuestImage(path=Path(path), size=size, corpus=read_image_info(path).corpus)


@pytest.fixture(scope="session")
def qatmig_perf_guest(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> GuestImage:
    """The Silesia guest of the suite's performance cells: ``perf.suite.guest_size`` of the
    host profile in effect (default 64 MiB), from ``--qatmig-corpus`` like
    ``silesia_guest_memory`` (limits are derived for one size: ``--qatmig-guest-size`` does
    not change it)."""
    from .profile import PerfSuite

    profile = get_state(request.config).perf_profile()
    suite = (profile.suite if profile is not None else None) or PerfSuite()
    return _guest_image(request, tmp_path_factory, suite.guest_size)


def _cached_guest_image() -> Callable[..., Any]:
    try:
        from qatmig_engine.silesia import cached_guest_image  # type: ignore[attr-defined]
    except ImportError:
        try:
            from qatmig_engine.silesia.image import cached_guest_image
        except ImportError as exc:
            pytest.fail(
                f"silesia_guest_memory needs qatmig_engine.silesia.cached_guest_image ({exc})",
                pytrace=False,
            )
    return cached_guest_image  # type: ignore[no-any-return]


def _skip_here(reason: str) -> None:
    """Skip the running test, reported at the test's own line (``-rs``), not at this module's."""
    raise pytest.skip.Exception(reason, _use_item_location=True)


def _guest_bytes(guest: Any) -> int | None:
    try:
        return int(os.stat(getattr(guest, "path", guest)).st_size)
    except (OSError, TypeError):
        return None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class RecordingPair:
    """What ``multifd_pair(...)`` returns: the implementation's pair plus result recording
    (``user_properties``) and the ``qatmig_perf`` check."""

    def __init__(
        self,
        pair: MigrationPair,
        spec: PairSpec,
        item: pytest.Item,
        state: QatmigState,
        device: QatDevice,
        workdir: Path,
    ) -> None:
        self._pair = pair
        self.spec = spec
        self.workdir = workdir
        self._item = item
        self._state = state
        self._device = device
        self.results: list[MigrationResult] = []
        self.judge = True
        #: the qatmig_perf failures of the last migration (empty: it met every limit)
        self.perf_failures: list[str] = []

    @property
    def source(self) -> Any:
        return self._pair.source

    @property
    def destination(self) -> Any:
        return self._pair.destination

    @property
    def implementation_pair(self) -> MigrationPair:
        return self._pair

    def migrate(self, guest: Any, *, timeout: float = 120.0,
                destination_fill: int | None = None, dirty_rate: int = 0,
                cut: Any = None,
                perf_limits: Mapping[str, float] | None = None,
                perf_origins: Mapping[str, str] | None = None,
                attempt: int | None = None, retry: bool = False) -> MigrationResult:
        """Migrate ``guest`` and return the stats (``.verified``, ``.throughput_mbps``...).
        ``destination_fill`` (ends with roles only): the destination's RAM starts filled with
        that byte instead of zeros. ``dirty_rate`` (ends with roles, a source with the
        ``dirty-rate`` capability): pages/s the source's workload dirties during precopy; the
        destination must equal the source's RAM at stop time. ``cut`` (ends with roles only):
        a :class:`qatmig_engine.tap.ChannelCut`, one connection killed mid-run by the suite's
        tap.

        In a ``qatmig_perf`` test: ``perf_limits`` are limits the test itself sets (the
        suite's cells, from the host profile; ``perf_origins`` says where each came from),
        between the profile's per-test entries and the marker in precedence. ``retry``: a
        failed check is recorded as retried and returned in :attr:`perf_failures` instead of
        failing the test (the caller tries again).

        Between ends with roles every byte passes the wire judge: a deviation fails the test
        (naming the connection, channel, packet and field) unless the pair was made with
        ``judge=False``."""
        from .roles import Unsupported

        try:
            extra: dict[str, Any] = {}
            if destination_fill is not None:
                extra["destination_fill"] = destination_fill
            if dirty_rate:
                extra["dirty_rate"] = dirty_rate
            if cut is not None:
                extra["cut"] = cut
            if not extra:
                raw = self._pair.migrate(guest, timeout=timeout)
            elif hasattr(self._pair, "dst"):  # a RolePair: the suite owns the RAM and the tap
                raw = self._pair.migrate(guest, timeout=timeout, **extra)  # type: ignore[call-arg]
            elif dirty_rate:
                pytest.skip("UNIMPLEMENTED: a guest dirtied during precopy needs the "
                            "destination/source roles (docs/plugin.md)")
            else:
                pytest.skip("UNIMPLEMENTED: a destination RAM that is not zero or a channel cut "
                            "by the suite needs the destination/source roles (docs/plugin.md)")
            result = MigrationResult.from_stats(raw)
        except Unsupported as exc:  # e.g. a guest size one end cannot run
            _skip_here(f"UNIMPLEMENTED: {exc}")
        self.results.append(result)
        wire_errors = result.get("wire_errors") or []
        if wire_errors and self.judge:
            src = result.get("source_implementation", "?")
            dst = result.get("destination_implementation", "?")
            shown = "\n  ".join(wire_errors[:20])
            more = f"\n  ... and {len(wire_errors) - 20} more" if len(wire_errors) > 20 else ""
            pytest.fail(
                f"wire judge: the stream from source {src} to destination {dst} "
                f"({result.get('direction')}, {self.spec.compression}, "
                f"{result.get('dialect')}, {self.spec.channels} channel(s)) deviates from the "
                f"spec in {len(wire_errors)} place(s):\n  {shown}{more}",
                pytrace=False,
            )
        if self.judge:
            from .qat_evidence import hw_claim_problems

            problems = hw_claim_problems(result)
            if problems:
                pytest.fail(
                    f"qat_backend hw claimed by source {result.get('source_implementation')}, "
                    "but:\n  " + "\n  ".join(problems), pytrace=False)
        record: dict[str, Any] = {
            "nodeid": self._item.nodeid,
            "impl": getattr(self._state.impl, "name", "?"),
            "device": self._device.bdf,
            "worker": xdist_worker_id(),
            "channels": self.spec.channels,
            "compression": self.spec.compression,
            "level": self.spec.level,
            "result": result.to_json(),
            "perf": False,
        }
        marker = self._item.get_closest_marker("qatmig_perf")
        failures: list[str] = []
        if marker is None and perf_limits:
            raise pytest.UsageError(f"{self._item.nodeid}: perf_limits needs the qatmig_perf "
                                    "marker on the test")
        if marker is not None:
            if marker.args:
                raise pytest.UsageError(
                    f"{self._item.nodeid}: qatmig_perf takes keyword arguments only "
                    "(min_mbps=..., max_send_cpu=..., max_recv_cpu=..., max_downtime_ms=...)"
                )
            validate_threshold_keys(marker.kwargs, f"{self._item.nodeid}: qatmig_perf")
            validate_threshold_keys(perf_limits or {}, f"{self._item.nodeid}: perf_limits")
            from .profile import thresholds_with_origins

            limits, origins = thresholds_with_origins(
                self._state.perf_profile(), self._item.nodeid, marker.kwargs,
                perf_limits, perf_origins)
            verdict = check_thresholds(result, limits, origins)
            failures = list(verdict.failures)
            if result.get("verified") is not True:
                failures.insert(0, f"verified is {result.get('verified')!r}: not a valid run")
            record.update(perf=True, thresholds=limits, origins=origins, failures=failures,
                          not_limited=unchecked_metrics(limits), attempt=attempt,
                          retried=bool(failures and retry), guest_bytes=_guest_bytes(guest))
        self.perf_failures = failures
        self._item.user_properties.append(("qatmig_migration", _jsonable(record)))
        if failures and not retry:
            pytest.fail("qatmig_perf: " + "; ".join(failures), pytrace=False)
        return result

    def fail_perf(self, message: str) -> None:
        """Fail the test after migrations made with ``retry=True``: the last one's record
        becomes the verdict (``FAIL`` in the summary table) instead of ``retried``."""
        for key, rec in reversed(self._item.user_properties):
            if key == "qatmig_migration" and isinstance(rec, dict) and rec.get("perf"):
                rec["retried"] = False
                break
        pytest.fail(message, pytrace=False)

    def close(self) -> None:
        self._pair.close()

    def __enter__(self) -> RecordingPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _workdir_parent() -> str | None:
    # Guest RAM files of black-box implementations are big: prefer RAM-backed /dev/shm.
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _process_form(impl: Any) -> Any:
    """The implementation as processes the suite can measure (``as_processes()``), if it has
    such a form; else itself."""
    form = getattr(impl, "as_processes", None)
    return form() if callable(form) else impl


def _ends(state: QatmigState, direction: str) -> tuple[Any, Any]:
    impl = state.impl
    if direction == "impl-to-impl":
        return impl, impl
    if direction == "impl-to-peer":
        return impl, state.peer
    if direction == "peer-to-impl":
        return state.peer, impl
    raise pytest.UsageError(f"unknown qatmig_direction {direction!r}")


@pytest.fixture
def multifd_pair(
    request: pytest.FixtureRequest, qatmig_impl: Implementation, qat_device: QatDevice,
    qatmig_direction: str,
) -> Iterator[Callable[..., RecordingPair]]:
    """Factory of connected (source, destination) pairs:
    ``multifd_pair(channels=2, compression="none", level=None, max_bandwidth=0, dialect=None,
    judge=None, **options)``. Ends with roles (destination/source) are paired by the suite:
    source of one end, destination of the other (``qatmig_direction``), RAM files written and
    read by the suite, every byte through the wire judge (``judge`` None: yes, except in
    ``qatmig_perf`` tests, which measure without the proxy in the path). Teardown closes every
    pair and fails the test if a thread, child process, file descriptor (socket, file) or file
    in the pair's work directory was left behind."""
    from .roles import RolePair, Unsupported, has_roles

    state = get_state(request.config)
    before = Snapshot.take()
    made: list[RecordingPair] = []

    def factory(
        channels: int = 2,
        compression: str = "none",
        level: int | None = None,
        max_bandwidth: int = 0,
        dialect: str | None = None,
        judge: bool | None = None,
        **options: Any,
    ) -> RecordingPair:
        spec = PairSpec(channels, compression, level, max_bandwidth, dialect, dict(options))
        perf = request.node.get_closest_marker("qatmig_perf") is not None
        if judge is None:
            # A performance test measures the implementation, not the judge's proxy (which
            # would halve its throughput): its migrations run direct, verified by digests.
            judge = not perf
        src, dst = _ends(state, qatmig_direction)
        if perf:
            # CPU is measured per process, as for QEMU: an in-process end (the reference
            # engine) runs as its own program for performance tests (docs/conformance.md).
            src, dst = _process_form(src), _process_form(dst)
        if not (has_roles(src) and has_roles(dst)) and qatmig_direction != "impl-to-impl":
            _skip_here(f"UNIMPLEMENTED: {qatmig_direction} needs the destination/source "
                        "roles on both ends (docs/plugin.md, Implementations)")
        workdir = Path(tempfile.mkdtemp(prefix="qatmig-pair-", dir=_workdir_parent()))
        try:
            if has_roles(src) and has_roles(dst):
                pair: Any = RolePair(src, dst, spec, workdir=workdir, device=qat_device,
                                     direction=qatmig_direction, judge=judge, measure=perf)
            else:
                pair = qatmig_impl.pair(spec, device=qat_device, workdir=workdir)
        except Unsupported as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            _skip_here(f"UNIMPLEMENTED ({qatmig_direction}): {exc}")
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        wrapped = RecordingPair(pair, spec, request.node, state, qat_device, workdir)
        wrapped.judge = judge
        made.append(wrapped)
        return wrapped

    yield factory

    problems: list[str] = []
    for pair in reversed(made):
        try:
            pair.close()
        except Exception as exc:
            problems.append(f"close() of a {pair.spec.compression} pair raised {exc!r}")
        left = sorted(str(p.relative_to(pair.workdir)) for p in pair.workdir.rglob("*"))
        if left:
            problems.append(f"file(s) left in the pair's work directory: {', '.join(left[:10])}")
        shutil.rmtree(pair.workdir, ignore_errors=True)
    problems += leaks_after(before)
    if problems:
        pytest.fail(
            "multifd_pair teardown: the implementation left resources behind:\n  "
            + "\n  ".join(problems),
            pytrace=False,
        )
