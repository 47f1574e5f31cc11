"""Corpus sources: the real Silesia corpus (directory or ``silesia.zip``), the stand-in, or any
directory of files; plus the verified download into the user cache directory.

Every corpus has a ``name`` that results carry: ``real Silesia``,
``stand-in (silesia-standin v1)`` or ``dir:<path>``.

* :func:`open_corpus` (``"stand-in" | "silesia" | "auto" | <dir> | <zip>``) -> :class:`Corpus`
* :func:`find_silesia` -> path of a local copy (``QATMIG_SILESIA``, or the cache) or ``None``
* :func:`verify_directory` / :func:`verify_zip` check every file's size and sha256 and raise
  :class:`~qatmig_engine.errors.CorpusError` naming the first missing or wrong file.
* :func:`download_silesia` fetches the official zip (URL overridable, ``QATMIG_SILESIA_URL``)
  with a progress bar on stderr, verifies it, and caches it as ``<cache>/silesia.zip``.

The cache directory is ``platformdirs.user_cache_dir("pytest-qatmig")`` unless
``QATMIG_CACHE_DIR`` is set.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import CorpusError
from . import standin
from .manifest import SILESIA_FILES, SILESIA_ZIP_URL, SilesiaFile

REAL_NAME = "real Silesia"
STANDIN_NAME = standin.CORPUS_NAME
ENV_SILESIA = "QATMIG_SILESIA"
ENV_URL = "QATMIG_SILESIA_URL"
ENV_CACHE = "QATMIG_CACHE_DIR"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The user cache directory of pytest-qatmig (``QATMIG_CACHE_DIR`` overrides)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("pytest-qatmig"))


# --------------------------------------------------------------------------------------------
# corpora


class Corpus:
    """An ordered set of files that guest images are tiled from."""

    name: str = ""

    def files(self) -> list[str]:
        raise NotImplementedError

    def size(self, member: str) -> int:
        raise NotImplementedError

    def iter_chunks(self, member: str, start: int = 0) -> Iterator[bytes]:
        """The bytes of ``member`` from offset ``start``, in chunks."""
        raise NotImplementedError

    def read(self, member: str, limit: int | None = None) -> bytes:
        """``member`` (or its first ``limit`` bytes)."""
        end = self.size(member) if limit is None else min(limit, self.size(member))
        out = bytearray()
        for chunk in self.iter_chunks(member):
            out += chunk[: end - len(out)]
            if len(out) >= end:
                break
        return bytes(out)

    def total_size(self) -> int:
        return sum(self.size(m) for m in self.files())

    def fingerprint(self) -> str:
        """What identifies the content (the cache key of guest images uses it)."""
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class StandinCorpus(Corpus):
    """The deterministic stand-in (generated on demand, never stored)."""

    name = STANDIN_NAME

    def files(self) -> list[str]:
        return [f.name for f in SILESIA_FILES]

    def size(self, member: str) -> int:
        return standin.file_size(member)

    def iter_chunks(self, member: str, start: int = 0) -> Iterator[bytes]:
        size = standin.file_size(member)
        first = start // standin.SEGMENT
        for i in range(first, (size + standin.SEGMENT - 1) // standin.SEGMENT):
            data = standin.segment(member, i)
            yield data[start - i * standin.SEGMENT:] if i == first else data

    def fingerprint(self) -> str:
        return f"{self.name}/knobs={sorted(standin.KNOBS.items())}"


class DirectoryCorpus(Corpus):
    """Files of a directory, in a fixed order (verified Silesia or any ``dir:<path>``)."""

    def __init__(self, root: Path, members: Sequence[str], name: str) -> None:
        self.root = root
        self._members = list(members)
        self.name = name

    def files(self) -> list[str]:
        return list(self._members)

    def size(self, member: str) -> int:
        return (self.root / member).stat().st_size

    def iter_chunks(self, member: str, start: int = 0) -> Iterator[bytes]:
        with open(self.root / member, "rb") as f:
            f.seek(start)
            while chunk := f.read(_CHUNK):
                yield chunk

    def fingerprint(self) -> str:
        if self.name == REAL_NAME:
            return self.name
        parts = [self.name]
        for m in self._members:
            st = (self.root / m).stat()
            parts.append(f"{m}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)


class ZipCorpus(Corpus):
    """Members of a (verified) ``silesia.zip``, read without extracting."""

    def __init__(self, path: Path, members: dict[str, str], name: str = REAL_NAME) -> None:
        self.path = path
        self._members = members  # our name -> name inside the zip
        self._sizes: dict[str, int] = {}
        with zipfile.ZipFile(path) as z:
            for ours, theirs in members.items():
                self._sizes[ours] = z.getinfo(theirs).file_size
        self.name = name

    def files(self) -> list[str]:
        return list(self._members)

    def size(self, member: str) -> int:
        return self._sizes[member]

    def iter_chunks(self, member: str, start: int = 0) -> Iterator[bytes]:
        with zipfile.ZipFile(self.path) as z, z.open(self._members[member]) as f:
            skip = start
            while skip > 0:
                got = f.read(min(skip, _CHUNK))
                if not got:
                    return
                skip -= len(got)
            while chunk := f.read(_CHUNK):
                yield chunk


# --------------------------------------------------------------------------------------------
# verification


def _sha256_stream(chunks: Iterator[bytes]) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    for c in chunks:
        h.update(c)
        n += len(c)
    return n, h.hexdigest()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def verify_directory(root: str | Path, manifest: Sequence[SilesiaFile] = SILESIA_FILES) -> None:
    """Check that ``root`` holds every file of ``manifest`` with the right size and sha256."""
    root = Path(root)
    for f in manifest:
        p = root / f.name
        if not p.is_file():
            raise CorpusError(f"Silesia file '{f.name}' is missing from {root}")
        size = p.stat().st_size
        if size != f.size:
            raise CorpusError(f"Silesia file '{f.name}' in {root} has {size} bytes, "
                              f"expected {f.size}: not the canonical corpus")
        _, digest = _sha256_stream(_file_chunks(p))
        if digest != f.sha256:
            raise CorpusError(f"Silesia file '{f.name}' in {root} has sha256 {digest}, "
                              f"expected {f.sha256}: the file is corrupted or not Silesia's")


def _zip_members(z: zipfile.ZipFile, manifest: Sequence[SilesiaFile]) -> dict[str, str]:
    by_base = {}
    for info in z.infolist():
        if not info.is_dir():
            by_base.setdefault(info.filename.rsplit("/", 1)[-1], info.filename)
    out = {}
    for f in manifest:
        if f.name not in by_base:
            raise CorpusError(f"Silesia file '{f.name}' is missing from {z.filename}")
        out[f.name] = by_base[f.name]
    return out


def verify_zip(path: str | Path, manifest: Sequence[SilesiaFile] = SILESIA_FILES
               ) -> dict[str, str]:
    """Check every file of ``manifest`` inside the zip; returns ``{name: member name}``."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            members = _zip_members(z, manifest)
            for f in manifest:
                info = z.getinfo(members[f.name])
                if info.file_size != f.size:
                    raise CorpusError(f"Silesia file '{f.name}' in {path} has {info.file_size} "
                                      f"bytes, expected {f.size}: not the canonical corpus")
                with z.open(info) as fh:
                    _, digest = _sha256_stream(iter(lambda fh=fh: fh.read(_CHUNK), b""))
                if digest != f.sha256:
                    raise CorpusError(f"Silesia file '{f.name}' in {path} has sha256 {digest}, "
                                      f"expected {f.sha256}: the file is corrupted")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, RuntimeError, zlib.error) as exc:
        # a damaged download: truncated, bad CRC, unsupported method, encrypted member...
        raise CorpusError(f"cannot read Silesia zip {path}: {exc}") from None
    return members


