"""A small QMP client (QEMU Machine Protocol), standard library only.

Every read has a deadline: a wedged QEMU (QMP stops answering, as 7.2 does after a
multifd-compression mismatch) raises :class:`~qatmig_engine.errors.QemuTimeout` instead of
hanging the caller. Events that arrive while waiting for a reply are kept in :attr:`events`.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from qatmig_engine.errors import QemuError, QemuTimeout

#: Longest QMP line accepted (query-qmp-schema is ~200 KB; bound the buffer anyway).
MAX_LINE = 8 << 20


class QMPError(QemuError):
    """QEMU answered a command with ``{"error": {"class": ..., "desc": ...}}``."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QMP {command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QMPClient:
    """One QMP connection over a unix socket.

    >>> qmp = QMPClient.connect("/tmp/x.qmp", timeout=10)   # greeting + qmp_capabilities
    >>> qmp.execute("query-status")["status"]
    'prelaunch'
    """

    def __init__(self, sock: socket.socket, *, timeout: float = 10.0) -> None:
        self._sock = sock
        self._buf = bytearray()
        self.timeout = timeout
        self.greeting: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ connect
    @classmethod
    def connect(
        cls,
        path: str,
        *,
        timeout: float = 10.0,
        negotiate: bool = True,
        alive: Any = None,
    ) -> QMPClient:
        """Connect to ``path`` (retrying until it exists), read the greeting, negotiate.

        ``alive`` is an optional callable returning False once the QEMU process has exited,
        so a QEMU that dies at start fails fast instead of waiting for the whole timeout.
        """
        deadline = time.monotonic() + timeout
        last: OSError | None = None
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                sock.connect(path)
                break
            except OSError as exc:
                sock.close()
                last = exc
            if alive is not None and not alive():
                raise QemuError(f"QEMU exited before its QMP socket {path} accepted ({last})")
            if time.monotonic() >= deadline:
                raise QemuTimeout(f"QMP socket {path} did not accept within {timeout:g} s "
                                  f"({last})")
            time.sleep(0.02)
        client = cls(sock, timeout=timeout)
        try:
            greeting = client._read_message(deadline)
            if "QMP" not in greeting:
                raise QemuError(f"QMP greeting expected, got {greeting!r:.200}")
            client.greeting = greeting["QMP"]
            if negotiate:
                client.execute("qmp_capabilities", timeout=max(0.1, deadline - time.monotonic()))
        except BaseException:
            client.close()
            raise
        return client

    # ------------------------------------------------------------------ I/O
    def _read_message(self, deadline: float) -> dict[str, Any]:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line)
                except ValueError as exc:
                    raise QemuError(f"QMP sent a line that is not JSON: {line[:200]!r}") from exc
                if not isinstance(msg, dict):
                    raise QemuError(f"QMP sent a non-object message: {line[:200]!r}")
                return msg
            if len(self._buf) > MAX_LINE:
                raise QemuError(f"QMP line longer than {MAX_LINE} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QemuTimeout("QMP did not answer in time (QEMU wedged?)")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise QemuTimeout("QMP did not answer in time (QEMU wedged?)") from None
            except OSError as exc:
                raise QemuError(f"QMP connection failed: {exc}") from exc
            if not chunk:
                raise QemuError("QMP connection closed by QEMU")
            self._buf += chunk

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *,
        timeout: float | None = None,
    ) -> Any:
        """Run ``command`` and return its ``return`` value; QMPError on an error reply."""
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        data = json.dumps(msg).encode() + b"\n"
        try:
            self._sock.settimeout(max(0.05, deadline - time.monotonic()))
            self._sock.sendall(data)
        except TimeoutError:
            raise QemuTimeout(f"QMP {command}: could not send (QEMU wedged?)") from None
        except OSError as exc:
            raise QemuError(f"QMP {command}: send failed: {exc}") from exc
        while True:
            try:
                reply = self._read_message(deadline)
            except QemuTimeout as exc:
                raise QemuTimeout(f"QMP {command}: {exc}") from None
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                err = reply["error"] if isinstance(reply["error"], dict) else {}
                raise QMPError(command, str(err.get("class", "?")), str(err.get("desc", reply)))
            if "return" in reply:
                return reply["return"]
            raise QemuError(f"QMP {command}: unexpected reply {reply!r:.200}")

    def hmp(self, command_line: str, *, timeout: float | None = None) -> str:
        """Run a human monitor command (e.g. ``info ramblock``) and return its text."""
        out = self.execute(
            "human-monitor-command", {"command-line": command_line}, timeout=timeout
        )
        return str(out)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
