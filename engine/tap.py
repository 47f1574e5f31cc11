"""The validating tap: a TCP proxy that forwards a real migration and judges every byte.

Two layers, as everywhere in this engine:

* the judge (:mod:`qatmig_engine.judge`, re-exported here as :class:`TapChecker`,
  :class:`TapReport`, :func:`check_capture`, ...) is pure: it is fed the bytes of each
  connection (in accept order) and checks them against the negotiated dialect — see
  docs/wire-format.md, "The wire judge";
* :class:`TapProxy` is the edge: sockets and threads, one upstream connection per accepted
  one, opened sequentially in accept order (a 7.2 destination takes the first connection as
  the main channel). Every socket wait has a timeout; an idle migration ends the tap with an
  error instead of hanging.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qatmig_engine.constants import MULTIFD_MAGIC
from qatmig_engine.errors import MigrationError, PeerTimeout
from qatmig_engine.judge import (  # noqa: F401 - re-exported: the tap's historical API
    MAX_PENDING,
    NOTE_EXAMPLES,
    ChannelStats,
    Deviation,
    Expectations,
    MainStreamChecker,
    MultifdChannelChecker,
    Note,
    TapChecker,
    TapReport,
    check_capture,
    format_report,
)
from qatmig_engine.transport import abort

# ============================================================================ proxy edge
#: How a connection's stream starts: a multifd channel's init packet or QEMU's main stream.
_MULTIFD_START = struct.pack(">I", MULTIFD_MAGIC)
CUT_MODES = ("reset", "eof")
CUT_ROLES = ("multifd", "main", "any")


@dataclass(frozen=True)
class ChannelCut:
    """Kill one connection in the middle of a migration (the suite's own fault injection).

    The first connection of ``role`` (``multifd``: its stream starts with the multifd magic;
    ``main``: it does not; ``any``) that has carried ``after_bytes`` source->destination bytes
    is cut there: exactly ``after_bytes`` reach the destination on it, nothing more. ``mode``
    ``reset`` resets both sides (RST, as a dead link or a killed peer); ``eof`` gives the
    destination a clean end of stream mid-packet and resets the source's side.
    """

    after_bytes: int
    role: str = "multifd"
    mode: str = "reset"

    def __post_init__(self) -> None:
        if not isinstance(self.after_bytes, int) or self.after_bytes < 1:
            raise ValueError(f"ChannelCut: after_bytes must be >= 1, not {self.after_bytes!r}")
        if self.role not in CUT_ROLES:
            raise ValueError(f"ChannelCut: role must be one of {', '.join(CUT_ROLES)}, not "
                             f"{self.role!r}")
        if self.mode not in CUT_MODES:
            raise ValueError(f"ChannelCut: mode must be one of {', '.join(CUT_MODES)}, not "
                             f"{self.mode!r}")


class TapProxy:
    """Forward ``listen`` -> ``forward`` connection by connection, feeding a :class:`TapChecker`.

    Upstream connections are opened sequentially in accept order. The tap ends when the
    main connection and every other accepted connection have closed (then ``linger`` s
    without a new connection), or with an error after ``timeout`` s without any byte moving.
    ``record_dir`` keeps each connection's client->server bytes as ``conn-<i>.bin``.
    ``cut`` (a :class:`ChannelCut`) kills one connection mid-run; :attr:`cut_done` then says
    which one and where (None while nothing was cut).
    """

    def __init__(
        self,
        listen: tuple[str, int],
        forward: tuple[str, int],
        checker: TapChecker | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        linger: float = 0.3,
        record_dir: str | os.PathLike[str] | None = None,
        on_connection: Callable[[int], None] | None = None,
        cut: ChannelCut | None = None,
    ) -> None:
        self.listen_addr = listen
        self.forward_addr = forward
        self.checker = checker
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.linger = linger
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.on_connection = on_connection
        self.cut = cut
        #: ``{"connection", "role", "after_bytes", "mode"}`` once :attr:`cut` was applied
        self.cut_done: dict[str, Any] | None = None
        self._starts: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._open = 0
        self._accepted = 0
        self._last_activity = time.monotonic()
        self._stop = threading.Event()
        self._failure: str | None = None
        self._sock: socket.socket | None = None
        self.bytes_down: list[int] = []
        #: destination -> source bytes per connection (forwarded, and judged: see run())
        self.bytes_up: list[int] = []
        self._thread: threading.Thread | None = None
        self.report: TapReport | None = None

    def bind(self) -> int:
        """Bind and listen; returns the port (``listen`` port 0 picks a free one)."""
        if self._sock is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(self.listen_addr)
            except OSError as exc:
                s.close()
                raise MigrationError(f"tap: cannot listen on {self.listen_addr[0]}:"
                                     f"{self.listen_addr[1]}: {exc}") from exc
            s.listen(64)
            s.settimeout(0.1)
            self._sock = s
        return int(self._sock.getsockname()[1])

    @property
    def port(self) -> int:
        return self.bind()

    def start(self) -> int:
        """Run in a background thread; returns the listening port. Then :meth:`wait`."""
        port = self.bind()
        self._thread = threading.Thread(target=self._run_safe, name="tap-accept", daemon=True)
        self._thread.start()
        return port

    def wait(self, timeout: float | None = None) -> TapReport:
        """Join the background run (MigrationError if it does not end in ``timeout`` s)."""
        if self._thread is None:
            raise MigrationError("tap: not started")
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.close()
            self._thread.join(5)
            raise PeerTimeout(f"tap: still running after {timeout} s; closed")
        if self.report is None:
            raise MigrationError(f"tap: failed: {self._failure}")
        return self.report

    def _run_safe(self) -> None:
        try:
            self.run()
        except Exception as exc:  # reported by wait(); never lost in a thread
            self._failure = f"{type(exc).__name__}: {exc}"
            self.close()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass
        if self._sock is not None:
            self._sock.close()

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    def run(self) -> TapReport:
        """Accept, forward and check until the migration's connections are all closed."""
        self.bind()
        assert self._sock is not None
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
        self._touch()
        closed_since: float | None = None
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                with self._lock:
                    open_now = self._open
                if self._accepted and open_now == 0:
                    closed_since = closed_since or now
                    if now - closed_since >= self.linger:
                        break
                else:
                    closed_since = None
                if now - self._last_activity > self.timeout:
                    what = ("no connection arrived" if not self._accepted
                            else f"no byte moved on {open_now} open connection(s)")
                    self._failure = f"tap: {what} for {self.timeout:g} s"
                    break
                try:
                    client, _addr = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                self._accept(client)
        finally:
            self.close()
            for t in self._threads:
                t.join(self.timeout + 5)
        if self.checker is not None:
            report = self.checker.finish()
        else:
            # forward-and-count mode: only bytes per connection (connection 0 is main in 7.2)
            report = TapChecker().finish()
            report.channels = [
                ChannelStats(connection=i, role="main" if i == 0 else "multifd", wire_bytes=n)
                for i, n in enumerate(self.bytes_down)
            ]
        if self.checker is not None:
            # The other direction: a destination talks back only on the main channel, and only
            # once the source opened a return path (MIG_CMD_OPEN_RETURN_PATH); never on a
            # multifd channel, in any dialect.
            main = {c.connection for c in report.channels if c.role == "main"}
            rp = "MIG_CMD_OPEN_RETURN_PATH" in getattr(report, "commands", ())
            for idx, n in enumerate(self.bytes_up):
                if n and not (rp and idx in main):
                    why = ("a multifd channel carries nothing from the destination"
                           if idx not in main else
                           "the source opened no return path (MIG_CMD_OPEN_RETURN_PATH)")
                    report.errors.append(Deviation(
                        f"the destination sent {n} byte(s) back to the source; {why}", idx,
                        field="direction"))
        if self._failure:
            report.errors.append(Deviation(self._failure, -1, field="timeout"))
        self.report = report
        return report

    def _accept(self, client: socket.socket) -> None:
        idx = self._accepted
        self._accepted += 1
        self._touch()
        try:
            upstream = socket.create_connection(self.forward_addr, timeout=self.connect_timeout)
        except OSError as exc:
            client.close()
            self._failure = (f"tap: cannot connect to {self.forward_addr[0]}:"
                             f"{self.forward_addr[1]} for connection {idx}: {exc}")
            self._stop.set()
            return
        for sk in (client, upstream):
            sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # sends may block this long (a slow destination); reads poll with select()
            sk.settimeout(self.timeout)
        rec = open(self.record_dir / f"conn-{idx}.bin", "wb") if self.record_dir else None
        with self._lock:
            self._socks += [client, upstream]
            self._open += 1
            self.bytes_down.append(0)
            self.bytes_up.append(0)
        if self.on_connection:
            self.on_connection(idx)
        state = {"down_done": False, "up_done": False}
        down = threading.Thread(target=self._pump_down, args=(idx, client, upstream, rec, state),
                                name=f"tap-{idx}-down", daemon=True)
        up = threading.Thread(target=self._pump_up, args=(idx, upstream, client, state),
                              name=f"tap-{idx}-up", daemon=True)
        self._threads += [down, up]
        down.start()
        up.start()

    def _finish_conn(self, state: dict[str, bool], client: socket.socket,
                     upstream: socket.socket) -> None:
        with self._lock:
            if state["down_done"] and state["up_done"] and not state.get("counted"):
                state["counted"] = True
                self._open -= 1
                for s in (client, upstream):
                    try:
                        s.close()
                    except OSError:
                        pass

    def _readable(self, sk: socket.socket) -> bool:
        try:
            r, _w, _x = select.select([sk], [], [], 0.25)
        except (OSError, ValueError):
            return True  # closed: let recv() report it
        return bool(r)

    def _idle(self) -> bool:
        return time.monotonic() - self._last_activity > self.timeout

    def _check(self, idx: int, data: bytes) -> None:
        assert self.checker is not None
        with self._lock:
            try:
                self.checker.feed(idx, data)
            except Exception as exc:  # a checker bug must not stop the forwarding
                self.checker._error(f"tap checker failed: {type(exc).__name__}: {exc}", idx,
                                    fld="internal")
                conn = self.checker.conns.get(idx)
                if conn is not None:
                    conn.failed = True

    def _pump_down(self, idx: int, client: socket.socket, upstream: socket.socket,
                   rec: Any, state: dict[str, bool]) -> None:
        """source -> destination: forward, record, check."""
        try:
            while not self._stop.is_set():
                if not self._readable(client):
                    if self._idle():
                        break
                    continue
                try:
                    data = client.recv(1 << 20)
                except OSError:
                    break
                if not data:
                    break
                self._touch()
                cut_at = self._cut_point(idx, data) if self.cut is not None else None
                if cut_at is not None:
                    data = data[:cut_at]
                try:
                    upstream.sendall(data)
                except OSError as exc:
                    self._failure = self._failure or (
                        f"tap: connection {idx}: sending to the destination failed: {exc}")
                    break
                self._touch()
                self.bytes_down[idx] += len(data)
                if rec is not None:
                    rec.write(data)
                if self.checker is not None and data:
                    self._check(idx, data)
                if cut_at is not None:
                    self._apply_cut(client, upstream)
                    break
        finally:
            if rec is not None:
                rec.close()
            if self.checker is not None:
                if idx not in self.checker.conns and idx not in self.checker._pre:
                    self._check(idx, b"")
                with self._lock:
                    self.checker.end(idx)
            try:
                upstream.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            state["down_done"] = True
            self._finish_conn(state, client, upstream)

    def _cut_point(self, idx: int, data: bytes) -> int | None:
        """How many bytes of ``data`` go through before connection ``idx`` is cut (None: no
        cut here). The connection's role is known from its first four bytes."""
        cut = self.cut
        assert cut is not None
        if self.cut_done is not None:
            return None
        start = self._starts.get(idx, b"")
        if len(start) < 4:
            start = self._starts[idx] = start + data[: 4 - len(start)]
        if cut.role != "any":
            if len(start) < 4:
                return None
            if (start == _MULTIFD_START) != (cut.role == "multifd"):
                return None
        sent = self.bytes_down[idx]
        if sent + len(data) < cut.after_bytes:
            return None
        with self._lock:
            if self.cut_done is not None:
                return None
            self.cut_done = {"connection": idx, "role": cut.role, "mode": cut.mode,
                             "after_bytes": cut.after_bytes}
        return max(0, cut.after_bytes - sent)

    def _apply_cut(self, client: socket.socket, upstream: socket.socket) -> None:
        assert self.cut is not None
        if self.cut.mode == "eof":
            try:  # the destination sees a clean end of stream in the middle of the data
                upstream.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        else:
            abort(upstream)
        abort(client)

    def _pump_up(self, idx: int, upstream: socket.socket, client: socket.socket,
                 state: dict[str, bool]) -> None:
        """destination -> source (a 7.2 destination never sends; forward anyway)."""
        down_done_at: float | None = None
        try:
            while not self._stop.is_set():
                if not self._readable(upstream):
                    if state["down_done"]:
                        # the source is done: give the destination a moment to close its side
                        down_done_at = down_done_at or time.monotonic()
                        if time.monotonic() - down_done_at > max(self.linger, 2.0):
                            break
                    if self._idle():
                        break
                    continue
                try:
                    data = upstream.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                self._touch()
                self.bytes_up[idx] += len(data)
                try:
                    client.sendall(data)
                except OSError:
                    break
        finally:
            try:
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            state["up_done"] = True
            self._finish_conn(state, client, upstream)
