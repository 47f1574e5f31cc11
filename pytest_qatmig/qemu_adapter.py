"""Adapter for a real QEMU binary (``--qatmig-impl qemu:PATH``): black-box over QMP.

Each migration starts a source and an ``-incoming defer`` destination QEMU on loopback with
their RAM in ``memory-backend-file`` files (``qatmig_engine.qemu.process``), copies the guest
image into the source's RAM file, migrates with multifd, and verifies by comparing the two RAM
files byte for byte. Both QEMUs are ended by pid and their files removed before ``migrate``
returns.
"""

from __future__ import annotations

import filecmp
import re
import shutil
import time
from pathlib import Path
from typing import Any

from .adapters import PairSpec, guest_path
from .devices import QatDevice
from .results import MigrationResult
from .roles import MEASURE_KEY

MIB = 1 << 20


def _reported(mapping: dict[str, Any], key: str, kind: type) -> Any:
    """``mapping[key]`` converted to ``kind``, or None when QEMU did not report it."""
    value = mapping.get(key)
    return None if value is None else kind(value)


def wire_fields(ram: dict[str, Any], version: tuple[int, int], compression: str) -> dict[str, Any]:
    """``throughput_mbps`` / ``transferred_bytes`` in the engine's meaning (bytes on the wire),
    and QEMU's own ``mbps`` / ``transferred`` under their own names.

    QEMU up to 8.0 counts multifd pages at their *uncompressed* size at enqueue time (fixed in
    8.1): with compression its ``mbps`` is not a wire rate, so the wire fields are None (not
    reported) rather than a flattering number under the engine's name. Without compression the
    uncompressed size is what goes on the wire.
    """
    counts = "wire" if version >= (8, 1) or compression == "none" else "uncompressed"
    qemu_mbps = _reported(ram, "mbps", float)
    qemu_transferred = _reported(ram, "transferred", int)
    return {
        "throughput_mbps": qemu_mbps if counts == "wire" else None,
        "transferred_bytes": qemu_transferred if counts == "wire" else None,
        "qemu_mbps": qemu_mbps,
        "qemu_transferred_bytes": qemu_transferred,
        "qemu_byte_accounting": counts,
    }


def _dialect_for(version: tuple[int, int]) -> str:
    if version >= (10, 0):
        return "qemu-10.0"
    if version >= (9, 2):
        return "qemu-9.2"
    if version >= (9, 0):
        return "qemu-9.0"
    return "qemu-7.2"


