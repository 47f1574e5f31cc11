"""QEMU 10.0 beside the system's QEMU 7.2: fetch Debian's bookworm-backports build once, unpacked.

Usage (tests, benchmarks, tools)::

    from qatmig_engine.qemu.fetch import QemuUnavailable, ensure_qemu10, find_qemu10

    q = ensure_qemu10()            # fetch + unpack on first use; QemuUnavailable(reason) if not
    q = find_qemu10()              # the cached install or None (never fetches)
    q.wrapper                      # a script running QEMU 10.0 with its modules and firmware:
                                   # pass it wherever a qemu-system-x86_64 path goes
                                   # (QemuProcess(binary=...), the adapter's ``qemu:PATH``)
    q.command("-machine", "pc")    # [binary, -L <qemu data>, -L <seabios>, -machine, pc]
    q.env()                        # os.environ + QEMU_MODULE_DIR
    q.version                      # "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-...)"

    python -m qatmig_engine.qemu.fetch [--cache DIR] [--json]   # the same from a shell / make

How (see ../shared/spec/qemu-10.0-observed.md): ``apt-get download`` of the backports packages
and ``dpkg -x`` of each into one root; it never installs anything. apt runs with a private
sources list, package lists and cache inside the cache folder (``-o Dir::...``), so the
machine's apt sources and lists are never modified and nothing needs restoring; the source URI
and keyring are taken from the machine's own ``debian.sources``. Needs ``apt-get`` and ``dpkg``
(any user that can write the cache folder) and the Debian mirror reachable.

The cache folder is ``$QATMIG_QEMU10_CACHE``, else ``$XDG_CACHE_HOME/qatmig/qemu-10.0``, else
``~/.cache/qatmig/qemu-10.0``; the unpacked root is ``<cache>/root`` (~120 MB). Concurrent
callers (xdist workers, several checkouts) serialise on a lock file and fetch once.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The Debian suite and packages that make a runnable QEMU 10.0 (seabios >= 1.16.3 for 10.0).
SUITE = "bookworm-backports"
PACKAGES = (
    "qemu-system-x86", "qemu-system-common", "qemu-system-data", "qemu-system-gui",
    "qemu-system-modules-opengl", "qemu-system-modules-spice", "qemu-block-extra", "qemu-utils",
    "seabios",
)
#: The major.minor this module fetches (a newer backport would be a different peer).
WANT_VERSION = "10.0"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SYSTEM_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
HOW_TO_ENABLE = (
    "run `python -m qatmig_engine.qemu.fetch` (or `make system-deps`) on a Debian 12 machine "
    "with apt-get, dpkg and the Debian mirror reachable, or point $QATMIG_QEMU10_CACHE at a "
    "folder holding a fetched root/"
)


class QemuUnavailable(RuntimeError):
    """QEMU 10.0 cannot be had here; ``str()`` says why and how to enable it (skip reasons)."""


@dataclass(frozen=True)
class Qemu10:
    """An unpacked QEMU 10.0 root and how to run it."""

    root: Path
    version: str

    @property
    def binary(self) -> Path:
        return self.root / "usr/bin/qemu-system-x86_64"

    @property
    def module_dir(self) -> Path:
        return self.root / "usr/lib/x86_64-linux-gnu/qemu"

    @property
    def firmware_dirs(self) -> tuple[Path, Path]:
        """Both ``-L`` folders (Debian's build looks only in /usr/share/{qemu,seabios})."""
        return self.root / "usr/share/qemu", self.root / "usr/share/seabios"

    @property
    def wrapper(self) -> Path:
        """Executable script: ``exec`` of the binary with QEMU_MODULE_DIR and both ``-L``."""
        return self.root.parent / "bin" / "qemu-system-x86_64"

    def firmware_args(self) -> list[str]:
        out: list[str] = []
        for d in self.firmware_dirs:
            out += ["-L", str(d)]
        return out

    def command(self, *args: str) -> list[str]:
        """argv running QEMU 10.0 (the binary itself; run it with :meth:`env`)."""
        return [str(self.binary), *self.firmware_args(), *args]

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ) plus QEMU_MODULE_DIR: without it QEMU 10.0 loads the
        system 7.2 modules and aborts in util/module.c."""
        env = dict(os.environ if base is None else base)
        env["QEMU_MODULE_DIR"] = str(self.module_dir)
        return env


def cache_dir() -> Path:
    """Where the QEMU 10.0 root lives (see the module docstring)."""
    explicit = os.environ.get("QATMIG_QEMU10_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "qatmig" / "qemu-10.0"


def _version_of(binary: Path, module_dir: Path) -> str:
    env = dict(os.environ, QEMU_MODULE_DIR=str(module_dir))
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=20, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QemuUnavailable(f"{binary} does not run: {e}; {HOW_TO_ENABLE}") from None
    first = out.stdout.splitlines()[0].strip() if out.stdout else ""
    if out.returncode != 0 or f"version {WANT_VERSION}" not in first:
        raise QemuUnavailable(
            f"{binary} --version gave {first or out.stderr.strip()[:200]!r}, not QEMU "
            f"{WANT_VERSION}; remove {binary.parents[2]} and fetch again"
        )
    return first


def _write_wrapper(q: Qemu10) -> None:
    q.wrapper.parent.mkdir(parents=True, exist_ok=True)
    tmp = q.wrapper.with_suffix(".tmp")
    tmp.write_text(
        "#!/bin/sh\n"
        "# QEMU 10.0 from Debian bookworm-backports (written by qatmig_engine.qemu.fetch)\n"
        f"QEMU_MODULE_DIR='{q.module_dir}'\nexport QEMU_MODULE_DIR\n"
        f"exec '{q.binary}' -L '{q.firmware_dirs[0]}' -L '{q.firmware_dirs[1]}' \"$@\"\n"
    )
    tmp.chmod(0o755)
    tmp.replace(q.wrapper)


def find_qemu10(cache: Path | None = None) -> Qemu10 | None:
    """The fetched QEMU 10.0, or None when it has not been fetched (never fetches)."""
    root = (cache or cache_dir()) / "root"
    q = Qemu10(root, "")
    if not (os.access(q.binary, os.X_OK) and q.module_dir.is_dir()):
        return None
    try:
        version = _version_of(q.binary, q.module_dir)
    except QemuUnavailable:
        return None
    q = Qemu10(root, version)
    if not os.access(q.wrapper, os.X_OK):
        _write_wrapper(q)
    return q


def qemu10_at(path: str | os.PathLike[str]) -> Qemu10 | None:
    """The fetched QEMU 10.0 whose cache folder or unpacked root is ``path``, or None."""
    p = Path(path)
    return find_qemu10(p) or (find_qemu10(p.parent) if p.name == "root" else None)


def _system_source() -> tuple[str, str]:
    """(URI, Signed-By) of the machine's Debian archive source, or Debian's defaults."""
    try:
        text = SYSTEM_SOURCES.read_text()
    except OSError:
        return DEFAULT_MIRROR, DEFAULT_KEYRING
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(
            (k.strip(), v.strip()) for k, v in
            (line.split(":", 1) for line in stanza.splitlines()
             if ":" in line and not line.lstrip().startswith("#"))
        )
        if "bookworm" in fields.get("Suites", "").split() and fields.get("URIs"):
            keyring = fields.get("Signed-By", DEFAULT_KEYRING)
            if not keyring.startswith("/"):  # an inline key block: use Debian's keyring
                keyring = DEFAULT_KEYRING
            return fields["URIs"].split()[0], keyring
    return DEFAULT_MIRROR, DEFAULT_KEYRING


def _run(cmd: list[str], what: str, cwd: Path | None = None, timeout: float = 600) -> None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QemuUnavailable(f"{what} failed: {e}; {HOW_TO_ENABLE}") from None
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise QemuUnavailable(f"{what} failed (exit {out.returncode}): {' | '.join(tail)}; "
                              f"{HOW_TO_ENABLE}")


def _fetch_into(cache: Path, log: bool) -> None:
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise QemuUnavailable(f"{tool} not found (not a Debian machine?); {HOW_TO_ENABLE}")
    uri, keyring = _system_source()
    apt = cache / "apt"
    shutil.rmtree(apt, ignore_errors=True)
    for d in ("etc/sources.list.d", "etc/preferences.d", "lists/partial", "cache/archives/partial"):
        (apt / d).mkdir(parents=True, exist_ok=True)
    (apt / "etc/sources.list").write_text("")
    (apt / "etc/sources.list.d/backports.sources").write_text(
        f"Types: deb\nURIs: {uri}\nSuites: {SUITE}\nComponents: main\nSigned-By: {keyring}\n"
    )
    opts = [
        "-o", f"Dir::Etc::SourceList={apt}/etc/sources.list",
        "-o", f"Dir::Etc::SourceParts={apt}/etc/sources.list.d",
        "-o", f"Dir::Etc::Preferences={apt}/etc/preferences",
        "-o", f"Dir::Etc::PreferencesParts={apt}/etc/preferences.d",
        "-o", f"Dir::State::Lists={apt}/lists",
        "-o", f"Dir::Cache={apt}/cache",
        "-o", "APT::Sandbox::User=root" if os.geteuid() == 0 else "Debug::NoLocking=1",
        "-o", "Acquire::Languages=none", "-q",
    ]
    if log:
        print(f"qemu-10.0: apt-get update of {uri} {SUITE} (private lists in {apt})", flush=True)
    _run(["apt-get", *opts, "update"], f"apt-get update ({uri} {SUITE})")
    debs = apt / "debs"
    debs.mkdir()
    if log:
        print(f"qemu-10.0: apt-get download {' '.join(PACKAGES)}", flush=True)
    _run(["apt-get", *opts, "download", *PACKAGES], "apt-get download", cwd=debs)
    tmp_root = Path(tempfile.mkdtemp(prefix="root.", dir=cache))
    try:
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(tmp_root)], f"dpkg -x {deb.name}")
        q = Qemu10(tmp_root, "")
        _version_of(q.binary, q.module_dir)  # runs before it becomes the cached root
        final = cache / "root"
        shutil.rmtree(final, ignore_errors=True)
        tmp_root.rename(final)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
        shutil.rmtree(apt, ignore_errors=True)  # ~20 MB of .debs and lists, not needed now


def ensure_qemu10(cache: Path | None = None, *, log: bool = False) -> Qemu10:
    """The cached QEMU 10.0, fetching and unpacking it first if needed.

    Raises :class:`QemuUnavailable` with the reason and how to enable it when it cannot.
    """
    cache = cache or cache_dir()
    q = find_qemu10(cache)
    if q is not None:
        return q
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache / ".lock", "w")  # held across the fetch
    except OSError as e:
        raise QemuUnavailable(
            f"cache folder {cache} not writable: {e}; {HOW_TO_ENABLE}"
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        q = find_qemu10(cache)  # another process may have fetched it meanwhile
        if q is None:
            _fetch_into(cache, log)
            q = find_qemu10(cache)
        if q is None:
            raise QemuUnavailable(f"QEMU 10.0 unpacked into {cache} does not run; "
                                  f"{HOW_TO_ENABLE}")
    return q


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m qatmig_engine.qemu.fetch",
        description="Fetch QEMU 10.0 (Debian bookworm-backports) into a cache folder, unpacked "
        "beside the system QEMU, and print how to run it.")
    ap.add_argument("--cache", type=Path, help=f"cache folder (default {cache_dir()})")
    ap.add_argument("--json", action="store_true", help="print root, wrapper, env as JSON")
    ap.add_argument("--check", action="store_true", help="only report; never fetch (exit 1 "
                    "when not fetched)")
    args = ap.parse_args(argv)
    try:
        q = find_qemu10(args.cache) if args.check else ensure_qemu10(args.cache, log=True)
    except QemuUnavailable as e:
        print(f"qemu-10.0: unavailable: {e}", file=sys.stderr)
        return 1
    if q is None:
        print(f"qemu-10.0: not fetched in {args.cache or cache_dir()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"version": q.version, "root": str(q.root), "wrapper": str(q.wrapper),
                          "binary": str(q.binary), "QEMU_MODULE_DIR": str(q.module_dir),
                          "command": q.command()}, indent=2))
    else:
        print(f"{q.version}\nwrapper: {q.wrapper}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
