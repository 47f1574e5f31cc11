"""Which QATzip backend compresses a migration, and falling back to software like QEMU.

``select_backend(params)`` runs once per migration with ``multifd-compression=qatzip``:

* ``qat_backend="sw"``: the engine's own producer (:mod:`qatmig_engine.codecs.qzformat`,
  byte-exact with libqatzip's software path). No device or library is touched.
* ``"hw"`` / ``"auto"``: hardware when sysfs shows a ready endpoint (``dc`` service, ``up``),
  ``libqatzip.so.3`` loads and a probe session really lands on a device
  (``hw_session_stat == QZ_OK``). Otherwise, with ``qat_fallback`` on (the default, as QEMU's
  ``qzInit(sw_backup=1)``), software with the reasons recorded; with it off,
  :class:`~qatmig_engine.errors.QatUnavailable` naming what is missing. ``auto`` and ``hw``
  select the same way; ``hw`` only documents that hardware is expected.

The library's own software path is never used for migration traffic: it leaks a pthread key
per call (spec qatzip.md §2.3), so "library loads but has no device" is a fallback reason.

Mid-migration: each channel's hardware engine is wrapped in :class:`FallbackQzEngine`; the
first failing packet (error code, partial consumption or output, malformed members, session
dropped to software) is re-compressed in software and sent, that channel stays on software,
and an event ``{"channel", "packet_num", "reason", ...}`` is recorded.

Options read from ``params.extra`` (all optional):

* ``qat_sysfs_root`` / ``qat_dev_root``: fake host roots (tests, ``fixture_tree()``);
* ``qat_library``: path of libqatzip (else env ``QATMIG_LIBQATZIP``, else the soname);
* ``qat_sw_engine``: ``"zlib"`` (default, byte-exact) or ``"isal"`` (ISA-L: faster, same
  format, different deflate bytes);
* ``qat_fault_injection``: :class:`QzFaultInjection`, a dict, ``"K"`` or
  ``"after_packets=K,channel=C,rc=QZ_FAIL,mode=error"`` (also env ``QATMIG_QAT_FAULT``).
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ParameterError, QatError, QatLibraryError, QatmigError, QatUnavailable
from .binding import (
    SOFTWARE_CALLS,
    LibraryInfo,
    QatzipLibrary,
    QzSession,
    Rc,
    gzip_ext_members,
    load_library,
)
from .binding import rc_name as _rc_name
from .devices import QatDevice, discover, hardware_problem

ENV_FAULT = "QATMIG_QAT_FAULT"
SW_ENGINES = ("zlib", "isal")


class QzEngine(Protocol):
    """What the qatzip codec calls: one standalone gzip-ext buffer per packet."""

    name: str

    def compress(self, data: bytes | memoryview, level: int) -> bytes: ...


# ------------------------------------------------------------------------- engines
class SoftwareQzEngine:
    """The engine's own producer: libqatzip's software-path bytes, without libqatzip."""

    name = "sw"

    def compress(self, data: bytes | memoryview, level: int) -> bytes:
        from ..codecs import qzformat

        return qzformat.compress(data, level)

    def close(self) -> None:
        pass


#: QATzip level -> ISA-L level, following QAT 2.0's own map (1-5 -> L1, 6-8 -> L6, 9 -> L9).
_ISAL_LEVELS = {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 2, 7: 2, 8: 2, 9: 3}


class IsalQzEngine:
    """ISA-L deflate in a gzip-ext member: same format, **not** byte-exact with libqatzip."""

    name = "sw-isal"

    def __init__(self) -> None:
        try:
            from isal import isal_zlib
        except ImportError as exc:
            raise QatError("qat_sw_engine 'isal' needs the isal package (pip install isal)") \
                from exc
        self._z = isal_zlib

    def compress(self, data: bytes | memoryview, level: int) -> bytes:
        from ..codecs import qzformat

        if level not in _ISAL_LEVELS:
            raise ParameterError(f"QATzip level must be between 1 and 9, not {level!r}")
        z = self._z
        mv = memoryview(data).cast("B")
        c = z.compressobj(_ISAL_LEVELS[level], z.DEFLATED, -15)
        body = c.compress(mv) + c.flush()
        n = len(mv)
        return b"".join((qzformat.gzip_ext_header(n, len(body), 0), body,
                         struct.pack("<II", z.crc32(mv) & 0xFFFFFFFF, n & 0xFFFFFFFF)))

    def close(self) -> None:
        pass


class HardwareQzEngine:
    """libqatzip on a QAT device, one session per channel, set up in the channel's thread."""

    name = "hw"

    def __init__(self, lib: QatzipLibrary, channel: int, *, numa: int = 0) -> None:
        self._lib = lib
        self.channel = channel
        self._numa = numa
        self._session: QzSession | None = None

    def compress(self, data: bytes | memoryview, level: int) -> bytes:
        sess = self._session
        if sess is None:
            sess = self._session = QzSession(self._lib, level=level, numa=self._numa,
                                             max_input=len(memoryview(data).cast("B")))
            if not sess.hardware:
                stat = sess.hw_session_stat
                self.close()
                raise QatUnavailable(
                    f"libqatzip set up channel {self.channel} without a device "
                    f"(hw_session_stat {_rc_name(stat)}); not using its software path"
                )
        sess.set_level(level)
        out = sess.compress(data)
        if not sess.hardware:
            raise QatUnavailable(
                f"channel {self.channel}: libqatzip session dropped to software "
                f"(hw_session_stat {_rc_name(sess.hw_session_stat)})"
            )
        return out

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: The forms ``--qat-inject-fault`` / ``extra["qat_fault_injection"]`` take, for error texts.
FAULT_FORM = "K or after_packets=K[,channel=C][,rc=QZ_NAME|N][,mode=error|truncate]"