class QemuPair:
    """Two QEMUs per ``migrate`` call (a QEMU destination accepts one incoming migration)."""

    def __init__(self, impl: QemuImplementation, spec: PairSpec, workdir: Path) -> None:
        self.impl = impl
        self.spec = spec
        self.workdir = workdir
        self.source = {"role": "source", "binary": impl.binary}
        self.destination = {"role": "destination", "binary": impl.binary}

    def migrate(self, guest: Any, *, timeout: float = 120.0) -> MigrationResult:
        from qatmig_engine.errors import QemuError
        from qatmig_engine.qemu.process import QemuProcess

        image = guest_path(guest)
        size = image.stat().st_size
        if size <= 0 or size % MIB:
            raise ValueError(f"QEMU needs a guest of whole MiB, not {size} bytes ({image})")
        src_ram = self.workdir / "src.ram"
        dst_ram = self.workdir / "dst.ram"
        shutil.copyfile(image, src_ram)
        spec = self.spec
        src = QemuProcess(ram_file=src_ram, ram_size=size, binary=self.impl.binary,
                          workdir=self.workdir / "src", name="src")
        dst = QemuProcess(ram_file=dst_ram, ram_size=size, binary=self.impl.binary,
                          workdir=self.workdir / "dst", name="dst", incoming=True)
        fields: dict[str, Any] = {}
        try:
            src.start()
            dst.start()
            bw = spec.max_bandwidth or None
            for q in (dst, src):
                if bw is None:
                    q.setup_migration(channels=spec.channels, compression=spec.compression,
                                      level=spec.level)
                else:
                    q.setup_migration(channels=spec.channels, compression=spec.compression,
                                      level=spec.level, max_bandwidth=bw)
            port = dst.migrate_incoming()
            cpu_src, cpu_dst = src.cpu_seconds(), dst.cpu_seconds()
            t0 = time.monotonic()
            src.migrate(f"tcp:127.0.0.1:{port}")
            info = src.wait_migration(timeout=timeout)
            dst.wait_migration(timeout=timeout)
            wall = max(time.monotonic() - t0, 1e-9)
            send_cpu = 100 * (src.cpu_seconds() - cpu_src) / wall
            recv_cpu = 100 * (dst.cpu_seconds() - cpu_dst) / wall
            # The role path's fields (one end's query-migrate), plus the other end's CPU.
            fields = _info_fields(info, self.impl.version, spec.compression,
                                  "send_cpu_percent", send_cpu)
            fields["recv_cpu_percent"] = round(recv_cpu, 1)
        except QemuError as exc:
            fields = {
                "status": "failed", "error": str(exc), "total_time_ms": None,
                "downtime_ms": None, "throughput_mbps": None, "pages_per_second": None,
                "transferred_bytes": None, "normal_pages": None, "zero_pages": None,
                "send_cpu_percent": None, "recv_cpu_percent": None,
            }
        finally:
            src.stop()
            dst.stop()
        try:
            verified = fields["status"] == "completed" and filecmp.cmp(
                src_ram, dst_ram, shallow=False
            ) and filecmp.cmp(src_ram, image, shallow=False)
        finally:
            for path in (src_ram, dst_ram):
                path.unlink(missing_ok=True)
            for d in ("src", "dst"):
                shutil.rmtree(self.workdir / d, ignore_errors=True)
        pages = (fields.get("normal_pages") or 0) + (fields.get("zero_pages") or 0)
        if not fields.get("pages_per_second") and fields.get("total_time_ms"):
            # QEMU 7.2 reports pages-per-second 0 once completed: derive it from its counters.
            fields["pages_per_second"] = round(pages / (fields["total_time_ms"] / 1000), 1)
        fields.update(
            verified=bool(verified),
            multifd_channels=spec.channels,
            multifd_compression=spec.compression,
            compression_level=spec.level,
            dialect=self.impl.dialect,
            implementation=self.impl.version_line,
        )
        return MigrationResult(fields)

    def close(self) -> None:
        # Each migrate() ends its QEMUs by pid and removes their files before returning.
        pass


def _info_fields(info: dict[str, Any], version: tuple[int, int], compression: str,
                 cpu_key: str, cpu_percent: float) -> dict[str, Any]:
    """One end's result mapping from QEMU's final ``query-migrate``."""
    ram = info.get("ram", {})
    fields: dict[str, Any] = {
        # QEMU's mbps is bytes over total-time minus setup-time (its channels connect during
        # setup): the honest-stats check needs both, or a slow setup reads as a doubled rate.
        "status": info.get("status"),
        # Missing means missing: None, never 0 (0 would pass any max threshold).
        "total_time_ms": _reported(info, "total-time", float),
        "downtime_ms": _reported(info, "downtime", float),
        "setup_time_ms": _reported(info, "setup-time", float),
        "pages_per_second": _reported(ram, "pages-per-second", float),
        "pages_per_second_reported": _reported(ram, "pages-per-second", float),
        "normal_pages": _reported(ram, "normal", int),
        "zero_pages": _reported(ram, "duplicate", int),
        "dirty_sync_count": _reported(ram, "dirty-sync-count", int),
        cpu_key: round(cpu_percent, 1),
        **wire_fields(ram, version, compression),
    }
    pages = (fields.get("normal_pages") or 0) + (fields.get("zero_pages") or 0)
    if not fields.get("pages_per_second") and fields.get("total_time_ms"):
        # QEMU 7.2 reports pages-per-second 0 once completed: derive it from its counters.
        fields["pages_per_second"] = round(pages / (fields["total_time_ms"] / 1000), 1)
    return fields


