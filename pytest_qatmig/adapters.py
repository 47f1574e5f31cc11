"""Implementation adapters: how the plugin drives the implementation under test.

An *implementation* is anything that can migrate a guest's RAM over multifd: the reference
engine (``qatmig_engine``), a real QEMU binary, or a third party's engine. The plugin talks to it
through the small :class:`Implementation` protocol below. Select one with ``--qatmig-impl``:

* ``reference`` (default) or any other name registered in the entry-point group
  ``qatmig.implementations`` (the entry point is a zero-argument factory);
* ``package.module:factory`` — a zero-argument callable returning an Implementation;
* ``qemu:/path/to/qemu-system-x86_64`` (or just ``qemu``) — a real QEMU, black-box over QMP;
* ``exec:PROGRAM [ARGS]`` — a program in any language driven through the exec: command-line
  contract (docs/conformance.md), e.g. ``exec:qatmig`` or a wrapper script.

Third parties register theirs in their own ``pyproject.toml``::

    [project.entry-points."qatmig.implementations"]
    myengine = "myengine.qatmig:factory"

This module imports nothing heavy; each adapter imports its engine when first used.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .devices import QatDevice
from .results import MigrationResult

ENTRY_POINT_GROUP = "qatmig.implementations"
METHODS = ("none", "zlib", "zstd", "qatzip", "qpl", "uadk")


class ImplementationError(Exception):
    """``--qatmig-impl`` names nothing loadable, or the factory returned a non-Implementation."""


@dataclass(frozen=True)
class PairSpec:
    """What ``multifd_pair(...)`` was asked for (QEMU parameter meanings)."""

    channels: int = 2
    compression: str = "none"
    #: Level of the selected method (multifd-zlib-level / -zstd-level / -qatzip-level); None =
    #: the implementation's default for that method.
    level: int | None = None
    #: Bytes per second on the wire, 0 = unlimited.
    max_bandwidth: int = 0
    #: Wire dialect (``qemu-7.2``, ``qemu-9.0``, ``qemu-9.2``); None = the implementation's default.
    dialect: str | None = None
    #: Further QEMU-named parameters (``zero_page_detection``, ``downtime_limit``...).
    options: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class MigrationPair(Protocol):
    """A source and a destination of one implementation, connected over loopback."""

    source: Any
    destination: Any

    def migrate(self, guest: Any, *, timeout: float = 120.0) -> MigrationResult:
        """Migrate ``guest`` (a path to a RAM image, or an object with ``.path``) from source
        to destination; the result's ``verified`` says whether the destination's RAM equals
        the source's byte for byte."""
        ...

    def close(self) -> None:
        """Stop both ends and release every thread, process, socket and file they hold."""
        ...


@runtime_checkable
class Implementation(Protocol):
    """The interface an implementation under test provides (see docs/plugin.md).

    New implementations provide the two roles instead of (or besides) ``pair``:
    ``destination(spec, ctx) -> Incoming`` and ``source(spec, ctx, address) -> Mapping``
    (:mod:`pytest_qatmig.roles`); the suite then pairs them itself, across implementations,
    and judges the wire between them. ``pair`` is the older, impl-to-impl-only form."""

    name: str

    def capabilities(self) -> frozenset[str]:
        """What it can do, as strings: methods (``none``, ``zlib``, ``zstd``, ``qatzip``, ...),
        dialects (``dialect:qemu-7.2``), and features (``max-bandwidth``, ``tls``,
        ``codec-access``...). ``qatmig_requires`` skips tests that need more."""
        ...

    def pair(self, spec: PairSpec, *, device: QatDevice, workdir: Path) -> MigrationPair:
        """A connected source and destination. Invalid parameters raise ``ValueError`` (the
        reference engine's ``ParameterError`` is one) before anything is started. ``workdir``
        is an empty directory the pair may use; the plugin removes it after ``close()``."""
        ...

    def describe(self) -> str:
        """One line for the report header (name, version, binary...)."""
        ...


def codec_access(impl: Implementation, method: str) -> Any:
    """The implementation's codec for ``method`` (white-box implementations only), else None."""
    getter = getattr(impl, "codec", None)
    return getter(method) if getter is not None else None


def guest_path(guest: Any, *, several_blocks: bool = False) -> Path:
    """A guest argument as a path: a ``GuestImage``, any ``os.PathLike`` or a str; the file of
    its first RAM block. A guest with further RAM blocks (``GuestImage.extra_ramblocks``) is
    ``Unsupported`` unless the caller migrates them too (``several_blocks``)."""
    path = getattr(guest, "path", guest)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"migrate() takes a guest image (silesia_guest_memory or a path), not {type(guest)!r}"
        )
    if getattr(guest, "extra_ramblocks", ()) and not several_blocks:
        from .roles import Unsupported

        raise Unsupported("a guest of several RAM blocks needs the destination/source roles "
                          "with capability 'ramblocks' (docs/plugin.md); this pair migrates one")
    return Path(path)