def _fault_error(detail: str) -> ParameterError:
    """One line: what is wrong with the fault spec, then the form it must have."""
    return ParameterError(f"fault injection: {detail}; --qat-inject-fault expects {FAULT_FORM}")


@dataclass(frozen=True)
class QzFaultInjection:
    """Make the primary engine of a channel fail from its ``after_packets``-th packet on.

    ``after_packets=K``: packets 0..K-1 succeed, packet K and later fail. ``channel`` None =
    every channel. ``mode`` ``"error"`` raises QatLibraryError(``rc``); ``"truncate"``
    returns half the output with no error (the library's "QZ_OK with partial output").
    """

    after_packets: int
    channel: int | None = None
    rc: int = Rc.QZ_FAIL
    mode: str = "error"

    def __post_init__(self) -> None:
        if not _is_int(self.after_packets) or self.after_packets < 0:
            raise _fault_error(f"after_packets must be an integer >= 0, not "
                               f"{self.after_packets!r}")
        if self.channel is not None and (not _is_int(self.channel) or self.channel < 0):
            raise _fault_error(f"channel must be an integer >= 0, not {self.channel!r}")
        if not _is_int(self.rc):
            raise _fault_error(f"rc must be a QZ_* name or an integer, not {self.rc!r}")
        if self.mode not in ("error", "truncate"):
            raise _fault_error(f"mode must be error or truncate, not {self.mode!r}")

    @classmethod
    def parse(cls, text: str) -> QzFaultInjection:
        """``"5"`` or ``"after_packets=5,channel=1,rc=QZ_FAIL,mode=error"``."""
        text = text.strip()
        if text.isdigit():
            return cls(int(text))
        kw: dict[str, Any] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep:
                raise _fault_error(f"expected key=value, got {part.strip()!r}")
            if key in kw:
                raise _fault_error(f"{key} given twice")
            try:
                if key in ("after_packets", "channel"):
                    kw[key] = int(value)
                elif key == "rc":
                    kw[key] = int(Rc[value]) if value in Rc.__members__ else int(value)
                elif key == "mode":
                    kw[key] = value
                else:
                    raise _fault_error(f"unknown key {key!r}")
            except ValueError:
                raise _fault_error(f"bad value for {key}: {value!r}") from None
        if "after_packets" not in kw:
            raise _fault_error("after_packets=K is required")
        return cls(**kw)

    @classmethod
    def coerce(cls, v: object) -> QzFaultInjection:
        """A :class:`QzFaultInjection` from any accepted form (instance, dict, int, str)."""
        if isinstance(v, QzFaultInjection):
            return v
        if isinstance(v, dict):
            unknown = sorted(str(k) for k in v if k not in cls.__dataclass_fields__)
            if unknown:
                raise _fault_error(f"unknown key {unknown[0]!r}")
            if "after_packets" not in v:
                raise _fault_error("after_packets=K is required")
            return cls(**v)
        if _is_int(v):
            return cls(v)  # type: ignore[arg-type]
        if isinstance(v, str):
            return cls.parse(v)
        raise ParameterError(f"qat_fault_injection: cannot use {v!r}; --qat-inject-fault "
                             f"expects {FAULT_FORM}")

    @classmethod
    def from_params(cls, params: Any) -> QzFaultInjection | None:
        extra = getattr(params, "extra", None) or {}
        v = extra.get("qat_fault_injection")
        if v is None:
            v = os.environ.get(ENV_FAULT) or None
        return None if v is None else cls.coerce(v)

    def applies_to(self, channel: int) -> bool:
        return self.channel is None or self.channel == channel


