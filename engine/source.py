"""The migration source: a migration thread, one sender thread per multifd channel, TCP.

Flow (QEMU's precopy with multifd, migration/ram.c + multifd.c):

1. connect the main channel and the ``multifd-channels`` channels (qemu-7.2: main first,
   since that destination takes the first connection as main; 9.x: multifd first, the
   destination peeks the magic); each sender thread writes its MultiFDInit_t;
2. main stream header, RAM SECTION_START with the block list; setup sync;
3. rounds: sync the dirty bitmap, queue the dirty pages (zero pages as ZERO records on the
   main channel with ``legacy`` detection), then one SYNC packet per channel, then
   ``[MULTIFD_FLUSH] EOS`` + footer on the main channel;
4. when the dirty pages left would take no longer than ``downtime-limit`` at the bandwidth
   measured in the last round (or after ``max_iters`` rounds: reported as not converged), stop
   the guest (pause the workload), sync once more and send the rest in SECTION_END, EOF.

Every wait is bounded by the idle timeout (:class:`~qatmig_engine.transport.Activity`); the
first error cancels every thread and resets the sockets, so the destination fails fast too.
"""

from __future__ import annotations

import itertools
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import tls as tlsmod
from . import transport
from .codecs import get_codec
from .constants import MULTIFD_PACKET_SIZE, TARGET_PAGE_SIZE
from .dialects import get_dialect
from .errors import MigrationError, PeerTimeout, StreamError
from .guest import GuestMemory, RAMBlock, dirty_runs
from .mainstream import MainStreamEncoder, ReturnPathDecoder, open_return_path_commands
from .params import MigrationParameters
from .ratelimit import RateLimiter
from .stats import MigrationStats, SideCounters
from .transport import Activity
from .wire import InitPacket, Packet, make_sync_packet, page_count, parse_uuid
from .workload import Workload

#: Rounds before giving up on convergence (guestperf's max_iters default).
DEFAULT_MAX_ITERS = 30

#: Flush the main channel's buffered records once they exceed this many bytes.
_MAIN_FLUSH = 256 << 10

_SYNC = "sync"
_QUIT = "quit"


@dataclass
class _Job:
    block: RAMBlock
    offsets: list[int]