# --------------------------------------------------------------------------------------------
# finding and opening


def find_silesia() -> Path | None:
    """A local copy of the real corpus: ``$QATMIG_SILESIA`` (dir or zip), else the cache."""
    env = os.environ.get(ENV_SILESIA)
    if env:
        p = Path(env).expanduser()
        if not p.exists():
            raise CorpusError(f"{ENV_SILESIA}={env} does not exist (point it at the Silesia "
                              "directory or silesia.zip, or unset it)")
        return p
    cached = cache_dir() / "silesia.zip"
    return cached if cached.is_file() else None


_VERIFIED: dict[tuple[Any, ...], dict[str, str] | None] = {}


def _stamp(path: Path, manifest: Sequence[SilesiaFile]) -> tuple[Any, ...]:
    """What must not change for an earlier verification to still hold (this process only)."""
    files = [path / f.name for f in manifest] if path.is_dir() else [path]
    stats = tuple((str(p), st.st_size, st.st_mtime_ns, st.st_ino) for p in files
                  if p.exists() for st in [p.stat()])
    return (str(path.resolve()), tuple(f.sha256 for f in manifest), stats)


def _open_real(path: Path, manifest: Sequence[SilesiaFile]) -> Corpus:
    stamp = _stamp(path, manifest)
    if stamp in _VERIFIED:  # hashing 212 MB once per process is enough
        members = _VERIFIED[stamp]
    else:
        if path.is_dir():
            verify_directory(path, manifest)
            members = None
        else:
            members = verify_zip(path, manifest)
        _VERIFIED[stamp] = members
    if members is None:
        return DirectoryCorpus(path, [f.name for f in manifest], REAL_NAME)
    return ZipCorpus(path, members)