#: The qatzip extras a path names, with the option that sets each and what it names.
_PATH_EXTRAS = {
    "qat_sysfs_root": ("--qat-sysfs-root", "a directory (the host's /sys or a fake tree)"),
    "qat_dev_root": ("qat_dev_root", "a directory (the host's /dev or a fake tree)"),
    "qat_library": ("--qat-library", "the path of libqatzip.so.3"),
}


def validate_extras(extra: Mapping[str, object], multifd_channels: int | None = None) -> None:
    """Check the qatzip extras' *form*, whatever the compression method (ParameterError).

    Called by :meth:`MigrationParameters.validate`, so a malformed ``--qat-inject-fault`` is
    refused by ``qatmig check/send/listen/migrate`` even when no qatzip backend is built.
    What the values point at (a missing library, an empty sysfs tree) is not checked here:
    for qatzip that is a fallback reason, reported by :func:`select_backend`.
    """
    sw_engine = extra.get("qat_sw_engine")
    if sw_engine is not None and sw_engine not in SW_ENGINES:
        raise ParameterError(f"qat_sw_engine must be one of {', '.join(SW_ENGINES)}, not "
                             f"'{sw_engine}'")
    for key, (option, what) in _PATH_EXTRAS.items():
        v = extra.get(key)
        if v is not None and (not isinstance(v, (str, os.PathLike)) or not os.fspath(v)
                              or "\0" in str(os.fspath(v))):
            raise ParameterError(f"{option} expects {what}, not {v!r}")
    v = extra.get("qat_fault_injection")
    if v is not None:
        fault = QzFaultInjection.coerce(v)
        if (fault.channel is not None and multifd_channels is not None
                and fault.channel >= multifd_channels):
            raise _fault_error(f"channel={fault.channel} names no channel of "
                               f"multifd-channels {multifd_channels} (channels count from 0)")


