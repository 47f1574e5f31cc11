"""Socket helpers with deadlines: nothing here waits without a bound.

Every blocking call polls in short ticks so it can notice cancellation (another channel
failed) and an *idle* timeout: the peer is "silent" when no byte moved on **any** channel of
the migration for ``idle_timeout`` seconds (:class:`Activity`), since one channel may
legitimately stay quiet while another carries the bulk of a round.
"""

from __future__ import annotations

import math
import socket
import ssl
import struct
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .errors import ChannelClosed, MigrationError, ParameterError, PeerTimeout

T = TypeVar("T")

#: How often a blocked call wakes to check for cancellation and the idle deadline (s).
TICK = 0.2

#: Default idle timeout (s): a peer silent this long on every channel fails the migration.
DEFAULT_TIMEOUT = 30.0


class Cancelled(MigrationError):
    """The migration was cancelled because another part of it failed."""


def check_timeout(value: float) -> float:
    """``value`` as a network timeout in seconds: finite and above 0 (ParameterError else).

    nan and inf would wait forever, 0 or less would fail before a peer can answer.
    """
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"timeout must be a number of seconds, not {value!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise ParameterError(
            f"timeout must be a finite number of seconds above 0, not {value!r} "
            "(it bounds every network wait)"
        )
    return t


class Activity:
    """Last time any byte moved on any channel of one migration (shared by all threads)."""

    def __init__(self, idle_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.idle_timeout = check_timeout(idle_timeout)
        self.cancel = threading.Event()
        self._last = time.monotonic()
        #: The migration's failure: the first root cause any thread reported.
        self.error: BaseException | None = None
        self._err_lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` as the failure and cancel every thread of this migration.

        The first root cause wins; a Cancelled is only ever a consequence of another error,
        so a real error reported later replaces it.
        """
        with self._err_lock:
            if self.error is None or (
                isinstance(self.error, Cancelled) and not isinstance(exc, Cancelled)
            ):
                self.error = exc
        self.cancel.set()

    def raise_failure(self) -> None:
        """Raise the recorded failure, if any."""
        if self.error is not None:
            raise self.error

    def touch(self) -> None:
        self._last = time.monotonic()

    def idle_for(self) -> float:
        return time.monotonic() - self._last

    def check(self, what: str) -> None:
        """Raise if cancelled or idle for longer than the timeout."""
        if self.cancel.is_set():
            raise Cancelled(f"{what}: migration cancelled")
        if self.idle_for() > self.idle_timeout:
            raise PeerTimeout(
                f"{what}: peer silent for {self.idle_timeout:g} s (no data on any channel); "
                "raise --timeout if the link is really that slow"
            )

    def wait(self, event: threading.Event, what: str) -> None:
        """Wait for ``event`` under the same cancellation/idle rules."""
        while not event.wait(TICK):
            self.check(what)


def prepare(sock: socket.socket) -> socket.socket:
    """Configure a migration socket: ticking timeout, no Nagle, large buffers."""
    sock.settimeout(TICK)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    return sock


def _closed(what: str, exc: BaseException | None = None) -> ChannelClosed:
    detail = f" ({exc})" if exc is not None else ""
    return ChannelClosed(f"{what}: connection closed by peer{detail}")


def _socket_call(act: Activity, what: str, call: Callable[..., T], *args: Any) -> T:
    """One socket call under the migration's rules.

    The socket's short timeout is a tick: on each, the idle timeout and cancellation are
    checked and the call is retried; EINTR retries; any other OSError ends the channel
    (``Cancelled`` while the migration is being cancelled, else ``ChannelClosed``).
    """
    while True:
        try:
            return call(*args)
        except TimeoutError:
            act.check(what)
        except InterruptedError:
            pass
        except OSError as exc:
            if act.cancel.is_set():
                raise Cancelled(f"{what}: migration cancelled") from None
            raise _closed(what, exc) from None


#: Buffers per sendmsg/recvmsg call (Linux's UIO_MAXIOV is 1024).
_IOV_MAX = 512


def recv_into_exact(
    sock: socket.socket, view: memoryview, act: Activity, what: str, *, eof_ok: bool = False
) -> bool:
    """Fill ``view`` completely. Returns False on a clean EOF before the first byte if
    ``eof_ok``; raises ChannelClosed on EOF elsewhere, PeerTimeout/Cancelled as per ``act``."""
    got = 0
    n = len(view)
    while got < n:
        r = _socket_call(act, what, sock.recv_into, view[got:], n - got)
        if r == 0:
            if got == 0 and eof_ok:
                return False
            raise ChannelClosed(
                f"{what}: connection closed by peer after {got} of {n} bytes"
            )
        got += r
        act.touch()
    return True


def recv_into_views(
    sock: socket.socket, views: Sequence[memoryview], act: Activity, what: str
) -> None:
    """Fill every view in order: scatter reads (``recvmsg_into``, one system call for many
    buffers), continued after partial reads; ChannelClosed on EOF."""
    bufs = [v for v in views if len(v)]
    if isinstance(sock, ssl.SSLSocket):
        # TLS has no scatter read: one view after another (records are decrypted anyway).
        for v in bufs:
            recv_into_exact(sock, v, act, what)
        return
    total = sum(len(v) for v in bufs)
    got = 0
    i = 0
    while i < len(bufs):
        r = _socket_call(act, what, sock.recvmsg_into, bufs[i : i + _IOV_MAX])[0]
        if r == 0:
            raise ChannelClosed(
                f"{what}: connection closed by peer after {got} of {total} bytes"
            )
        got += r
        act.touch()
        while r:
            n = len(bufs[i])
            if r >= n:
                r -= n
                i += 1
            else:
                bufs[i] = bufs[i][r:]
                r = 0


def recv_exact(sock: socket.socket, n: int, act: Activity, what: str) -> bytes:
    buf = bytearray(n)
    recv_into_exact(sock, memoryview(buf), act, what)
    return bytes(buf)


def recv_some(sock: socket.socket, bufsize: int, act: Activity, what: str) -> bytes:
    """Up to ``bufsize`` bytes; b"" on clean EOF."""
    data = _socket_call(act, what, sock.recv, bufsize)
    if data:
        act.touch()
    return data


def peek_exact(sock: socket.socket, n: int, act: Activity, what: str) -> bytes:
    """The first ``n`` bytes without consuming them (MSG_PEEK), as QEMU 8.0+ does (plain TCP
    only: a TLS channel cannot be peeked)."""
    while True:
        data = _socket_call(act, what, sock.recv, n, socket.MSG_PEEK)
        if not data:
            raise ChannelClosed(f"{what}: connection closed by peer before its first bytes")
        if len(data) >= n:
            return data
        act.check(what)
        time.sleep(0.005)


def send_all(sock: socket.socket, data: bytes | memoryview, act: Activity, what: str) -> int:
    return sendmsg_all(sock, [data], act, what)


def sendmsg_all(
    sock: socket.socket, buffers: Sequence[bytes | memoryview], act: Activity, what: str
) -> int:
    """Send every buffer (one ``sendmsg`` gather write, continued after partial sends)."""
    bufs = [memoryview(b).cast("B") if not isinstance(b, bytes) else b for b in buffers]
    bufs = [b for b in bufs if len(b)]
    total = sum(len(b) for b in bufs)
    if isinstance(sock, ssl.SSLSocket):
        # TLS has no gather write: one buffer (SSL_write encrypts a copy anyway); a timed-out
        # SSL_write is retried with the same bytes, as OpenSSL requires.
        data = memoryview(bufs[0] if len(bufs) == 1 else b"".join(bufs))
        sent = 0
        while sent < total:
            sent += _socket_call(act, what, sock.send, data[sent:])
            act.touch()
        return total
    i = 0
    while i < len(bufs):
        sent = _socket_call(act, what, sock.sendmsg, bufs[i : i + _IOV_MAX])
        act.touch()
        while sent:
            n = len(bufs[i])
            if sent >= n:
                sent -= n
                i += 1
            else:
                bufs[i] = memoryview(bufs[i])[sent:]
                sent = 0
    return total


def connect(
    host: str, port: int, act: Activity, what: str, *, wait: float = 0.0
) -> socket.socket:
    """TCP connect with the idle timeout as the connect timeout. ``wait`` > 0: a refused
    connection (nobody listening yet) is retried for up to that many seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=act.idle_timeout)
            break
        except OSError as exc:
            refused = isinstance(exc, ConnectionRefusedError)
            if refused and time.monotonic() < deadline and not act.cancel.is_set():
                time.sleep(0.05)
                continue
            hint = ""
            if refused:
                hint = " " + (f"still refused after --connect-wait {wait:g} s" if wait > 0
                              else "use --connect-wait S to retry while it starts")
            raise MigrationError(
                f"{what}: cannot connect to {host}:{port}: {exc.strerror or exc} (is `qatmig "
                f"listen` running there?{hint})"
            ) from None
    return prepare(sock)