def _whole_mib(size: int) -> None:
    """QEMU's ``-m`` takes whole MiB here: another guest size is a case this end cannot run."""
    if size <= 0 or size % MIB:
        from .roles import Unsupported

        raise Unsupported(f"qemu runs guests of whole MiB (-m), not {size} bytes")


class QemuIncoming:
    """The destination role: an ``-incoming defer`` QEMU whose RAM is the suite's file."""

    def __init__(self, impl: QemuImplementation, spec: PairSpec, ctx: Any) -> None:
        from qatmig_engine.qemu.process import UNLIMITED_BANDWIDTH, QemuProcess

        self.impl = impl
        self.spec = spec
        _whole_mib(ctx.ram_size)
        self.q = QemuProcess(ram_file=ctx.ram, ram_size=ctx.ram_size, binary=impl.binary,
                             workdir=Path(ctx.workdir) / "q", name="dst", incoming=True,
                             uuid=ctx.uuid, backend_id=ctx.ramblock)
        try:
            self.q.start()
            self.q.setup_migration(channels=spec.channels, compression=spec.compression,
                                   level=spec.level,
                                   max_bandwidth=spec.max_bandwidth or UNLIMITED_BANDWIDTH)
            self.address = ("127.0.0.1", self.q.migrate_incoming())
            self.machine_type: str | None = self.q.machine_type()
            self._cpu0 = self.q.cpu_seconds()
            self._t0 = time.monotonic()
        except BaseException:
            self.q.stop()
            raise

    def wait(self, timeout: float) -> dict[str, Any]:
        from qatmig_engine.errors import QemuError

        try:
            info = self.q.wait_migration(timeout=timeout)
            cpu_s, t1 = self.q.cpu_seconds() - self._cpu0, time.monotonic()
            cpu = 100 * cpu_s / max(t1 - self._t0, 1e-9)
        except QemuError as exc:
            return {"status": "failed", "error": str(exc)}
        fields = _info_fields(info, self.impl.version, self.spec.compression,
                              "recv_cpu_percent", cpu)
        fields["implementation"] = self.impl.version_line
        fields[MEASURE_KEY] = {"cpu_s": cpu_s, "t_start": self._t0, "t_end": t1,
                               "how": "QEMU's process from migrate-incoming to completed"}
        return fields

    def close(self) -> None:
        self.q.stop()


