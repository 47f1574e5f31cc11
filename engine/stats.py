"""Migration statistics with QEMU's query-migrate names, plus the seed table's columns.

:meth:`MigrationStats.to_qmp` mirrors ``query-migrate`` (``status``, ``total-time``,
``downtime``, ``setup-time``, ``ram`` {``transferred``, ``normal``, ``duplicate``, ``mbps``,
``pages-per-second``, ``dirty-sync-count``, ``multifd-bytes`` ...}); :meth:`to_json` is the flat
object ``qatmig migrate --json`` prints.

Definitions (all measured, none estimated):

* ``transferred_bytes``: every byte written on the wire, all channels (init packets, headers,
  payloads, main stream).
* ``throughput_mbps``: transferred bits / (total time - setup time) / 1e6, as QEMU's final mbps.
* ``pages_per_second``: (normal + zero pages) / (total time - setup time).
* ``compression_ratio``: normal pages x page size / multifd payload bytes (1.0 for ``none``).
* ``send_cpu_percent`` / ``recv_cpu_percent``: CPU time of the threads that did the work on
  that side (per-thread ``time.thread_time()``), over wall time; 100 = one core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SideCounters:
    """Counters of one side (source or destination), summed over its threads."""

    multifd_bytes: int = 0  # bytes on the multifd sockets (init + headers + payloads)
    main_bytes: int = 0  # bytes on the main channel
    payload_bytes: int = 0  # multifd payload bytes (compressed size)
    packets: int = 0
    sync_packets: int = 0
    normal_pages: int = 0
    zero_pages: int = 0  # multifd zero pages + ZERO records on the main channel
    cpu_seconds: float = 0.0

    def add(self, other: SideCounters) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size (VmHWM), or None off Linux."""
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class MigrationStats:
    """Outcome and metrics of one migration (one side, or both for a loopback run)."""

    status: str = "setup"  # setup, active, completed, failed
    error: str | None = None
    error_type: str | None = None  # class name of the root-cause exception
    total_time_ms: float = 0.0
    setup_time_ms: float = 0.0
    downtime_ms: float | None = None
    expected_downtime_ms: float | None = None
    downtime_limit_ms: int = 0
    converged: bool | None = None
    rounds: int = 0
    dirty_sync_count: int = 0
    page_size: int = 4096
    total_ram_bytes: int = 0
    source: SideCounters = field(default_factory=SideCounters)
    destination: SideCounters = field(default_factory=SideCounters)
    wall_seconds_source: float = 0.0
    wall_seconds_destination: float = 0.0
    dirty_pages_rate: float = 0.0
    workload_pages_written: int = 0
    verified: bool | None = None
    source_digest: str | None = None
    destination_digest: str | None = None
    #: sha256 of each RAM block (``source_digest``/``destination_digest`` cover the first);
    #: set when a guest has further blocks (``--add-ramblock``).
    ramblock_digests: dict[str, str] | None = None
    multifd_channels: int = 0
    multifd_compression: str = "none"
    compression_level: int | None = None
    zero_page_detection: str = ""
    dialect: str = ""
    max_bandwidth: int = 0
    corpus: str | None = None
    qat_backend: str | None = None
    qat_fallback_reasons: list[str] = field(default_factory=list)
    qat_fallback_events: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_bytes: int | None = None
    guest_mapped_bytes: int | None = None
    device_state_bytes: int = 0
    machine_type: str | None = None
    #: QEMU_VM_COMMAND sections on the main channel, by QEMU's name, in order.
    vm_commands: list[str] = field(default_factory=list)
    #: The return path was open (QEMU's return-path capability on the source).
    return_path: bool = False
    #: MIG_RP_MSG_SHUT value the destination sent / the source received (0 = loaded
    #: everything, 1 = the load failed); None without a return path.
    return_path_shut: int | None = None
    #: Every channel ran over TLS (tls-creds); the destination records the source's client
    #: certificate DN (as tls-authz matches it).
    tls: bool = False
    tls_peer_dn: str | None = None
    role: str = "both"  # source, destination, both

    # ------------------------------------------------------------------ derived
    @property
    def _side(self) -> SideCounters:
        """The counters that describe the wire: the source's when it ran here."""
        return self.source if self.role in ("source", "both") else self.destination

    @property
    def transferred_bytes(self) -> int:
        s = self._side
        return s.multifd_bytes + s.main_bytes

    @property
    def normal_pages(self) -> int:
        return self._side.normal_pages

    @property
    def zero_pages(self) -> int:
        return self._side.zero_pages

    @property
    def _active_seconds(self) -> float:
        return max((self.total_time_ms - self.setup_time_ms) / 1000.0, 1e-9)

    @property
    def throughput_mbps(self) -> float:
        return self.transferred_bytes * 8 / self._active_seconds / 1e6

    @property
    def pages_per_second(self) -> float:
        return (self.normal_pages + self.zero_pages) / self._active_seconds

    @property
    def compression_ratio(self) -> float | None:
        s = self._side
        if not s.payload_bytes:
            return None
        return s.normal_pages * self.page_size / s.payload_bytes

    def _cpu_percent(self, side: SideCounters, wall: float) -> float | None:
        if wall <= 0:
            return None
        return 100.0 * side.cpu_seconds / wall

    @property
    def send_cpu_percent(self) -> float | None:
        if self.role == "destination":
            return None
        return self._cpu_percent(self.source, self.wall_seconds_source)

    @property
    def recv_cpu_percent(self) -> float | None:
        if self.role == "source":
            return None
        return self._cpu_percent(self.destination, self.wall_seconds_destination)

    # ------------------------------------------------------------------ renderings
    def record_parameters(self, params: Any) -> None:
        """Copy the run's migration parameters (a ``MigrationParameters``) into the stats."""
        self.multifd_channels = params.multifd_channels
        self.multifd_compression = params.multifd_compression
        self.compression_level = params.compression_level
        self.zero_page_detection = params.effective_zero_page_detection
        self.dialect = params.dialect
        self.max_bandwidth = params.max_bandwidth
        self.downtime_limit_ms = params.downtime_limit
        self.return_path = bool(getattr(params, "return_path", False)) or self.return_path
        self.tls = bool(getattr(params, "tls_creds", None))

    def record_failure(
        self, exc: BaseException, first_error: BaseException | None = None
    ) -> BaseException:
        """Mark the migration ``failed`` with its root cause and return that cause.

        ``first_error`` is the error another thread recorded first; a ``Cancelled`` raised
        only because of it is not the cause. Anything not deliberate is labelled internal.
        """
        from .errors import QatmigError
        from .transport import Cancelled

        root = first_error if first_error is not None else exc
        if isinstance(root, Cancelled) and not isinstance(exc, Cancelled):
            root = exc
        self.status = "failed"
        self.error = str(root)
        self.error_type = type(root).__name__
        if not isinstance(root, QatmigError | OSError):
            self.error = f"internal error ({type(root).__name__}: {root})"
        return root

    def to_qmp(self) -> dict[str, Any]:
        """``query-migrate``-shaped dict (QEMU's names)."""
        out: dict[str, Any] = {
            "status": self.status,
            "total-time": round(self.total_time_ms),
            "setup-time": round(self.setup_time_ms),
        }
        if self.downtime_ms is not None:
            out["downtime"] = round(self.downtime_ms)
        if self.expected_downtime_ms is not None:
            out["expected-downtime"] = round(self.expected_downtime_ms)
        s = self._side
        out["ram"] = {
            "transferred": self.transferred_bytes,
            "remaining": 0 if self.status == "completed" else None,
            "total": self.total_ram_bytes,
            "duplicate": s.zero_pages,
            "normal": s.normal_pages,
            "normal-bytes": s.normal_pages * self.page_size,
            "dirty-pages-rate": round(self.dirty_pages_rate),
            "mbps": round(self.throughput_mbps, 2),
            "dirty-sync-count": self.dirty_sync_count,
            "page-size": self.page_size,
            "multifd-bytes": s.multifd_bytes,
            "pages-per-second": round(self.pages_per_second),
            "precopy-bytes": s.main_bytes,
        }
        if self.error:
            out["error-desc"] = self.error
        return out

    def to_json(self) -> dict[str, Any]:
        """The flat JSON object of ``qatmig migrate --json``."""
        ratio = self.compression_ratio

        def r(x: float | None, nd: int = 1) -> float | None:
            return None if x is None else round(x, nd)

        out: dict[str, Any] = {
            "status": self.status,
            "error": self.error,
            "error_type": self.error_type,
            "role": self.role,
            "total_time_ms": r(self.total_time_ms),
            "setup_time_ms": r(self.setup_time_ms),
            "downtime_ms": r(self.downtime_ms),
            "expected_downtime_ms": r(self.expected_downtime_ms),
            "downtime_limit_ms": self.downtime_limit_ms,
            "converged": self.converged,
            "rounds": self.rounds,
            "throughput_mbps": r(self.throughput_mbps),
            "pages_per_second": round(self.pages_per_second),
            "transferred_bytes": self.transferred_bytes,
            "multifd_bytes": self._side.multifd_bytes,
            "main_channel_bytes": self._side.main_bytes,
            "payload_bytes": self._side.payload_bytes,
            "total_ram_bytes": self.total_ram_bytes,
            "normal_pages": self.normal_pages,
            "zero_pages": self.zero_pages,
            "dirty_sync_count": self.dirty_sync_count,
            "dirty_pages_rate": round(self.dirty_pages_rate),
            "workload_pages_written": self.workload_pages_written,
            "compression_ratio": r(ratio, 3),
            "send_cpu_percent": r(self.send_cpu_percent),
            "recv_cpu_percent": r(self.recv_cpu_percent),
            "verified": self.verified,
            "source_digest": self.source_digest,
            "destination_digest": self.destination_digest,
            "ramblock_digests": self.ramblock_digests,
            "multifd_channels": self.multifd_channels,
            "multifd_compression": self.multifd_compression,
            "compression_level": self.compression_level,
            "zero_page_detection": self.zero_page_detection,
            "dialect": self.dialect,
            "max_bandwidth": self.max_bandwidth,
            "corpus": self.corpus,
            "machine_type": self.machine_type,
            "device_state_bytes": self.device_state_bytes,
            "vm_commands": list(self.vm_commands),
            "return_path": self.return_path,
            "return_path_shut": self.return_path_shut,
            "tls": self.tls,
            "tls_peer_dn": self.tls_peer_dn,
            "peak_rss_bytes": self.peak_rss_bytes,
            "guest_mapped_bytes": self.guest_mapped_bytes,
        }
        if self.multifd_compression == "qatzip" or self.qat_backend is not None:
            out["qat_backend"] = self.qat_backend
            out["qat_fallback_reasons"] = list(self.qat_fallback_reasons)
            out["qat_fallback_events"] = list(self.qat_fallback_events)
        else:
            out["qat_backend"] = None
        return out

    def table_row(self) -> list[Any]:
        """Seed-style row: method, channels, total ms, downtime ms, Mbps, pages/s, send %,
        recv %, ratio, verified."""

        def f(x: float | None, fmt: str) -> str:
            return "-" if x is None else format(x, fmt)

        return [
            self.multifd_compression,
            self.multifd_channels,
            f(self.total_time_ms, ".0f"),
            f(self.downtime_ms, ".0f"),
            f(self.throughput_mbps, ".0f"),
            f(self.pages_per_second, ".0f"),
            f(self.send_cpu_percent, ".0f") + ("%" if self.send_cpu_percent is not None else ""),
            f(self.recv_cpu_percent, ".0f") + ("%" if self.recv_cpu_percent is not None else ""),
            f(self.compression_ratio, ".2f"),
            {True: "yes", False: "NO", None: "-"}[self.verified],
        ]

    TABLE_HEADERS = (
        "method", "channels", "total ms", "downtime ms", "Mbps", "pages/s", "send %",
        "recv %", "ratio", "verified",
    )
    #: What the table's less obvious columns count; printed under every table of these rows.
    TABLE_LEGEND = (
        "Mbps: megabits/s on the wire (compressed bytes as sent, all channels)  "
        "pages/s: guest pages moved per second\n"
        "send/recv %: CPU time of that end / wall time (100% = one core)  "
        "ratio: guest bytes / wire payload bytes (higher = smaller on the wire)"
    )

    def summary(self) -> str:
        """One sentence a person reads first: what moved, how, how fast, whether it matched."""
        verb = {"source": "sent", "destination": "received"}.get(self.role, "migrated")
        pages = self.normal_pages + self.zero_pages
        how = ", ".join(
            ([] if self.compression_level is None else [f"level {self.compression_level}"])
            + [f"dialect {self.dialect}"]
        )
        corpus = f", corpus {self.corpus}" if self.corpus else ""
        plural = "s" if self.multifd_channels != 1 else ""
        what = (f"{verb} {self.total_ram_bytes / (1 << 20):,.0f} MiB of guest RAM ({pages:,} pages"
                f"{corpus}) over {self.multifd_channels} {self.multifd_compression} channel"
                f"{plural} ({how})")
        if self.status != "completed":
            return f"{what}: FAILED: {self.error}"
        check = {True: "destination RAM verified identical to the source",
                 False: "destination RAM DIFFERS from the source",
                 None: "RAM not compared here (compare both ends' sha256 digests)"}[self.verified]
        return (f"{what} in {self.total_time_ms / 1000:.2f} s at {self.throughput_mbps:,.0f} "
                f"Mbps: {check}.")
