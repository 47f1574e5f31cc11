"""The migration destination: accept the channels, rebuild guest RAM in place, over TCP.

* Channels: ``1 + multifd-channels`` connections. qemu-7.2 takes the first accepted as the
  main channel; 9.x peeks 4 bytes (QEVM -> main, 0x11223344 -> multifd). Each multifd channel
  starts with a MultiFDInit_t (magic, version, uuid, id): checked, ids must be unique and below
  ``multifd-channels``. Extra connections during the migration fail it (no silent loss).
* One receiver thread per channel decodes packets straight into guest memory (``none``:
  ``recv_into`` the mapping at the page offsets; others: decompress one packet into a bounded
  buffer, then copy each page into place -- never a full-image staging copy).
* Barrier: a receiver that got a SYNC packet stops until the main thread has read the round's
  end on the main channel (EOS in qemu-7.2, MULTIFD_FLUSH in 9.x) and released every channel,
  so a later round's copy of a page always wins.
* Completion: the RAM section's END footer, then the main channel closed by the source (device
  state after RAM END, if any, is consumed as an opaque blob), every channel idle at a packet
  boundary. Anything else is ``failed``: a partial image is never reported ``completed``.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from . import tls as tlsmod
from . import transport
from .codecs import get_codec
from .constants import (
    MIG_CMD_OPEN_RETURN_PATH,
    MIG_CMD_PING,
    MULTIFD_INIT_PACKET_SIZE,
    TARGET_PAGE_SIZE,
)
from .dialects import get_dialect
from .errors import ChannelClosed, MigrationError, PeerTimeout, StreamError, TLSError
from .guest import GuestMemory, RAMBlock, file_data_map
from .mainstream import (
    RETURN_PATH_COMMANDS,
    Configuration,
    DeviceState,
    EndOfSection,
    MainStreamDecoder,
    MemSize,
    MultifdFlush,
    Page,
    RamEnd,
    VmCommand,
    ZeroPage,
    rp_pong,
    rp_shut,
    vmdescription_ends,
)
from .params import MigrationParameters
from .stats import MigrationStats, SideCounters, peak_rss_bytes
from .transport import Activity, Cancelled
from .wire import (
    InitPacket,
    PacketOrder,
    PacketValidator,
    decode_packet,
    duplicate_channel_error,
    identify_channel,
    packet_len,
    page_count,
    parse_uuid,
)

#: Anonymous memory the destination may allocate for RAM blocks it has no image for (ROM
#: blocks of a real QEMU source: pc.bios, pc.rom, /rom@etc/acpi/tables, ...).
DEFAULT_MAX_EXTRA_BLOCK_BYTES = 1 << 30

_MAIN_RECV = 256 << 10
#: TLS: at most this much of the main channel is read ahead while multifd channels connect.
_MAIN_PREFIX_MAX = 16 << 20
#: Device state a return-path destination buffers after the RAM section while it looks for
#: the stream's end (QEMU's is ~0.1 MiB without a guest OS).
MAX_DEVICE_STATE_BYTES = 64 << 20


class _Receiver(transport.ChannelThread):
    """One multifd channel of the destination: its socket, its codec state, its counters."""

    def __init__(self, dst: Destination, channel: int, sock: Any) -> None:
        super().__init__(f"qatmig-recv-{channel}", dst._fail)
        self.dst = dst
        self.channel = channel
        self.sock = sock
        self.counters = SideCounters(multifd_bytes=MULTIFD_INIT_PACKET_SIZE)
        self.resume = threading.Semaphore(0)
        self.in_sync = False
        #: sync rounds this channel has passed (its packets belong to round ``round``)
        self.round = 0
        self.eof = False
        self.decompressor: Any = None

    def _readable(self) -> bool:
        """Wait for the next header; False when the migration is over and we are idle."""
        dst = self.dst
        what = f"multifd channel {self.channel}"
        while True:
            try:
                r = tlsmod.wait_readable([self.sock], transport.TICK)
            except (OSError, ValueError):
                if dst.act.cancel.is_set():
                    raise Cancelled(f"{what}: migration cancelled") from None
                raise
            if r:
                return True
            if dst.finishing.is_set():
                return False
            dst.act.check(what)

    def _run(self) -> None:
        dst = self.dst
        ch = self.channel
        what = f"multifd channel {ch}"
        ps = dst.page_size
        dialect = dst.dialect
        act = dst.act
        spec = get_codec(dst.method)
        plen = packet_len(ps)
        hdr = bytearray(plen)
        hview = memoryview(hdr)
        payload = bytearray(spec.max_payload(page_count(ps), ps))
        pview = memoryview(payload)
        is_none = dst.method == "none"
        if not is_none:
            self.decompressor = spec.new_decompressor(page_size=ps, channel=ch)
        validator = PacketValidator(
            dialect, dst.method, dst.ramblocks, ps, ch, max_payload=spec.max_payload
        )
        zero = dst.zero_page
        order = dst.order
        sock = self.sock
        c = self.counters
        ones = b"\x01" * page_count(ps)
        while True:
            if not self._readable():
                return
            if not transport.recv_into_exact(sock, hview, act, what, eof_ok=True):
                self.eof = True
                # TLS: answer the source's close_notify, so its wait for ours ends now.
                tlsmod.bye(sock, wait=0.0)
                return
            c.multifd_bytes += plen
            pkt = decode_packet(hview, dialect, ps, ch)
            if (pkt.normal_pages or pkt.zero_pages) and not dst.blocks_ready.is_set():
                act.wait(dst.blocks_ready, f"{what} (waiting for the RAM block list)")
            validator.check(pkt)
            order.check(pkt, ch, self.round, dst.ramblocks)
            c.packets += 1
            n = pkt.normal_pages
            if n or pkt.zero_pages:
                blk = dst.guest.block(pkt.ramblock)
                if blk is None:  # pragma: no cover - the validator checked the name
                    raise StreamError(f"multifd: unknown ram block {pkt.ramblock}")
                view = blk.view
                received = dst.received.get(blk.name)
                arrived = dst.arrived[blk.name]
            if n:
                offs = pkt.offsets[:n]
                nps = pkt.next_packet_size
                # Contiguous runs of the packet's normal pages: (start, end) byte offsets.
                start = offs[0]
                if offs[-1] - start == (n - 1) * ps and offs == tuple(
                        range(start, start + n * ps, ps)):
                    runs = [(start, start + n * ps)]  # one run (most packets)
                else:
                    runs = []
                    prev = start
                    for o in offs[1:]:
                        if o != prev + ps:
                            runs.append((start, prev + ps))
                            start = o
                        prev = o
                    runs.append((start, prev + ps))
                if is_none:
                    # Straight into guest memory: one scatter read (recvmsg) for all the
                    # packet's runs of pages, as QEMU's readv into the pages.
                    transport.recv_into_views(sock, [view[a:b] for a, b in runs], act, what)
                else:
                    transport.recv_into_exact(sock, pview[:nps], act, what)
                    # Decoded straight into the runs of guest memory (zstd: no staging).
                    self.decompressor.decompress_into(pview[:nps], n, view, runs)
                if received is not None:
                    for a, b in runs:
                        received[a // ps : b // ps] = ones[: (b - a) // ps]
                for a, b in runs:
                    arrived[a // ps : b // ps] = ones[: (b - a) // ps]
                c.multifd_bytes += nps
                c.payload_bytes += nps
                c.normal_pages += n
                if dst.progress is not None:
                    dst.progress(n * ps)
            if pkt.zero_pages:
                for o in pkt.offsets[n : n + pkt.zero_pages]:
                    arrived[o // ps] = 1
                    # Like QEMU's receivedmap: a page of fresh RAM never written is zero
                    # already; not even reading it saves a page fault per zero page.
                    if received is not None and not received[o // ps]:
                        continue
                    if view[o : o + ps].tobytes() != zero:
                        view[o : o + ps] = zero
                c.zero_pages += pkt.zero_pages
            if pkt.sync:
                c.sync_packets += 1
                self.in_sync = True
                dst.sync_arrived.release()
                while not self.resume.acquire(timeout=transport.TICK):
                    act.check(f"{what} (waiting for the end of the round on the main channel)")
                self.round += 1


def _holes_as_receivedmap(blk: RAMBlock) -> bytearray | None:
    """A receivedmap for a shared file mapping: 1 for pages holding file data, 0 for holes."""
    if not getattr(blk, "shared_file", False) or blk.path is None:
        return None

    try:
        fd = os.open(blk.path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return file_data_map(fd, blk.used_length, blk.page_size)
    finally:
        os.close(fd)


class Destination:
    """Serve one incoming migration into ``guest``; :meth:`run` once.

    ``guest`` holds the blocks the destination has memory for (e.g. ``pc.ram`` backed by the
    ``--guest-image`` file); blocks the source lists beyond those get anonymous memory.
    ``ramblock`` (if set) must be among the source's blocks. ``fresh_ram``: the blocks of
    ``guest`` are all zero (just created), so zero pages for pages never written are skipped.
    """

    def __init__(
        self,
        guest: GuestMemory,
        params: MigrationParameters,
        *,
        listen_sock: Any = None,
        host: str = "127.0.0.1",
        port: int = 0,
        uuid: str | bytes | None = None,
        timeout: float = transport.DEFAULT_TIMEOUT,
        ramblock: str | None = None,
        max_extra_block_bytes: int = DEFAULT_MAX_EXTRA_BLOCK_BYTES,
        progress: Callable[[int], None] | None = None,
        fresh_ram: bool = False,
    ) -> None:
        params.validate()
        self.guest = guest
        self.params = params
        self.dialect = get_dialect(params.dialect)
        self.method = params.multifd_compression
        self.dialect.method_flag(self.method)
        get_codec(self.method)
        self.channels = params.multifd_channels
        self.uuid = parse_uuid(uuid)
        self.page_size = TARGET_PAGE_SIZE
        self.zero_page = bytes(self.page_size)
        self.ramblock = ramblock
        self.max_extra = max_extra_block_bytes
        self.progress = progress
        self.act = Activity(timeout)
        self.lsock = listen_sock if listen_sock is not None else transport.listen_socket(
            host, port
        )
        self.lsock.settimeout(transport.TICK)
        self.main_sock: Any = None
        self.receivers: list[_Receiver] = []
        self.ramblocks: dict[str, int] = {}
        self.blocks_ready = threading.Event()
        self.finishing = threading.Event()
        self.sync_arrived = threading.Semaphore(0)
        self._acceptor: threading.Thread | None = None
        self._done = threading.Event()
        self.decoder = MainStreamDecoder(self.dialect, page_size=self.page_size)
        # A source with the return-path capability opens it and pings, in every dialect.
        self.decoder.accepted_commands = self.decoder.accepted_commands | RETURN_PATH_COMMANDS
        self.rp_open = False
        self._trailer = bytearray()
        self.order = PacketOrder(self.dialect, self.page_size)
        self.main_counters = SideCounters()
        self.completed_at: float | None = None
        self.stats = MigrationStats(role="destination")
        #: QEMU's receivedmap, one byte per page, for blocks known to start all zero
        #: (``fresh_ram``: the caller just created them; blocks added for the source's extra
        #: RAM blocks): a zero page for a page never written needs no read and no write.
        #: One byte per page of every block the source listed: set when the page arrives
        #: (data or zero, either channel). QEMU's first round sends every page, so a page
        #: never seen at the end means something was lost (the reference is strict here).
        self.arrived: dict[str, bytearray] = {}
        self.received: dict[str, bytearray] = (
            {b.name: bytearray(b.pages) for b in guest.blocks} if fresh_ram else {}
        )
        if not fresh_ram:
            # RAM in a file that already existed: its holes are zero all the same (a sparse
            # guest's 4 GiB of zero pages then cost neither a read nor a page fault).
            for b in guest.blocks:
                known = _holes_as_receivedmap(b)
                if known is not None:
                    self.received[b.name] = known
        #: tls-creds: every channel is a TLS server for the source (its certificate checked,
        #: tls-authz applied); built at run() so a bad directory fails the migration cleanly.
        self.tls = tlsmod.settings_from(params)
        self.tls_ctx: Any = None
        #: TLS: main channel bytes read while the multifd channels were still connecting.
        self._main_prefix = bytearray()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.lsock.getsockname()[:2]
        return host, port

    # ------------------------------------------------------------------ failure
    def _fail(self, exc: BaseException) -> None:
        self.act.fail(exc)

    def _check(self, what: str) -> None:
        self.act.raise_failure()
        self.act.check(what)

    # ------------------------------------------------------------------ channels
    def _accept_all(self) -> None:
        n = self.channels
        chans: dict[int, Any] = {}
        by_magic = self.dialect.channel_by_magic and self.tls is None
        while self.main_sock is None or len(chans) < n:
            main_state = "connected" if self.main_sock is not None else "missing"
            what = (
                f"waiting for the source's channels (main {main_state}, {len(chans)} of {n} "
                "multifd)"
            )
            try:
                if self.tls is not None and self.main_sock is not None:
                    self._wait_accept_watching_main(what)
                conn = transport.accept(self.lsock, self.act, what)
            except PeerTimeout:
                raise PeerTimeout(
                    f"{what}: nothing new for {self.act.idle_timeout:g} s; does the source use "
                    f"multifd-channels={n} and this --dialect ({self.dialect.name})?"
                ) from None
            try:
                if self.tls is not None:
                    what = ("main channel" if self.main_sock is None else
                            f"multifd connection #{len(chans)}")
                    conn = tlsmod.server_handshake(conn, self.tls_ctx, self.tls, self.act, what)
                    if self.main_sock is None:
                        cert = conn.getpeercert() or {}
                        self.stats.tls_peer_dn = tlsmod.distinguished_name(
                            cert.get("subject", ()))
                if by_magic:
                    role = identify_channel(
                        transport.peek_exact(conn, 4, self.act, "new connection")
                    )
                else:
                    role = "main" if self.main_sock is None else "multifd"
                if role == "main":
                    if self.main_sock is not None:
                        raise MigrationError("a second main channel (QEVM) connected")
                    self.main_sock = conn
                    continue
                raw = transport.recv_exact(conn, MULTIFD_INIT_PACKET_SIZE, self.act,
                                           f"multifd channel #{len(chans)} init packet")
                init = InitPacket.decode(raw, expected_uuid=self.uuid, channels=n)
                if init.channel_id in chans:
                    raise duplicate_channel_error(init.channel_id)
                chans[init.channel_id] = conn
            except BaseException as exc:
                if isinstance(exc, TLSError):
                    # A refusal: close (not reset) so the source reads the alert or the
                    # close_notify and can say why.
                    transport.close(conn)
                else:
                    transport.abort(conn)
                for s in chans.values():
                    transport.abort(s)
                raise
        self.receivers = [_Receiver(self, i, chans[i]) for i in range(n)]

    def _wait_accept_watching_main(self, what: str) -> None:
        """TLS: until a connection waits to be accepted, read what the main channel brings.

        A QEMU source checks this destination's certificate (host name) only after its
        handshake and then closes the main channel without opening any multifd channel:
        seeing that close here fails at once instead of at the idle timeout. What the main
        channel carries meanwhile (the stream's start) is kept for the decoder."""
        lsock, main = self.lsock, self.main_sock
        while True:
            full = len(self._main_prefix) >= _MAIN_PREFIX_MAX
            ready = tlsmod.wait_readable([lsock] if full else [lsock, main], transport.TICK)
            if lsock in ready:
                return
            if main in ready:
                try:
                    data = main.recv(_MAIN_RECV)
                except TimeoutError:
                    continue  # part of a TLS record only
                except OSError as exc:
                    data = b""
                    detail = f" ({getattr(exc, 'reason', None) or exc})"
                else:
                    detail = ""
                if not data:
                    raise TLSError(
                        "main channel: the source closed it before opening its multifd "
                        f"channels{detail}: it may have refused this destination's certificate "
                        "(tls-hostname not in it, or signed by a CA it does not trust); see "
                        "the source's error")
                self._main_prefix += data
                self.act.touch()
                continue
            self.act.check(what)

    def _accept_extra(self) -> None:
        """Any connection after the expected ones fails the migration (more channels than
        multifd-channels on the source: their pages would otherwise be lost silently)."""
        while not self._done.is_set():
            try:
                conn, _ = self.lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            transport.abort(conn)
            self._fail(MigrationError(
                f"the source opened more connections than 1 main + {self.channels} multifd "
                f"channels: check multifd-channels on both sides"
            ))
            return

    # ------------------------------------------------------------------ barrier
    def _sync(self) -> None:
        for _ in range(self.channels):
            while not self.sync_arrived.acquire(timeout=transport.TICK):
                for r in self.receivers:
                    if not r.is_alive() and not r.in_sync and r.error is None:
                        raise ChannelClosed(
                            f"multifd channel {r.channel} closed by the source before its "
                            f"SYNC (round {self.stats.dirty_sync_count + 1})"
                        )
                self._check("main channel (waiting for a SYNC packet on every channel)")
        self.act.raise_failure()
        self.stats.dirty_sync_count += 1
        self.order.end_round()
        for r in self.receivers:
            r.in_sync = False
            r.resume.release()

    # ------------------------------------------------------------------ main channel
    def _mem_size(self, ev: MemSize) -> None:
        extra = 0
        for name, length in ev.blocks:
            blk = self.guest.block(name)
            if blk is None:
                extra += length
                if extra > self.max_extra:
                    raise StreamError(
                        f"the source's RAM blocks beyond this guest's need {extra} bytes, more "
                        f"than the {self.max_extra} allowed (is --ramblock right?)"
                    )
                self.guest.add(RAMBlock.anonymous(name, length, page_size=self.page_size))
                self.received[name] = bytearray(length // self.page_size)
            elif blk.used_length != length:
                raise StreamError(
                    f"Length mismatch: {name}: 0x{length:x} in != 0x{blk.used_length:x}: the "
                    f"source's RAM block has {length} bytes, this destination {blk.used_length} "
                    "(--guest-size)"
                )
        names = [b for b, _ in ev.blocks]
        if self.ramblock is not None and self.ramblock not in names:
            raise StreamError(
                f"the source sent no RAM block named '{self.ramblock}' (it sent "
                f"{', '.join(names)}): pass the right --ramblock"
            )
        self.ramblocks.update(dict(ev.blocks))
        for name, length in ev.blocks:
            self.arrived[name] = bytearray(length // self.page_size)
        self.stats.total_ram_bytes = ev.total
        self.blocks_ready.set()

    def _handle(self, ev: Any) -> None:
        t = type(ev)
        ps = self.page_size
        if t is ZeroPage:
            view = self.guest.block(ev.block).view  # type: ignore[union-attr]
            o = ev.offset
            received = self.received.get(ev.block)
            self.arrived[ev.block][o // ps] = 1
            if ev.fill:
                view[o : o + ps] = bytes([ev.fill]) * ps
                if received is not None:
                    received[o // ps] = 1
            elif received is not None and not received[o // ps]:
                pass  # fresh RAM never written: zero already (QEMU's receivedmap)
            elif view[o : o + ps].tobytes() != self.zero_page:
                view[o : o + ps] = self.zero_page
            self.main_counters.zero_pages += 1
        elif t is Page:
            self.guest.block(ev.block).write_page(ev.offset, ev.data)  # type: ignore[union-attr]
            received = self.received.get(ev.block)
            if received is not None:
                received[ev.offset // ps] = 1
            self.arrived[ev.block][ev.offset // ps] = 1
            self.main_counters.normal_pages += 1
        elif t is EndOfSection:
            if self.dialect.flush_after_each_section:
                self._sync()
        elif t is MultifdFlush:
            self._sync()
        elif t is MemSize:
            self._mem_size(ev)
        elif t is Configuration:
            self.stats.machine_type = ev.machine_type
        elif t is DeviceState:
            self.stats.device_state_bytes += len(ev.data)
            if self.rp_open:
                if len(self._trailer) + len(ev.data) > MAX_DEVICE_STATE_BYTES:
                    raise StreamError(
                        f"more than {MAX_DEVICE_STATE_BYTES} bytes of device state after the "
                        "RAM section without the stream's end (VMDESCRIPTION)", field="section")
                self._trailer += ev.data
        elif t is VmCommand:
            self.stats.vm_commands.append(ev.name)
            if ev.command == MIG_CMD_OPEN_RETURN_PATH:
                self.rp_open = True
                self.stats.return_path = True
            elif ev.command == MIG_CMD_PING:
                (value,) = struct.unpack(">I", ev.data)
                if not self.rp_open:
                    raise StreamError(f"MIG_CMD_PING ({value:#x}) received with no return path "
                                      "(MIG_CMD_OPEN_RETURN_PATH first)", field="command")
                transport.send_all(self.main_sock, rp_pong(value), self.act,
                                   "main channel (return path)")
        elif t is RamEnd:
            pass

    def _check_every_page_arrived(self) -> None:
        for name, marks in self.arrived.items():
            i = marks.find(0)
            if i >= 0:
                missing = marks.count(0)
                raise StreamError(
                    f"page {i * self.page_size:#x} of RAM block {name} never arrived ({missing} "
                    f"of {len(marks)} pages missing; QEMU's first round sends every page): a "
                    "packet or record was lost or moved (the reference is strict here; QEMU "
                    "does not check it)", field="offset")

    def _send_shut(self, *, failed: bool) -> None:
        """MIG_RP_MSG_SHUT on the return path (best effort: the source may be gone)."""
        sock = self.main_sock
        if sock is None:
            return
        try:
            sock.settimeout(min(2.0, self.act.idle_timeout))
            sock.sendall(rp_shut(failed))
            self.stats.return_path_shut = 1 if failed else 0
        except OSError:
            pass

    # ------------------------------------------------------------------ run
    def run(self) -> MigrationStats:
        """Serve one migration; returns stats with ``status`` completed or failed."""
        st = self.stats
        p = self.params
        st.record_parameters(p)
        cpu0 = time.thread_time()
        t_start = time.monotonic()
        t_first: float | None = None
        try:
            if self.tls is not None:
                self.tls_ctx = self.tls.server_context()
            self._accept_all()
            t_first = time.monotonic()
            self._acceptor = threading.Thread(
                target=self._accept_extra, name="qatmig-accept", daemon=True
            )
            self._acceptor.start()
            for r in self.receivers:
                r.start()
            dec = self.decoder
            sock = self.main_sock
            while True:
                if self._main_prefix:
                    data, self._main_prefix = bytes(self._main_prefix), bytearray()
                else:
                    data = transport.recv_some(sock, _MAIN_RECV, self.act, "main channel")
                self.act.raise_failure()
                if not data:
                    dec.close()
                    break
                self.main_counters.main_bytes += len(data)
                for ev in dec.feed(data):
                    self._handle(ev)
                if self._trailer and vmdescription_ends(self._trailer):
                    # A QEMU source with a return path sent everything (EOF + VMDESCRIPTION)
                    # and waits for MIG_RP_MSG_SHUT instead of closing.
                    break
            self.finishing.set()
            for r in self.receivers:
                while r.is_alive():
                    r.join(timeout=transport.TICK)
                    if r.is_alive():
                        self._check(f"multifd channel {r.channel} (finishing)")
                if r.error is not None:
                    raise r.error
            self.act.raise_failure()
            self.order.finish()
            self._check_every_page_arrived()
            self.completed_at = time.monotonic()
            st.status = "completed"
            self._done.set()
            if self.rp_open:
                self._send_shut(failed=False)
            tlsmod.bye(sock)
            transport.close(sock)
        except Exception as exc:  # typed errors expected; anything else is a bug, still no hang
            st.record_failure(exc, self.act.error)
            self.act.cancel.set()
            if self.rp_open:
                self._send_shut(failed=True)
            transport.abort(self.main_sock)
            for r in self.receivers:
                transport.abort(r.sock)
        finally:
            self._done.set()
            self.act.cancel.set()
            for r in self.receivers:
                if r.is_alive():
                    r.join(timeout=5)
                if r.decompressor is not None:
                    r.decompressor.close()
                transport.close(r.sock)
            transport.close(self.main_sock)
            # shutdown() wakes the acceptor thread blocked in accept() at once (Linux: EINVAL);
            # close() alone would leave it there until its tick ends, up to 0.2 s per run.
            try:
                self.lsock.shutdown(transport.socket.SHUT_RDWR)
            except OSError:
                pass
            transport.close(self.lsock)
            if self._acceptor is not None:
                self._acceptor.join(timeout=2)
        end = self.completed_at or time.monotonic()
        begin = t_first if t_first is not None else t_start
        st.total_time_ms = (end - begin) * 1000
        st.wall_seconds_destination = end - begin
        side = SideCounters()
        side.add(self.main_counters)
        side.cpu_seconds += time.thread_time() - cpu0
        for r in self.receivers:
            side.add(r.counters)
        st.destination = side
        st.peak_rss_bytes = peak_rss_bytes()
        st.guest_mapped_bytes = self.guest.total_bytes
        return st