class QemuImplementation:
    """A real ``qemu-system-x86_64`` (default: ``$QATMIG_QEMU`` or the one on PATH)."""

    name = "qemu"
    #: As a source it announces its firmware, ROM and VGA RAM blocks beside the guest's.
    other_ramblocks = True

    def __init__(self, binary: str | None = None) -> None:
        from qatmig_engine.errors import QemuError
        from qatmig_engine.qemu.process import INSTALL_HINT, find_qemu, qemu_version

        from .adapters import ImplementationError

        path = find_qemu(binary)
        if path is None:
            raise ImplementationError(
                f"--qatmig-impl=qemu:{binary or ''}: {binary or 'qemu-system-x86_64'} not found "
                f"or not executable; {INSTALL_HINT}"
            )
        self.binary = path
        try:
            self.version_line = qemu_version(path)
        except QemuError as exc:
            raise ImplementationError(f"--qatmig-impl=qemu:{path}: {exc}") from None
        m = re.search(r"version (\d+)\.(\d+)", self.version_line)
        self.version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        self.dialect = _dialect_for(self.version)

    def capabilities(self) -> frozenset[str]:
        return frozenset({
            "none", "zlib", "zstd", f"dialect:{self.dialect}", "max-bandwidth", "verify",
        })

    def pair(self, spec: PairSpec, *, device: QatDevice, workdir: Path) -> QemuPair:
        from qatmig_engine.params import MigrationParameters

        if spec.compression not in ("none", "zlib", "zstd"):
            raise ValueError(
                f"multifd-compression {spec.compression!r}: this adapter drives QEMU with "
                "none, zlib or zstd"
            )
        if spec.dialect not in (None, self.dialect):
            raise ValueError(
                f"dialect {spec.dialect!r}: {self.version_line} speaks {self.dialect}"
            )
        if spec.options:
            raise ValueError(
                f"the QEMU adapter takes no extra parameters ({', '.join(spec.options)})"
            )
        # Same validation texts as QEMU's migrate-set-parameters, before starting anything.
        kwargs: dict[str, Any] = {
            "multifd_channels": spec.channels, "multifd_compression": spec.compression,
            "max_bandwidth": spec.max_bandwidth, "dialect": self.dialect,
        }
        if spec.level is not None:
            if spec.compression == "none":
                raise ValueError("level given but multifd-compression 'none' has no level")
            kwargs[f"multifd_{spec.compression}_level"] = spec.level
        MigrationParameters(**kwargs)
        return QemuPair(self, spec, workdir)

    # ---- roles (pytest_qatmig.roles)
    def validate(self, spec: PairSpec) -> None:
        """QEMU's migrate-set-parameters checks, before anything starts."""
        from qatmig_engine.params import MigrationParameters

        if spec.options:
            raise ValueError(
                f"the QEMU adapter takes no extra parameters ({', '.join(spec.options)})"
            )
        kwargs: dict[str, Any] = {
            "multifd_channels": spec.channels, "multifd_compression": spec.compression,
            "max_bandwidth": spec.max_bandwidth, "dialect": spec.dialect or self.dialect,
        }
        if spec.level is not None:
            kwargs[f"multifd_{spec.compression}_level"] = spec.level
        MigrationParameters(**kwargs).validate()

    def destination(self, spec: PairSpec, ctx: Any) -> QemuIncoming:
        return QemuIncoming(self, spec, ctx)

    def source(self, spec: PairSpec, ctx: Any, address: tuple[str, int]) -> dict[str, Any]:
        """A QEMU (``-S``: no guest code runs) whose RAM is the suite's file, migrating to
        ``address``."""
        from qatmig_engine.errors import QemuError
        from qatmig_engine.qemu.process import UNLIMITED_BANDWIDTH, QemuProcess

        _whole_mib(ctx.ram_size)
        q = QemuProcess(ram_file=ctx.ram, ram_size=ctx.ram_size, binary=self.binary,
                        workdir=Path(ctx.workdir) / "q", name="src", uuid=ctx.uuid,
                        backend_id=ctx.ramblock)
        try:
            q.start()
            q.setup_migration(channels=spec.channels, compression=spec.compression,
                              level=spec.level,
                              max_bandwidth=spec.max_bandwidth or UNLIMITED_BANDWIDTH)
            cpu0, t0 = q.cpu_seconds(), time.monotonic()
            q.migrate(f"tcp:{address[0]}:{address[1]}")
            info = q.wait_migration(timeout=ctx.timeout)
            cpu_s, t1 = q.cpu_seconds() - cpu0, time.monotonic()
            cpu = 100 * cpu_s / max(t1 - t0, 1e-9)
        except QemuError as exc:
            return {"status": "failed", "error": str(exc)}
        finally:
            q.stop()
        fields = _info_fields(info, self.version, spec.compression, "send_cpu_percent", cpu)
        fields["implementation"] = self.version_line
        fields[MEASURE_KEY] = {"cpu_s": cpu_s, "t_start": t0, "t_end": t1,
                               "how": "QEMU's process from migrate to completed"}
        return fields

    def describe(self) -> str:
        return f"qemu ({self.binary}: {self.version_line}, {self.dialect})"
