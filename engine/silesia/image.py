"""Guest RAM images tiled from a corpus, page-aligned, with a share of zero pages.

Public API (stable; the engine, the pytest plugin and ``qatmig guest`` use it)::

    build_guest_image(path, size, corpus="stand-in", zero_ratio=0.0, seed=0) -> GuestImageInfo
    cached_guest_image(size, corpus="stand-in", zero_ratio=0.0, seed=0) -> Path
    guest_image_bytes(size, corpus="stand-in", zero_ratio=0.0, seed=0) -> bytearray
    map_guest_image(size, corpus="stand-in", zero_ratio=0.0, seed=0) -> mmap.mmap (read-only)
    read_image_info(path) -> GuestImageInfo          # from the FILE.json sidecar
    sample_ratios(path_or_buffer, codecs=..., packets=32) -> dict

``corpus`` is ``"stand-in"``, ``"silesia"`` (the verified real corpus), ``"auto"`` (real when a
local copy exists, else stand-in), a directory or zip path, or a :class:`Corpus`.

Layout (``qatmig-guest v1``): the corpus files are laid out one after another, each starting on
a page boundary (the last page of a file is padded with zeros), and repeated as often as the
image needs. ``seed`` picks the corpus page the image starts at (seed 0: the first page) and
which pages are zero: in every run of 256 pages exactly the pages needed to keep
``floor(zero_ratio * pages_so_far)`` zero pages are chosen at random, so the share is honoured
to within one page everywhere. Zero pages do not consume corpus pages. Files are written
sparse: zero pages are seeked over, never written.

Images in the cache (``<cache>/images``) are keyed by a hash of the layout version, the corpus'
identity (for the stand-in: its generator version and knobs), size, zero ratio and seed, so a
1 GiB image is built once. Each image has a ``FILE.json`` sidecar (:class:`GuestImageInfo`).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorpusError, ParameterError
from .corpus import Corpus, cache_dir, open_corpus
from .manifest import RATIO_CODECS
from .ratios import compressed_size

PAGE_SIZE = 4096
LAYOUT = "qatmig-guest v1"
_RUN = 256  # pages per zero-selection run and per write
_KEEP_LIMIT = 1 << 30  # replay the corpus from memory when it is at most this big


@dataclass
class GuestImageInfo:
    """What a guest image holds. ``zero_pages`` counts pages that are all zero (the chosen
    zero pages plus any corpus page that happens to be zero)."""

    size: int
    pages: int
    zero_pages: int
    corpus: str
    zero_ratio: float | None  # None: unknown (an image without its sidecar)
    seed: int | None
    page_size: int = PAGE_SIZE
    layout: str = LAYOUT
    sha256: str | None = None
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GuestImageInfo:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def _check(size: int, zero_ratio: float, seed: int) -> int:
    if not isinstance(size, int) or size <= 0 or size % PAGE_SIZE:
        raise ParameterError(f"guest image size must be a positive multiple of {PAGE_SIZE} "
                             f"bytes, not {size!r}")
    if not 0.0 <= float(zero_ratio) <= 1.0:
        raise ParameterError(f"zero ratio must be between 0 and 1, not {zero_ratio!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, not {seed!r}")
    return size // PAGE_SIZE


def _seed_int(seed: int, what: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{LAYOUT}/{what}/{seed}".encode()).digest()[:8],
                          "little")


# --------------------------------------------------------------------------------------------
# the page stream


def _file_pages(corpus: Corpus, member: str, first_page: int) -> Iterator[np.ndarray]:
    """Whole pages of ``member`` from page ``first_page`` (tail padded with zeros)."""
    pending = b""
    for chunk in corpus.iter_chunks(member, first_page * PAGE_SIZE):
        if pending:
            chunk = pending + chunk
        whole = len(chunk) - len(chunk) % PAGE_SIZE
        if whole:
            yield np.frombuffer(chunk, dtype=np.uint8, count=whole)
        pending = chunk[whole:]
    if pending:
        yield np.frombuffer(pending + bytes(PAGE_SIZE - len(pending)), dtype=np.uint8)


class _PageStream:
    """Corpus pages from a start page on, cycling through the corpus forever."""

    def __init__(self, corpus: Corpus, start_page: int, keep: bool) -> None:
        self._corpus = corpus
        members = corpus.files()
        pages = [(corpus.size(m) + PAGE_SIZE - 1) // PAGE_SIZE for m in members]
        self.total_pages = sum(pages)
        if self.total_pages == 0:
            raise CorpusError(f"corpus {corpus.name} is empty")
        self._cycle = self._rotate(members, pages, start_page % self.total_pages)
        self._keep = keep
        self._kept: list[np.ndarray] = []
        self._gen = self._first_cycle()
        self._buf = np.zeros(0, np.uint8)

    @staticmethod
    def _rotate(members: Sequence[str], pages: Sequence[int], start: int
                ) -> list[tuple[str, int, int | None]]:
        """The cycle as (member, first page, page count or None = to the end)."""
        i = 0
        while start >= pages[i]:
            start -= pages[i]
            i += 1
        cycle: list[tuple[str, int, int | None]] = [(members[i], start, None)]
        for j in list(range(i + 1, len(members))) + list(range(i)):
            cycle.append((members[j], 0, None))
        if start:
            cycle.append((members[i], 0, start))
        return cycle

    def _one_cycle(self) -> Iterator[np.ndarray]:
        for member, first, count in self._cycle:
            left = count
            for arr in _file_pages(self._corpus, member, first):
                if left is not None:
                    arr = arr[: left * PAGE_SIZE]
                    left -= len(arr) // PAGE_SIZE
                if len(arr):
                    yield arr
                if left == 0:
                    break

    def _first_cycle(self) -> Iterator[np.ndarray]:
        for arr in self._one_cycle():
            if self._keep:
                self._kept.append(arr)
            yield arr
        while True:
            if self._keep:
                yield from self._kept
            else:
                yield from self._one_cycle()

    def take(self, n_pages: int) -> np.ndarray:
        want = n_pages * PAGE_SIZE
        parts = []
        have = 0
        while have < want:
            if not len(self._buf):
                self._buf = next(self._gen)
            piece = self._buf[: want - have]
            self._buf = self._buf[len(piece):]
            parts.append(piece)
            have += len(piece)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _start_page(seed: int, total_pages: int) -> int:
    return 0 if seed == 0 else _seed_int(seed, "start") % total_pages


def iter_guest_runs(size: int, corpus: str | os.PathLike[str] | Corpus | None = "stand-in",
                    zero_ratio: float = 0.0, seed: int = 0
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The image as runs of up to 256 pages: ``(first page, pages[k, 4096], nonzero[k])``."""
    pages = _check(size, zero_ratio, seed)
    src = open_corpus(corpus)
    total = sum((src.size(m) + PAGE_SIZE - 1) // PAGE_SIZE for m in src.files())
    if total == 0:
        raise CorpusError(f"corpus {src.name} is empty")
    stream = _PageStream(src, _start_page(seed, total), keep=(
        pages > total and total * PAGE_SIZE <= _KEEP_LIMIT))
    zr = round(float(zero_ratio) * (1 << 32))
    zero_seed = _seed_int(seed, "zero")
    for run, p0 in enumerate(range(0, pages, _RUN)):
        k = min(_RUN, pages - p0)
        n_zero = ((p0 + k) * zr >> 32) - (p0 * zr >> 32)
        block = np.zeros((k, PAGE_SIZE), dtype=np.uint8)
        if n_zero < k:
            keep = np.ones(k, dtype=bool)
            if n_zero:
                bg = np.random.PCG64(np.random.SeedSequence([zero_seed, run]))
                keep[np.argsort(bg.random_raw(k), kind="stable")[:n_zero]] = False
            block[keep] = stream.take(k - n_zero).reshape(-1, PAGE_SIZE)
        nonzero = np.any(block.view(np.uint64) != 0, axis=1)
        yield p0, block, nonzero


# --------------------------------------------------------------------------------------------
# building


def _corpus_name(corpus: str | os.PathLike[str] | Corpus | None) -> tuple[Corpus, str]:
    src = open_corpus(corpus)
    return src, src.name


def _write_sidecar(path: Path, info: GuestImageInfo) -> None:
    side = Path(str(path) + ".json")
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n")
    os.replace(tmp, side)


def build_guest_image(path: str | os.PathLike[str], size: int,
                      corpus: str | os.PathLike[str] | Corpus | None = "stand-in",
                      zero_ratio: float = 0.0, seed: int = 0, *, sha256: bool = False,
                      progress: Callable[[int], None] | None = None) -> GuestImageInfo:
    """Write a guest image of ``size`` bytes to ``path`` (sparse; atomically replaced) and its
    ``path.json`` sidecar. ``progress(n)`` is called with the bytes done after each run."""
    _check(size, zero_ratio, seed)
    src, name = _corpus_name(corpus)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CorpusError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    check_free_space(path.parent, size, zero_ratio)
    # The name is known before the file exists, so the ``finally`` below removes it whenever
    # the build stops - even when SIGTERM (an exception in the CLI) lands right after creation.
    tmp_name = str(path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    h = hashlib.sha256() if sha256 else None
    zero_pages = 0
    sidecar_written = placed = False
    try:
        fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as f:
            for p0, block, nonzero in iter_guest_runs(size, src, zero_ratio, seed):
                zero_pages += int((~nonzero).sum())
                if h is not None:
                    h.update(block)
                # write maximal runs of non-zero pages; seek over zero pages (sparse file)
                edges = np.flatnonzero(np.diff(np.concatenate(([0], nonzero.view(np.int8),
                                                               [0]))))
                for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
                    f.seek((p0 + a) * PAGE_SIZE)
                    f.write(memoryview(block[a:b]).cast("B"))
                if progress is not None:
                    progress(len(block) * PAGE_SIZE)
            f.truncate(size)
        info = GuestImageInfo(size=size, pages=size // PAGE_SIZE, zero_pages=zero_pages,
                              corpus=name, zero_ratio=float(zero_ratio), seed=seed,
                              sha256=h.hexdigest() if h is not None else None,
                              path=str(path))
        sidecar_written = True
        _write_sidecar(path, info)
        os.replace(tmp_name, path)
        placed = True
    except OSError as exc:  # ENOSPC or EDQUOT despite the check (another writer), EIO, ...
        raise CorpusError(
            f"cannot write guest image {path}: {exc.strerror or exc} (partial file removed)"
        ) from None
    finally:
        # Also on SIGTERM: the CLI turns it into an exception, so this runs.
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        if sidecar_written and not placed:  # a sidecar must not describe an image not there
            for side in (Path(str(path) + ".json"), Path(str(path) + ".json.tmp")):
                if side.exists():
                    side.unlink()
    return info


#: Space left free on the file system after writing an image (bytes).
FREE_SPACE_MARGIN = 256 << 20


def check_free_space(directory: str | os.PathLike[str], size: int, zero_ratio: float) -> None:
    """Refuse, before writing anything, an image whose data would not fit ``directory``'s
    file system (zero pages are holes of a sparse file and take no space)."""
    need = int(size * (1.0 - float(zero_ratio))) + FREE_SPACE_MARGIN
    try:
        st = os.statvfs(directory)
    except OSError:  # no statvfs here: the write itself will tell
        return
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise CorpusError(
            f"a {size >> 20} MiB guest image needs about {need >> 20} MiB in {directory}, only "
            f"{free >> 20} MiB are free: lower --guest-size, use --corpus filler (anonymous "
            "memory, no file), or point QATMIG_CACHE_DIR at a larger file system"
        )


def guest_image_bytes(size: int, corpus: str | os.PathLike[str] | Corpus | None = "stand-in",
                      zero_ratio: float = 0.0, seed: int = 0) -> bytearray:
    """The image in memory (for small guests; large ones: :func:`map_guest_image`)."""
    _check(size, zero_ratio, seed)
    buf = bytearray(size)
    view = np.frombuffer(buf, dtype=np.uint8).reshape(-1, PAGE_SIZE)
    for p0, block, _ in iter_guest_runs(size, corpus, zero_ratio, seed):
        view[p0:p0 + len(block)] = block
    return buf


def cache_key(size: int, corpus: Corpus, zero_ratio: float, seed: int) -> str:
    """The cache key of an image: a hash of everything its bytes depend on."""
    ident = json.dumps([LAYOUT, corpus.fingerprint(), size, float(zero_ratio).hex(), seed])
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def cached_guest_image(size: int, corpus: str | os.PathLike[str] | Corpus | None = "stand-in",
                       zero_ratio: float = 0.0, seed: int = 0, *,
                       progress: Callable[[int], None] | None = None) -> Path:
    """Path of the cached image with these parameters, built on first use."""
    _check(size, zero_ratio, seed)
    src = open_corpus(corpus)
    d = cache_dir() / "images"
    path = d / f"guest-{size >> 20}M-{cache_key(size, src, zero_ratio, seed)}.img"
    if path.is_file() and Path(str(path) + ".json").is_file() and path.stat().st_size == size:
        return path
    build_guest_image(path, size, src, zero_ratio, seed, progress=progress)
    return path


def map_guest_image(size: int, corpus: str | os.PathLike[str] | Corpus | None = "stand-in",
                    zero_ratio: float = 0.0, seed: int = 0) -> mmap.mmap:
    """A read-only mapping of the cached image (built on first use)."""
    path = cached_guest_image(size, corpus, zero_ratio, seed)
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_image_info(path: str | os.PathLike[str]) -> GuestImageInfo:
    """The sidecar of an image, or (without one) what a scan of the file shows."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"guest image {path} does not exist")
    side = Path(str(path) + ".json")
    if side.is_file():
        try:
            info = GuestImageInfo.from_json(json.loads(side.read_text()))
        except (ValueError, TypeError) as exc:
            raise CorpusError(f"sidecar {side} is not a guest image description: {exc}") from None
        info.path = str(path)
        return info
    size = path.stat().st_size
    if size == 0 or size % PAGE_SIZE:
        raise CorpusError(
            f"{path} is not a guest RAM image: {size} bytes is not a whole number of "
            f"{PAGE_SIZE}-byte pages (and it has no {side.name} sidecar)"
        )
    return GuestImageInfo(size=size, pages=size // PAGE_SIZE, zero_pages=count_zero_pages(path),
                          corpus="unknown (no sidecar)", zero_ratio=None, seed=None,
                          layout="unknown", path=str(path))


def count_zero_pages(path: str | os.PathLike[str]) -> int:
    """Pages of the file that are all zero (a trailing partial page counts as a page)."""
    zeros = 0
    with open(path, "rb") as f:
        while chunk := f.read(_RUN * PAGE_SIZE):
            pad = -len(chunk) % PAGE_SIZE
            arr = np.frombuffer(chunk + bytes(pad), dtype=np.uint64).reshape(-1, PAGE_SIZE // 8)
            zeros += int((~np.any(arr != 0, axis=1)).sum())
    return zeros


def sample_ratios(image: str | os.PathLike[str] | bytes | bytearray | memoryview | mmap.mmap,
                  codecs: Sequence[str] = RATIO_CODECS, packets: int = 32,
                  packet_pages: int = 128) -> dict[str, Any]:
    """Compression ratio per codec on a sample, the way multifd sends it: ``packets`` windows
    of ``packet_pages`` pages spread evenly over the image, zero pages left out (they travel
    as zero pages), each window's normal pages compressed on their own."""
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise CorpusError(f"guest image {image} is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return sample_ratios(m, codecs, packets, packet_pages)
    view = memoryview(image).cast("B")
    pages = len(view) // PAGE_SIZE
    window = min(packet_pages, pages)
    n = max(1, min(packets, pages // max(1, window)))
    starts = [(pages - window) * i // max(1, n - 1) if n > 1 else 0 for i in range(n)]
    raw = 0
    sizes = dict.fromkeys(codecs, 0)
    for s in starts:
        arr = np.frombuffer(view[s * PAGE_SIZE:(s + window) * PAGE_SIZE], dtype=np.uint64)
        arr = arr.reshape(window, PAGE_SIZE // 8)
        normal = arr[np.any(arr != 0, axis=1)]
        if not len(normal):
            continue
        data = normal.tobytes()
        raw += len(data)
        for c in codecs:
            sizes[c] += compressed_size(data, c)
    ratios = {c: (raw / sizes[c] if sizes[c] else None) for c in codecs}
    return {"sampled_pages": n * window, "normal_bytes": raw, "ratios": ratios,
            "packets": n, "packet_pages": window}