def listen_socket(host: str, port: int, backlog: int = 256) -> socket.socket:
    """A listening TCP socket (port 0 = any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MigrationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(backlog)
    sock.settimeout(TICK)
    return sock


def accept(lsock: socket.socket, act: Activity, what: str) -> socket.socket:
    while True:
        try:
            conn, _ = lsock.accept()
        except TimeoutError:
            act.check(what)
            continue
        except OSError as exc:
            if act.cancel.is_set():
                raise Cancelled(f"{what}: migration cancelled") from None
            raise MigrationError(f"{what}: accept failed: {exc}") from None
        act.touch()
        return prepare(conn)


def abort(sock: socket.socket | None) -> None:
    """Close with RST (SO_LINGER 0): tells the peer this end failed, not finished."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def close(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.close()
    except OSError:
        pass


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port)."""
    from .errors import ParameterError

    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ParameterError(f"expected HOST:PORT, got '{text}' (example: 127.0.0.1:4444)")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class ChannelThread(threading.Thread):
    """Worker thread of one multifd channel (source sender or destination receiver).

    Runs ``_run``; a failure is kept in ``error`` and handed to ``on_error`` (which cancels the
    migration); the thread's CPU time is added to ``counters.cpu_seconds`` for the CPU % stats.
    """

    counters: Any

    def __init__(self, name: str, on_error: Callable[[BaseException], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._on_error = on_error
        self.error: BaseException | None = None

    def run(self) -> None:
        t0 = time.thread_time()
        try:
            self._run()
        except BaseException as exc:
            # The failed frames' locals hold views of guest RAM (a packet's pages): drop them,
            # or the RAM's mapping (and its file) stays open as long as the error is kept.
            traceback.clear_frames(exc.__traceback__)
            self.error = exc
            self._on_error(exc)
        finally:
            self.counters.cpu_seconds += time.thread_time() - t0

    def _run(self) -> None:  # pragma: no cover - subclasses implement it
        raise NotImplementedError