class _Sender(transport.ChannelThread):
    """One multifd channel: its socket, its codec state, its counters."""

    def __init__(self, src: Source, channel: int, sock: Any) -> None:
        super().__init__(f"qatmig-send-{channel}", src._fail)
        self.src = src
        self.channel = channel
        self.sock = sock
        self.counters = SideCounters()
        self.resume = threading.Semaphore(0)
        self.compressor: Any = None

    def _send(self, bufs: list[Any], nbytes: int) -> None:
        src = self.src
        src.limiter.consume(nbytes)
        transport.sendmsg_all(self.sock, bufs, src.act, f"multifd channel {self.channel}")
        self.counters.multifd_bytes += nbytes

    def _run(self) -> None:
        src = self.src
        ch = self.channel
        ps = src.page_size
        dialect = src.dialect
        method = src.method
        flag = dialect.method_flag(method)
        pages_alloc = page_count(ps)
        zero_in_packet = src.zero_page_detection == "multifd"
        if method != "none":
            opts: dict[str, Any] = {}
            if method == "qatzip" and src.qat is not None:
                opts["qz"] = src.qat.make_engine(ch)
            self.compressor = get_codec(method).new_compressor(
                src.params.compression_level, page_size=ps, channel=ch, **opts
            )
        gather = bytearray(MULTIFD_PACKET_SIZE)
        gview = memoryview(gather)
        init = InitPacket(ch, src.uuid).encode()
        self._send([init], len(init))
        act = src.act
        jobs = src.jobs
        while True:
            try:
                job = jobs.get(timeout=transport.TICK)
            except queue.Empty:
                act.check(f"multifd channel {ch}")
                continue
            if job is _QUIT:
                if src.tls is not None:
                    # QEMU 10.0's clean TLS termination, each channel in its own thread so
                    # the waits for the peer's close_notify overlap.
                    tlsmod.bye(self.sock)
                return
            if job is _SYNC:
                hdr = make_sync_packet(dialect, src.next_packet_num(), method, ps).encode(
                    dialect, ps
                )
                self._send([hdr], len(hdr))
                self.counters.packets += 1
                self.counters.sync_packets += 1
                src.sync_done.release()
                # Take no more work until the migration thread has ended the round.
                while not self.resume.acquire(timeout=transport.TICK):
                    act.check(f"multifd channel {ch} (waiting for the end of the round)")
                continue
            blk: RAMBlock = job.block
            view = blk.view
            offsets = job.offsets
            if zero_in_packet:
                first, last = offsets[0], offsets[-1]
                if last - first == (len(offsets) - 1) * ps:
                    zeros = blk.zero_pages_in_run(first, len(offsets))
                else:
                    is_zero = blk.is_zero
                    zeros = [o for o in offsets if is_zero(o)]
                if zeros:
                    zs = set(zeros)
                    normal = [o for o in offsets if o not in zs]
                else:
                    normal = offsets
            else:
                normal, zeros = offsets, []
            n = len(normal)
            bufs: list[Any]
            if n == 0:
                payload_len = 0
                bufs = []
            elif method == "none":
                bufs = []
                run_start = prev = normal[0]
                for o in normal[1:]:
                    if o != prev + ps:
                        bufs.append(view[run_start : prev + ps])
                        run_start = o
                    prev = o
                bufs.append(view[run_start : prev + ps])
                payload_len = n * ps
            else:
                parts = []
                run_start = prev = normal[0]
                for o in normal[1:]:
                    if o != prev + ps:
                        parts.append(view[run_start : prev + ps])
                        run_start = o
                    prev = o
                parts.append(view[run_start : prev + ps])
                # A method that copies its input as it goes (zstd) reads guest memory in
                # place; the others get a private copy, since the guest may change pages
                # while they are compressed (QEMU copies for zlib for the same reason).
                payload = self.compressor.compress_parts(parts)
                if payload is None:
                    pos = 0
                    for part in parts:
                        ln = len(part)
                        gview[pos : pos + ln] = part
                        pos += ln
                    payload = self.compressor.compress_view(gview[: n * ps])
                payload_len = len(payload)
                bufs = [payload]
            hdr = Packet(
                flags=flag, pages_alloc=pages_alloc, normal_pages=n,
                next_packet_size=payload_len, packet_num=src.next_packet_num(),
                zero_pages=len(zeros), ramblock=blk.name, offsets=normal + zeros,
            ).encode(dialect, ps)
            self._send([hdr, *bufs], len(hdr) + payload_len)
            c = self.counters
            c.packets += 1
            c.payload_bytes += payload_len
            c.normal_pages += n
            c.zero_pages += len(zeros)


class _ReturnPathReader(threading.Thread):
    """QEMU's source return-path thread: reads the destination's messages on the main
    connection from the start, so a MIG_RP_MSG_SHUT(1) sent by a destination that fails
    early is read before the connection resets."""

    def __init__(self, sock: Any, lock: threading.Lock | None = None) -> None:
        super().__init__(name="qatmig-return-path", daemon=True)
        self.sock = sock
        #: TLS: one SSL object must not be read and written by two threads at once.
        self.lock = lock
        self.decoder = ReturnPathDecoder()
        self.stop = threading.Event()
        self.closed = False  # the destination closed the connection
        self.error: BaseException | None = None

    @property
    def shut(self) -> int | None:
        return self.decoder.shut

    def run(self) -> None:
        while not self.stop.is_set() and self.decoder.shut is None:
            try:
                if not tlsmod.wait_readable([self.sock], transport.TICK):
                    continue
                if self.lock is None:
                    data = self.sock.recv(4096)
                else:
                    with self.lock:
                        data = self.sock.recv(4096)
            except TimeoutError:
                continue  # TLS: part of a record only
            except (OSError, ValueError) as exc:
                self.error = exc
                return
            if not data:
                self.closed = True
                return
            try:
                self.decoder.feed(data)
            except StreamError as exc:
                self.error = exc
                return


def _destination_failed(shut: int) -> MigrationError:
    return MigrationError(
        f"the destination failed to load the migration (return path: MIG_RP_MSG_SHUT {shut}; "
        "QEMU's return path carries no reason, see the destination's error)")