# ------------------------------------------------------------------------------ reference
class ReferenceIncoming:
    """The reference engine's destination role, running in a thread of this process."""

    def __init__(self, params: Any, ctx: Any) -> None:
        import threading

        from qatmig_engine.destination import Destination
        from qatmig_engine.guest import GuestMemory, RAMBlock

        # The suite's files are the destination's RAM as it is (not necessarily zero).
        self._guest = GuestMemory()
        try:
            for name, path, size in ((ctx.ramblock, ctx.ram, ctx.ram_size),
                                     *((b.name, b.path, b.size)
                                       for b in getattr(ctx, "extra_ramblocks", ()))):
                self._guest.add(RAMBlock.from_file(name, path, size, mode="w",
                                                   keep_content=True))
            self._dst = Destination(self._guest, params, host="127.0.0.1", port=0,
                                    uuid=ctx.uuid, timeout=ctx.timeout, ramblock=ctx.ramblock)
        except BaseException:
            self._guest.close()
            raise
        self.address: tuple[str, int] = tuple(self._dst.address)  # type: ignore[assignment]
        self.machine_type: str | None = None
        self._stats: list[Any] = []
        self._thread = threading.Thread(target=lambda: self._stats.append(self._dst.run()),
                                        name="qatmig-reference-destination", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> dict[str, Any]:
        self._thread.join(timeout)
        if self._thread.is_alive() or not self._stats:
            self._dst.act.cancel.set()
            self._thread.join(10)
            return {"status": "failed", "error": f"destination did not finish in {timeout:g} s"}
        return dict(self._stats[0].to_json())

    def close(self) -> None:
        if self._thread.is_alive():
            self._dst.act.cancel.set()
            self._thread.join(30)
        self._guest.close()


class ReferenceImplementation:
    """Adapter for ``qatmig_engine`` (the reference engine in this repository)."""

    name = "reference"

    def capabilities(self) -> frozenset[str]:
        from qatmig_engine.cli.contract import engine_capabilities

        # What `qatmig capabilities` says, plus the white-box access only an in-process
        # engine gives.
        return frozenset({*engine_capabilities(), "codec-access"})

    def parameters(self, spec: PairSpec, device: QatDevice | None = None) -> Any:
        from qatmig_engine.params import MigrationParameters

        kwargs: dict[str, Any] = {
            "multifd_channels": spec.channels,
            "multifd_compression": spec.compression,
            "max_bandwidth": spec.max_bandwidth,
        }
        if spec.dialect is not None:
            kwargs["dialect"] = spec.dialect
        if spec.level is not None:
            if spec.compression not in ("zlib", "zstd", "qatzip"):
                raise ValueError(
                    f"level={spec.level} given but multifd-compression {spec.compression!r} "
                    "has no level (zlib, zstd and qatzip do)"
                )
            kwargs[f"multifd_{spec.compression}_level"] = spec.level
        qatzip = spec.compression == "qatzip"
        if qatzip and device is not None and "qat_backend" not in spec.options:
            kwargs["qat_backend"] = "auto" if device.hw_ready else "sw"
        options = dict(spec.options)
        fault = options.pop("qat_inject_fault", None)
        kwargs.update(options)
        if fault is not None:  # the exec: contract's --qat-inject-fault, an engine extra here
            kwargs["extra"] = {**(kwargs.get("extra") or {}), "qat_fault_injection": fault}
        if isinstance(kwargs.get("qat_fallback"), str):  # "on"/"off", as on the command line
            kwargs["qat_fallback"] = kwargs["qat_fallback"] != "off"
        if qatzip and device is not None and device.sysfs_root:
            # The engine must judge the same host the plugin allocated the device from.
            extra = dict(kwargs.get("extra") or {})
            extra.setdefault("qat_sysfs_root", device.sysfs_root)
            kwargs["extra"] = extra
        return MigrationParameters(**kwargs)

    def pair(self, spec: PairSpec, *, device: QatDevice, workdir: Path) -> Any:
        """The convenience on top of the roles: this engine's source to its destination,
        paired and judged by the suite (:class:`pytest_qatmig.roles.RolePair`)."""
        from .roles import RolePair

        return RolePair(self, self, spec, workdir=workdir, device=device)

    # ---- roles (pytest_qatmig.roles): the engine's two ends in this process
    def validate(self, spec: PairSpec) -> None:
        self.parameters(spec, None).validate()

    def destination(self, spec: PairSpec, ctx: Any) -> ReferenceIncoming:
        return ReferenceIncoming(self.parameters(spec, ctx.device), ctx)

    def source(self, spec: PairSpec, ctx: Any, address: tuple[str, int]) -> dict[str, Any]:
        from qatmig_engine.api import send
        from qatmig_engine.mainstream import DEFAULT_MACHINE_TYPE

        st = send(address[0], address[1], ctx.ram, self.parameters(spec, ctx.device),
                  guest_size=ctx.ram_size, ramblock=ctx.ramblock, uuid=ctx.uuid,
                  timeout=ctx.timeout, machine_type=ctx.machine_type or DEFAULT_MACHINE_TYPE,
                  digest=False, dirty_rate=getattr(ctx, "dirty_rate", 0),
                  final_image=getattr(ctx, "final_image", None),
                  extra_ramblocks=[(b.name, b.path) for b in getattr(ctx, "extra_ramblocks",
                                                                      ())])
        return dict(st.to_json())

    def as_processes(self) -> Any:
        """This engine as two programs (``python -m qatmig_engine.cli listen`` / ``send``,
        through the exec: contract), for performance tests: the suite then measures each
        end's CPU per process, the same way as a real QEMU's or an ``exec:`` program's (in
        this process the two ends' threads could not be told apart from pytest's)."""
        cached = getattr(self, "_processes", None)
        if cached is None:
            import shlex
            import sys

            from .exec_adapter import ExecImplementation

            cached = ExecImplementation(f"{shlex.quote(sys.executable)} -m qatmig_engine.cli")
            cached.name = self.name
            self._processes = cached
        return cached

    def codec(self, method: str) -> Any:
        from qatmig_engine.codecs import get_codec

        return get_codec(method)

    def describe(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"reference (pytest-qatmig {version('pytest-qatmig')} engine)"
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            return "reference (qatmig_engine)"


def reference_factory() -> ReferenceImplementation:
    """Entry point ``reference`` of the group ``qatmig.implementations``."""
    return ReferenceImplementation()


def qemu_factory(binary: str | None = None) -> Any:
    """A real QEMU (``qemu:PATH``), driven black-box over QMP."""
    from .qemu_adapter import QemuImplementation

    return QemuImplementation(binary)


# ------------------------------------------------------------------------------ loading
def entry_point_names() -> list[str]:
    from importlib.metadata import entry_points

    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load_implementation(spec: str) -> Implementation:
    """Resolve a ``--qatmig-impl`` value to an Implementation (see the module docstring)."""
    text = spec.strip()
    if not text:
        raise ImplementationError("--qatmig-impl is empty (default: reference)")
    if text.startswith("exec:"):
        from .exec_adapter import exec_factory

        impl = exec_factory(text[len("exec:"):])
    elif text == "qemu" or text.startswith("qemu:"):
        binary = text[len("qemu:"):] if text.startswith("qemu:") else None
        impl = qemu_factory(binary or None)
    elif ":" in text:
        modname, _, attr = text.partition(":")
        try:
            module = importlib.import_module(modname)
        except ImportError as exc:
            raise ImplementationError(
                f"--qatmig-impl={text}: cannot import module {modname!r} ({exc})"
            ) from exc
        factory = module
        for part in attr.split("."):
            factory = getattr(factory, part, None)
            if factory is None:
                raise ImplementationError(
                    f"--qatmig-impl={text}: module {modname!r} has no attribute {attr!r}"
                )
        impl = factory() if callable(factory) else factory
    else:
        from importlib.metadata import entry_points

        eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == text]
        if not eps:
            known = ", ".join(entry_point_names()) or "none"
            raise ImplementationError(
                f"--qatmig-impl={text}: no implementation of that name (entry points in "
                f"{ENTRY_POINT_GROUP!r}: {known}; or use module:factory or qemu:PATH)"
            )
        impl = eps[0].load()()
    needed = ("capabilities", "destination", "source") if not callable(
        getattr(impl, "pair", None)) else ("capabilities",)
    missing = [m for m in needed if not callable(getattr(impl, m, None))]
    if missing:
        raise ImplementationError(
            f"--qatmig-impl={text}: {type(impl).__name__} is not an Implementation "
            f"(missing {', '.join(missing)}(); it needs capabilities() and either the roles "
            "destination() + source() or pair(); see docs/plugin.md)"
        )
    if not getattr(impl, "name", None):
        try:
            impl.name = text  # type: ignore[attr-defined]
        except AttributeError:
            pass
    return impl


def describe(impl: Implementation) -> str:
    fn = getattr(impl, "describe", None)
    return fn() if callable(fn) else str(getattr(impl, "name", type(impl).__name__))