def open_corpus(spec: str | os.PathLike[str] | Corpus | None = "stand-in", *,
                manifest: Sequence[SilesiaFile] = SILESIA_FILES) -> Corpus:
    """Resolve a corpus specification.

    ``"stand-in"`` (or ``None``): the generator. ``"silesia"``: the real corpus from
    ``$QATMIG_SILESIA`` or the cache, verified (``CorpusError`` if absent or wrong).
    ``"auto"``: the real corpus when a local copy exists, else the stand-in. A zip path: a
    verified Silesia zip. A directory that contains any Silesia file name: verified as the real
    corpus. Any other directory: its regular files in name order, named ``dir:<path>``.
    """
    if isinstance(spec, Corpus):
        return spec
    if spec is None or str(spec).lower() in ("stand-in", "standin"):
        return StandinCorpus()
    text = os.fspath(spec)
    if text.lower() in ("silesia", "real"):
        found = find_silesia()
        if found is None:
            raise CorpusError(
                "the real Silesia corpus is not available: set QATMIG_SILESIA to its directory "
                "or silesia.zip, or run 'qatmig guest corpus --download' (needs internet), or "
                "use --corpus stand-in")
        return _open_real(found, manifest)
    if text.lower() == "auto":
        found = find_silesia()
        return StandinCorpus() if found is None else _open_real(found, manifest)
    path = Path(text).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus '{text}' is neither stand-in, silesia, auto nor an existing "
                          "directory or zip file")
    if path.is_file():
        return _open_real(path, manifest)
    if any((path / f.name).exists() for f in manifest):
        return _open_real(path, manifest)
    members = sorted(p.name for p in path.iterdir() if p.is_file() and p.stat().st_size > 0)
    if not members:
        raise CorpusError(f"directory {path} has no non-empty files to use as a corpus")
    return DirectoryCorpus(path, members, f"dir:{path.resolve()}")


# --------------------------------------------------------------------------------------------
# download


def download_silesia(url: str | None = None, dest: str | os.PathLike[str] | None = None, *,
                     manifest: Sequence[SilesiaFile] = SILESIA_FILES, timeout: float = 60.0,
                     quiet: bool = False) -> Path:
    """Download the official ``silesia.zip``, verify it, and store it (default: the cache).

    The URL is ``url``, else ``$QATMIG_SILESIA_URL``, else the corpus homepage's. Nothing is
    kept unless every file checks out. Every network wait has ``timeout`` seconds.
    """
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    url = url or os.environ.get(ENV_URL) or SILESIA_ZIP_URL
    target = Path(dest) if dest is not None else cache_dir() / "silesia.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".silesia-", suffix=".zip.part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp: Any = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise CorpusError(f"cannot download {url}: {exc} (set {ENV_URL} to a mirror, or "
                                  f"download silesia.zip by hand and set {ENV_SILESIA})") from None
            with resp:
                length = resp.headers.get("Content-Length")
                bar = tqdm(total=int(length) if length else None, desc="silesia.zip", unit="B",
                           unit_scale=True, unit_divisor=1024, file=sys.stderr,
                           disable=quiet or not sys.stderr.isatty(), leave=False)
                with bar:
                    try:
                        while chunk := resp.read(_CHUNK):
                            out.write(chunk)
                            bar.update(len(chunk))
                    except OSError as exc:
                        raise CorpusError(f"download of {url} failed: {exc}") from None
        verify_zip(tmp, manifest)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def extract_silesia(zip_path: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                    manifest: Sequence[SilesiaFile] = SILESIA_FILES) -> Path:
    """Extract a verified zip's files flat into ``dest`` (for tools that want a directory)."""
    members = verify_zip(zip_path, manifest)
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as z:
        for ours, theirs in members.items():
            with z.open(theirs) as src, open(d / ours, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    return d