class Source:
    """Migrate ``guest`` to a destination listening on ``host:port``; :meth:`run` once."""

    def __init__(
        self,
        guest: GuestMemory,
        params: MigrationParameters,
        host: str,
        port: int,
        *,
        uuid: str | bytes | None = None,
        timeout: float = transport.DEFAULT_TIMEOUT,
        workload: Workload | None = None,
        machine_type: str | None = None,
        max_iters: int = DEFAULT_MAX_ITERS,
        progress: Callable[[int], None] | None = None,
        wait_for_destination: float | None = None,
        connect_wait: float = 0.0,
    ) -> None:
        params.validate()
        self.guest = guest
        #: seconds a refused first connection is retried (the destination may be starting).
        self.connect_wait = connect_wait
        self.params = params
        self.host = host
        self.port = port
        self.uuid = parse_uuid(uuid)
        self.dialect = get_dialect(params.dialect)
        self.method = params.multifd_compression
        self.dialect.method_flag(self.method)
        self.zero_page_detection = params.effective_zero_page_detection
        self.channels = params.multifd_channels
        self.page_size = TARGET_PAGE_SIZE
        self.zero_page = bytes(self.page_size)
        self.workload = workload
        self.max_iters = max(1, int(max_iters))
        self.progress = progress
        self.act = Activity(timeout)
        self.limiter = RateLimiter(params.max_bandwidth, cancel=self.act.cancel)
        self.encoder = MainStreamEncoder(
            self.dialect, machine_type=machine_type, page_size=self.page_size
        )
        self.jobs: queue.Queue[Any] = queue.Queue(maxsize=2 * self.channels)
        self.sync_done = threading.Semaphore(0)
        self._pnum = itertools.count()
        self._pnum_lock = threading.Lock()
        self.senders: list[_Sender] = []
        self.main_sock: Any = None
        self.main_counters = SideCounters()
        self.mbuf = bytearray()
        self.qat: Any = None
        self.stop_time: float | None = None  # monotonic time the guest was stopped
        self.end_time: float | None = None
        self.confirmed: bool | None = None  # destination closed cleanly after EOF
        #: PONG values the destination sent on the return path (return-path capability)
        self.rp_pongs: list[int] = []
        self.rp_reader: _ReturnPathReader | None = None
        #: After EOF, wait this long for the destination to close the main channel (a reset
        #: means it failed). None = the idle timeout; 0 = do not wait (QEMU does not).
        self.wait_for_destination = wait_for_destination
        self.stats = MigrationStats(role="source")
        self._zero_records = 0
        #: tls-creds: every channel is a TLS client of the destination.
        self.tls = tlsmod.settings_from(params)
        self.tls_ctx: Any = None
        self._main_lock = threading.Lock()
        self._setup_done = False  # the setup round's SYNC went through

    # ------------------------------------------------------------------ helpers
    def next_packet_num(self) -> int:
        with self._pnum_lock:
            return next(self._pnum)

    def _fail(self, exc: BaseException) -> None:
        self.act.fail(exc)

    def _check(self, what: str) -> None:
        self.act.raise_failure()
        self.act.check(what)

    def _main_write(self, data: bytes | bytearray, *, flush: bool = False) -> None:
        self.mbuf += data
        if flush or len(self.mbuf) >= _MAIN_FLUSH:
            self._main_flush()

    def _main_flush(self) -> None:
        if not self.mbuf:
            return
        n = len(self.mbuf)
        self.limiter.consume(n)
        with self._main_lock:
            transport.send_all(self.main_sock, bytes(self.mbuf), self.act, "main channel")
        self.main_counters.main_bytes += n
        self.mbuf.clear()

    def _put(self, job: Any) -> None:
        while True:
            try:
                self.jobs.put(job, timeout=transport.TICK)
                return
            except queue.Full:
                self._check("migration thread (all channels busy)")

    def _sync_round(self) -> None:
        """One SYNC per channel, then [MULTIFD_FLUSH] EOS + footer, then release them."""
        for _ in range(self.channels):
            self._put(_SYNC)
        for _ in range(self.channels):
            while not self.sync_done.acquire(timeout=transport.TICK):
                self._check("migration thread (waiting for the channels' SYNC)")
        self.act.raise_failure()
        self._main_write(self.encoder.end_of_round(), flush=True)
        for s in self.senders:
            s.resume.release()

    # ------------------------------------------------------------------ setup
    def _connect(self) -> None:
        host, port = self.host, self.port
        first = [True]

        def mk(h: str, p: int, act: transport.Activity, what: str) -> socket.socket:
            # Only the first connection waits for a listener; once it is up, all connect.
            wait, first[0] = (self.connect_wait if first[0] else 0.0), False
            sock = transport.connect(h, p, act, what, wait=wait)
            if self.tls is not None:
                try:
                    return tlsmod.client_handshake(sock, self.tls_ctx, self.tls, h, act, what)
                except BaseException:
                    transport.abort(sock)
                    raise
            return sock

        if self.tls is not None:
            # A TLS channel cannot be peeked: the destination (QEMU too) takes the first
            # connection whose handshake is done as the main channel. So the main channel
            # connects and finishes its handshake before any multifd channel, in every dialect.
            # Each channel's thread starts (and sends its MultiFDInit_t) as soon as its
            # handshake is done, as QEMU's do: a destination may read that packet before it
            # accepts the next connection.
            self.main_sock = mk(host, port, self.act, "main channel")
            for i in range(self.channels):
                sender = _Sender(self, i, mk(host, port, self.act, f"multifd channel {i}"))
                self.senders.append(sender)
                sender.start()
            return
        elif self.dialect.channel_by_magic:
            # 9.0+ sources may open multifd channels before the main one; the destination
            # identifies each connection by its first 4 bytes.
            socks = [mk(host, port, self.act, f"multifd channel {i}") for i in
                     range(self.channels)]
            self.main_sock = mk(host, port, self.act, "main channel")
        else:
            # A qemu-7.2 destination takes the first accepted connection as the main channel.
            self.main_sock = mk(host, port, self.act, "main channel")
            socks = [mk(host, port, self.act, f"multifd channel {i}") for i in
                     range(self.channels)]
        self.senders = [_Sender(self, i, s) for i, s in enumerate(socks)]

    # ------------------------------------------------------------------ one round
    def _queue_pages(self, taken: dict[str, bytearray]) -> tuple[int, int]:
        """Queue every page of ``taken``; returns (pages queued, zero records written)."""
        ps = self.page_size
        per_packet = page_count(ps)
        legacy = self.zero_page_detection == "legacy"
        enc = self.encoder
        queued = 0
        zeros_main = 0
        for blk in self.guest.blocks:
            bitmap = taken.get(blk.name)
            if bitmap is None:
                continue
            pending: list[int] = []
            for first, count in dirty_runs(bitmap):
                start = first * ps
                end = (first + count) * ps
                if legacy:
                    zero_offs = []
                    for cs in range(start, end, per_packet * ps):
                        ce = min(end, cs + per_packet * ps)
                        zs = blk.zero_pages_in_run(cs, (ce - cs) // ps)
                        zero_offs += zs
                        zset = set(zs)
                        for o in range(cs, ce, ps):
                            if o in zset:
                                continue
                            pending.append(o)
                            if len(pending) == per_packet:
                                self._put(_Job(blk, pending))
                                pending = []
                    if zero_offs:
                        enc.zero_pages(blk.name, zero_offs, self.mbuf)
                        zeros_main += len(zero_offs)
                        if len(self.mbuf) >= _MAIN_FLUSH:
                            self._main_flush()
                else:
                    o = start
                    while o < end:
                        room = per_packet - len(pending)
                        stop = min(end, o + room * ps)
                        pending.extend(range(o, stop, ps))
                        o = stop
                        if len(pending) == per_packet:
                            self._put(_Job(blk, pending))
                            pending = []
                queued += count
                if self.progress is not None:
                    self.progress(count * ps)
            if pending:
                self._put(_Job(blk, pending))
        return queued, zeros_main

    def _take_dirty(self) -> dict[str, bytearray]:
        self.stats.dirty_sync_count += 1
        return {b.name: b.sync_dirty() for b in self.guest.blocks}

    # ------------------------------------------------------------------ run
    def run(self) -> MigrationStats:
        """Run the migration; returns stats (``status`` completed or failed), never hangs."""
        st = self.stats
        p = self.params
        st.record_parameters(p)
        st.total_ram_bytes = self.guest.total_bytes
        st.machine_type = self.encoder.machine_type
        t_start = time.monotonic()
        cpu0 = time.thread_time()
        try:
            self._run(t_start)
            st.status = "completed"
        except Exception as exc:  # typed errors expected; anything else is a bug, still no hang
            rp = self.rp_reader
            if rp is not None and rp.shut is None:
                rp.join(1.0)  # a failing destination's SHUT(1) precedes its reset
            refused = None
            if self.tls is not None and not self._setup_done and self.main_sock is not None:
                # TLS 1.3: the destination checks our client certificate (and tls-authz)
                # after our handshake ended; its alert or close is on the main channel (read
                # here, or by the return path's reader when it runs).
                if rp is None:
                    refused = tlsmod.refusal(self.main_sock, "main channel", self.tls,
                                             self.host)
                elif isinstance(rp.error, ssl.SSLError) and not isinstance(
                        rp.error, ssl.SSLEOFError):
                    refused = tlsmod.explain_client_error(rp.error, "main channel", self.tls,
                                                          self.host)
                elif rp.closed or isinstance(rp.error, OSError):
                    refused = tlsmod.closed_early("main channel", self.tls)
            if rp is not None and rp.shut:
                st.return_path_shut = rp.shut
                st.record_failure(_destination_failed(rp.shut))
            elif refused is not None:
                st.record_failure(refused)
            else:
                st.record_failure(exc, self.act.error)
            self.act.cancel.set()
            transport.abort(self.main_sock)
            for s in self.senders:
                transport.abort(s.sock)
        finally:
            if self.rp_reader is not None:
                self.rp_reader.stop.set()
            if self.workload is not None:
                self.workload.pause()
            self.act.cancel.set()
            for s in self.senders:
                if s.is_alive():
                    s.join(timeout=5)
                if s.compressor is not None:
                    s.compressor.close()
            if self.qat is not None:
                st.qat_fallback_events = self.qat.events()
                self.qat.close()
            transport.close(self.main_sock)
            for s in self.senders:
                transport.close(s.sock)
        end = self.end_time or time.monotonic()
        st.total_time_ms = (end - t_start) * 1000
        st.wall_seconds_source = end - t_start
        st.source = SideCounters()
        st.source.add(self.main_counters)
        st.source.cpu_seconds += time.thread_time() - cpu0
        for s in self.senders:
            st.source.add(s.counters)
        st.source.zero_pages += self._zero_records
        if self.workload is not None:
            st.workload_pages_written = self.workload.pages_written
        return st

    def _run(self, t_start: float) -> None:
        st = self.stats
        p = self.params
        if self.method == "qatzip":
            from .qat.backend import select_backend

            self.qat = select_backend(p)
            st.qat_backend = self.qat.backend
            st.qat_fallback_reasons = list(self.qat.reasons)
        # Compressors are built in the channel threads; build one here first so a bad level
        # or a missing library fails before any connection is made.
        probe = get_codec(self.method).new_compressor(p.compression_level,
                                                      page_size=self.page_size)
        probe.close()
        if self.tls is not None:
            self.tls_ctx = self.tls.client_context()
        self._connect()
        for s in self.senders:
            if not s.is_alive() and s.ident is None:
                s.start()
        enc = self.encoder
        self.guest.mark_all_dirty()
        self._main_write(enc.header())
        if p.return_path:
            # QEMU's migration_thread: tell the destination to open its end, and ping it.
            self._main_write(open_return_path_commands(1))
            self.rp_reader = _ReturnPathReader(
                self.main_sock, self._main_lock if self.tls is not None else None)
            self.rp_reader.start()
        self._main_write(enc.section_start(self.guest.block_list()), flush=True)
        self._sync_round()
        self._setup_done = True
        st.setup_time_ms = (time.monotonic() - t_start) * 1000
        if self.workload is not None:
            self.workload.start()
        ps = self.page_size
        limit_s = p.downtime_limit / 1000.0
        bandwidth = 0.0  # guest bytes per second, measured over the last round
        taken = self._take_dirty()
        dirty_rate = 0.0
        while True:
            remaining = sum(b.count(1) for b in taken.values())
            if st.rounds >= 1:
                expected = remaining * ps / bandwidth if bandwidth > 0 else float("inf")
                st.expected_downtime_ms = expected * 1000
                if expected <= limit_s:
                    st.converged = True
                    break
                if st.rounds >= self.max_iters:
                    st.converged = False
                    break
            t0 = time.monotonic()
            self._main_write(enc.section_part())
            queued, zrec = self._queue_pages(taken)
            self._zero_records += zrec
            self._sync_round()
            dt = max(time.monotonic() - t0, 1e-6)
            st.rounds += 1
            if queued:
                bandwidth = queued * ps / dt
            taken = self._take_dirty()
            new_dirty = sum(b.count(1) for b in taken.values())
            dirty_rate = new_dirty / dt
        st.dirty_pages_rate = dirty_rate
        # Stop and copy.
        if self.workload is not None:
            self.workload.pause()
        self.stop_time = time.monotonic()
        final = self._take_dirty()
        for name, bm in taken.items():
            f = final[name]
            for first, count in dirty_runs(bm):
                f[first : first + count] = b"\x01" * count
        if enc.sends_switchover_start:
            self._main_write(enc.switchover_start())
        self._main_write(enc.section_end())
        _, zrec = self._queue_pages(final)
        self._zero_records += zrec
        self._sync_round()
        st.rounds += 1
        if p.return_path:
            # The destination reads EOF + VMDESCRIPTION and answers MIG_RP_MSG_SHUT.
            self._main_write(enc.eof() + enc.vmdescription(), flush=True)
        else:
            self._main_write(enc.eof(), flush=True)
        for _ in self.senders:
            self._put(_QUIT)
        for s in self.senders:
            while s.is_alive():
                s.join(timeout=transport.TICK)
                if s.is_alive():
                    self._check(f"multifd channel {s.channel} (finishing)")
            if s.error is not None:
                raise s.error
        self.act.raise_failure()
        self.end_time = time.monotonic()
        self._await_destination()

    def _await_shut(self, wait: float) -> None:
        """Return path: wait for the destination's MIG_RP_MSG_SHUT.

        SHUT(0) means the destination loaded everything: only then is the migration
        completed. SHUT(1) (its load failed), a close or reset without SHUT, or silence for
        ``wait`` seconds fail it. QEMU's return path carries no reason text: the destination's
        own error says why.
        """
        rp = self.rp_reader
        if rp is None:  # pragma: no cover - started with the header
            raise MigrationError("return path: no reader")
        rp.join(max(wait, transport.TICK))
        self.rp_pongs = list(rp.decoder.pongs)
        self.stats.return_path_shut = rp.shut
        if rp.shut is None:
            self.confirmed = False
            if rp.is_alive():
                raise PeerTimeout(
                    f"return path: no MIG_RP_MSG_SHUT from the destination within {wait:g} s "
                    "after the end of the stream (is it still loading, or stuck?)")
            if rp.error is not None and not isinstance(rp.error, OSError):
                raise MigrationError(f"return path: {rp.error}")
            how = "reset" if rp.error is not None else "closed"
            raise MigrationError(
                f"return path: the destination {how} the main channel without "
                "MIG_RP_MSG_SHUT: it did not confirm loading the migration")
        if rp.shut != 0:
            self.confirmed = False
            raise _destination_failed(rp.shut)
        self.confirmed = True
        self.end_time = time.monotonic()

    def _await_destination(self) -> None:
        """Half-close every channel and wait for the destination to close the main one.

        A clean close confirms the destination got everything; a reset (it aborts on
        failure) fails the migration here too. No byte is ever read from the destination.
        """
        wait = self.act.idle_timeout if self.wait_for_destination is None else \
            self.wait_for_destination
        socks = [self.main_sock] + [s.sock for s in self.senders]
        if self.tls is not None:
            # QEMU 10.0's clean TLS termination: the senders sent close_notify on every
            # multifd channel when they quit (10.0 destinations treat a premature end as an
            # error unless the compat property multifd-clean-tls-termination is off); the
            # main channel's now, unless the return path still has to bring
            # MIG_RP_MSG_SHUT back.
            if not self.params.return_path:
                tlsmod.bye(self.main_sock)
        else:
            for s in socks:
                try:
                    s.shutdown(transport.socket.SHUT_WR)
                except OSError:
                    pass
        if self.params.return_path:
            self._await_shut(wait)
            return
        if wait <= 0:
            return
        deadline = time.monotonic() + wait
        sock = self.main_sock
        while time.monotonic() < deadline:
            try:
                data = sock.recv(1)
            except TimeoutError:
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""  # TLS: its close_notify, or a close without one: not a reset
            except OSError as exc:
                raise MigrationError(
                    f"destination reset the main channel after EOF ({exc.strerror or exc}): "
                    "it failed to load the migration; see its error"
                ) from None
            if data:
                raise MigrationError("destination sent data on the main channel")
            self.confirmed = True
            self.end_time = time.monotonic()
            return
        self.confirmed = False