class FaultInjectingQzEngine:
    """Wraps an engine and fails it from packet ``fault.after_packets`` on (tests, e2e)."""

    def __init__(self, inner: Any, fault: QzFaultInjection) -> None:
        self._inner = inner
        self._fault = fault
        self.name = inner.name
        self.calls = 0

    def compress(self, data: bytes | memoryview, level: int) -> bytes:
        k = self.calls
        self.calls += 1
        if k >= self._fault.after_packets:
            if self._fault.mode == "error":
                raise QatLibraryError("qzCompress", self._fault.rc, _rc_name(self._fault.rc),
                                      f"injected fault at packet {k}")
            out = self._inner.compress(data, level)
            return out[: len(out) // 2]
        out: bytes = self._inner.compress(data, level)
        return out

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close:
            close()


def check_gzip_ext(out: bytes, n: int) -> None:
    """Raise QatError unless ``out`` is whole gzip-ext members covering ``n`` input bytes."""
    total = sum(s for s, _ in gzip_ext_members(out))
    if total != n:
        raise QatError(f"output members cover {total} of {n} input bytes")


class CheckedQzEngine:
    """A channel's engine without fallback: every output is checked before it is sent.

    A library can return QZ_OK with partial output (spec qatzip.md); without a fallback that
    must fail the migration with a typed error, never put a broken packet on the wire.
    """

    def __init__(self, inner: Any, channel: int) -> None:
        self._inner = inner
        self.channel = channel
        self.name = inner.name

    def compress(self, data: bytes | memoryview, level: int) -> bytes:
        out: bytes = self._inner.compress(data, level)
        try:
            check_gzip_ext(out, len(memoryview(data).cast("B")))
        except QatError as exc:
            raise QatError(f"channel {self.channel}: QATzip engine {self.name} output "
                           f"rejected (qat-fallback off): {exc}") from None
        return out

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close:
            close()


class FallbackQzEngine:
    """A channel's engine: ``primary`` until it fails, then ``fallback`` for good.

    The failing packet is re-compressed by ``fallback``, so no page is lost. Every output of
    the primary is checked (whole members covering the input) before it is used.
    """

    def __init__(self, primary: Any, fallback: Any, channel: int,
                 record: Any) -> None:
        self._primary: Any = primary
        self._fallback = fallback
        self.channel = channel
        self._record = record
        self._primary_name = primary.name
        self.packets = 0
        self.failed = False

    @property
    def name(self) -> str:
        if self.failed:
            return f"{self._fallback.name} (fallback from {self._primary_name})"
        return str(self._primary_name)

    def compress(self, data: bytes | memoryview, level: int) -> bytes:
        if self._primary is not None:
            try:
                out: bytes = self._primary.compress(data, level)
                check_gzip_ext(out, len(memoryview(data).cast("B")))
                self.packets += 1
                return out
            except (QatmigError, MemoryError) as exc:
                self._switch(exc)
        out = self._fallback.compress(data, level)
        self.packets += 1
        return out

    def _switch(self, exc: BaseException) -> None:
        self.failed = True
        primary, self._primary = self._primary, None
        try:
            close = getattr(primary, "close", None)
            if close:
                close()
        except QatmigError:
            pass  # the device is already failing; the fallback matters, not the teardown
        self._record({
            "channel": self.channel,
            "packet_num": self.packets,  # index of the failing packet on this channel
            "reason": str(exc),
            "from": self._primary_name,
            "to": self._fallback.name,
        })

    def close(self) -> None:
        for e in (self._primary, self._fallback):
            close = getattr(e, "close", None)
            if close:
                close()


# ------------------------------------------------------------------------- selection
@dataclass
class QatSelection:
    """The outcome of :func:`select_backend` for one migration."""

    backend: str  # "hw" | "sw"
    requested: str  # params.qat_backend
    reasons: list[str]  # why hardware is not used (empty when hw, or sw was asked for)
    fallback: bool  # params.qat_fallback
    sw_engine: str = "zlib"
    devices: list[QatDevice] = field(default_factory=list)
    library: LibraryInfo | None = None
    fault: QzFaultInjection | None = None
    _lib: QatzipLibrary | None = None
    _events: list[dict[str, Any]] = field(default_factory=list)
    _engines: list[Any] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _software(self) -> Any:
        return IsalQzEngine() if self.sw_engine == "isal" else SoftwareQzEngine()

    def _record(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(event)

    def make_engine(self, channel: int) -> Any:
        """The QzEngine for one channel (None = the codec's own byte-exact producer)."""
        fault = self.fault if self.fault and self.fault.applies_to(channel) else None
        if self.backend == "hw":
            if self._lib is None:  # pragma: no cover - select_backend sets it
                raise QatError("hardware backend without a loaded library")
            primary: Any = HardwareQzEngine(self._lib, channel)
        elif fault is None:
            return None if self.sw_engine == "zlib" else self._software()
        else:
            primary = self._software()
        if fault is not None:
            primary = FaultInjectingQzEngine(primary, fault)
        engine = (FallbackQzEngine(primary, self._software(), channel, self._record)
                  if self.fallback else CheckedQzEngine(primary, channel))
        with self._lock:
            self._engines.append(engine)
        return engine

    def events(self) -> list[dict[str, Any]]:
        """Fallbacks that happened mid-migration (``channel``, ``packet_num``, ``reason``)."""
        with self._lock:
            return [dict(e) for e in self._events]

    def close(self) -> None:
        """Tear down every hardware session this selection made (idempotent)."""
        with self._lock:
            engines, self._engines = self._engines, []
        for e in engines:
            e.close()

    def to_json(self) -> dict[str, Any]:
        """The fields the engine puts into MigrationStats / JSON."""
        return {
            "qat_backend": self.backend,
            "qat_backend_requested": self.requested,
            "qat_sw_engine": self.sw_engine,
            "qat_fallback_reasons": list(self.reasons),
            "qat_fallback_events": self.events(),
        }


def probe_hardware(lib: QatzipLibrary, level: int = 1) -> str:
    """Set up and tear down one session: "" when it lands on a device, else why not.

    In software mode each probe costs the library one leaked pthread key: call it once per
    migration, and only when discovery found a ready endpoint. Once the process's budget of
    such calls is spent (a long-lived process selecting a backend on a host whose sysfs shows
    a device the library cannot use), the library is not probed again: ~1100 probes would
    leave no key for the process (OpenSSL's next initialisation fails).
    """
    if SOFTWARE_CALLS.spent:
        return (
            f"libqatzip ({lib.path or lib.requested}) not probed: it ran its software path "
            f"{SOFTWARE_CALLS.budget} times in this process already (no hardware session; "
            "each such call leaks a pthread key)"
        )
    try:
        sess = QzSession(lib, level=level, max_input=4096)
    except QatError as exc:
        return f"libqatzip ({lib.path or lib.requested}): {exc}"
    try:
        if not sess.hardware:
            return (
                f"libqatzip ({lib.path or lib.requested}) has no hardware session "
                f"(hw_session_stat {_rc_name(sess.hw_session_stat)}): it would compress in "
                "software, which this engine does itself (the library's software path leaks "
                "a pthread key per call)"
            )
        return ""
    finally:
        sess.close()


def select_backend(
    params: Any,
    sysfs_root: str | os.PathLike[str] | None = None,
    *,
    dev_root: str | os.PathLike[str] | None = None,
    library: str | os.PathLike[str] | None = None,
) -> QatSelection:
    """Choose the qatzip backend for one migration (see the module docstring).

    ``sysfs_root``/``dev_root``/``library`` default to ``params.extra`` keys
    ``qat_sysfs_root``/``qat_dev_root``/``qat_library``, then ``/sys``, ``/dev`` and the
    library resolution of :func:`~qatmig_engine.qat.binding.load_library`.
    Raises QatUnavailable when hardware is unusable and ``params.qat_fallback`` is False.
    """
    extra = getattr(params, "extra", None) or {}
    requested = getattr(params, "qat_backend", "auto")
    fallback = bool(getattr(params, "qat_fallback", True))
    if requested not in ("auto", "hw", "sw"):
        raise ParameterError(f"qat-backend must be auto, hw or sw, not '{requested}'")
    validate_extras(extra, getattr(params, "multifd_channels", None))
    sw_engine = str(extra.get("qat_sw_engine", "zlib"))
    fault = QzFaultInjection.from_params(params)
    sel = QatSelection(backend="sw", requested=requested, reasons=[], fallback=fallback,
                       sw_engine=sw_engine, fault=fault)
    if sw_engine == "isal":
        IsalQzEngine()  # fail now, not in a channel thread, when isal is missing
    if requested == "sw":
        return sel

    sysfs = sysfs_root if sysfs_root is not None else extra.get("qat_sysfs_root", "/sys")
    dev = dev_root if dev_root is not None else extra.get("qat_dev_root", "/dev")
    lib_path = library if library is not None else extra.get("qat_library")
    level = getattr(params, "multifd_qatzip_level", 1)

    problems: list[str] = []
    try:
        sel.devices = discover(sysfs, dev)  # type: ignore[arg-type]
        dev_problem = hardware_problem(sel.devices, sysfs)  # type: ignore[arg-type]
    except QatError as exc:
        dev_problem = str(exc)
    if dev_problem:
        problems.append(dev_problem)
    lib: QatzipLibrary | None = None
    try:
        lib = load_library(lib_path)
        sel.library = lib.info()
    except QatUnavailable as exc:
        problems.append(exc.reason)
        sel.library = LibraryInfo(False, str(lib_path or ""), None, exc.reason)
    except QatError as exc:
        problems.append(str(exc))
    if lib is not None and not dev_problem:
        # only with a ready device: in software mode every probe costs a leaked pthread key
        lib_problem = probe_hardware(lib, level)
        if lib_problem:
            problems.append(lib_problem)

    if not problems:
        sel.backend = "hw"
        sel._lib = lib
        return sel
    if not fallback:
        raise QatUnavailable(
            f"qatzip hardware backend unavailable (qat-backend {requested}, qat-fallback off): "
            + "; ".join(problems)
            + ". Fix the host (see docs/qat.md), or use --qat-backend sw, or allow the "
            "software fallback with --qat-fallback on"
        )
    sel.reasons = problems
    return sel

