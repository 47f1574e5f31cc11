"""Resource snapshots: threads, child processes and open file descriptors of this process.

``multifd_pair`` takes one before the first pair and compares after every pair is closed; any
thread, child or descriptor that appeared and is still there (after a short grace period for
threads that are finishing) is a leak and fails the test.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass


def _child_pids() -> set[int]:
    me = os.getpid()
    children: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: fields resume after the last ')'.
        rest = stat[stat.rfind(b")") + 2:].split()
        if len(rest) > 1 and int(rest[1]) == me:
            children.add(int(name))
    return children


def _fds() -> dict[int, str]:
    out = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        fd = int(name)
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor listdir itself used, already closed
    return out


def _proc_desc(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        state = stat[stat.rfind(b")") + 2:].split()[0].decode()
    except OSError:
        return f"pid {pid}"
    zombie = " (zombie: never waited for)" if state == "Z" else ""
    return f"pid {pid} {cmd[:120]!r}{zombie}"


@dataclass(frozen=True)
class Snapshot:
    threads: frozenset[threading.Thread]
    children: frozenset[int]
    fds: dict[int, str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(frozenset(threading.enumerate()), frozenset(_child_pids()), _fds())

    def leaks_since(self, before: Snapshot) -> list[str]:
        out = []
        for t in self.threads - before.threads:
            if t.is_alive():
                out.append(f"thread {t.name!r} (daemon={t.daemon}) still running")
        for pid in sorted(self.children - before.children):
            out.append(f"child process {_proc_desc(pid)}")
        for fd, target in sorted(self.fds.items()):
            if before.fds.get(fd) != target:
                out.append(f"file descriptor {fd} -> {target}")
        return out


def leaks_after(before: Snapshot, grace: float = 1.0) -> list[str]:
    """Leaks relative to ``before``, re-checking for up to ``grace`` seconds (threads and
    processes that are already exiting get that long to go)."""
    deadline = time.monotonic() + grace
    while True:
        leaks = Snapshot.take().leaks_since(before)
        if not leaks or time.monotonic() >= deadline:
            return leaks
        time.sleep(0.05)
