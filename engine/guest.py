"""Guest RAM: named RAM blocks of 4 KiB pages, a dirty bitmap per block, and digests.

A :class:`RAMBlock` is QEMU's unit of guest memory (``pc.ram``, ``pc.bios``, ...): a name, a
used length and host memory. Here the memory is an ``mmap`` -- of a file (so a 1 GiB guest can
live in ``/dev/shm`` and be compared byte for byte) or anonymous. Each block keeps a dirty
bitmap (one byte per page, ``bytearray``) that the workload sets and the migration syncs, as
QEMU's ``migration_bitmap_sync`` does with the KVM/TCG dirty log.

The migration never writes to a source guest: a source image is mapped read-only
(``ACCESS_READ``) unless a workload runs, and then copy-on-write (``ACCESS_COPY``), so the file
itself is never modified either.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import re
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from .constants import TARGET_PAGE_SIZE
from .errors import ParameterError

#: QEMU's name of the main RAM block of a ``pc`` machine started with plain ``-m``.
DEFAULT_RAMBLOCK = "pc.ram"

_DIRTY_RUN = re.compile(rb"\x01+")
_ZERO_BYTE = re.compile(rb"\x00")
#: madvise(MADV_POPULATE_WRITE) (Linux 5.14): Python's mmap module does not name it.
_MADV_POPULATE_WRITE = 23


class RAMBlock:
    """One named block of guest RAM (QEMU's ``RAMBlock``: idstr + used_length + host memory)."""

    def __init__(
        self,
        name: str,
        mm: mmap.mmap,
        used_length: int,
        *,
        page_size: int = TARGET_PAGE_SIZE,
        path: str | None = None,
        writable: bool = True,
    ) -> None:
        raw = name.encode()
        if not raw or len(raw) > 255:
            raise ParameterError(f"RAM block name must be 1..255 bytes, not {name!r}")
        if used_length <= 0 or used_length % page_size:
            raise ParameterError(
                f"RAM block {name!r}: length {used_length} is not a positive multiple of the "
                f"page size {page_size}"
            )
        self.name = name
        self.idstr = raw
        self.used_length = used_length
        self.page_size = page_size
        self.pages = used_length // page_size
        self.path = path
        self.writable = writable
        self._mm = mm
        self.view = memoryview(mm)[:used_length]
        #: The same memory as u64 words: two word reads reject most non-zero pages before a
        #: full 4 KiB compare (:meth:`is_zero`).
        self.words = self.view.cast("Q")
        self._last_word = page_size // 8 - 1
        self._zero = bytes(page_size)
        self._populate = writable and hasattr(mm, "madvise")
        #: One byte per page, 1 = dirty. Set by the workload, taken by :meth:`sync_dirty`.
        self.dirty = bytearray(self.pages)
        self._lock = threading.Lock()
        #: For a read-only file mapping: one byte per page, 0 = the page lies in a hole of
        #: the file (zero without reading it: a sparse guest's holes are never faulted in).
        self.data_map: bytearray | None = None
        #: A shared writable file mapping (mode "w"): the file is the RAM.
        self.shared_file = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def anonymous(
        cls, name: str, size: int, *, page_size: int = TARGET_PAGE_SIZE, prealloc: bool = False
    ) -> RAMBlock:
        """A block in anonymous memory, zero-filled and allocated lazily by the kernel unless
        ``prealloc`` (QEMU's ``prealloc=on``: every page faulted in now)."""
        _check_size(name, size, page_size)
        # Private: cheaper page faults than shared anonymous (shmem) memory.
        flags = mmap.MAP_PRIVATE
        if prealloc:
            flags |= getattr(mmap, "MAP_POPULATE", 0)
        try:
            mm = mmap.mmap(-1, size, flags=flags)
        except (OSError, OverflowError) as exc:
            raise ParameterError(
                f"RAM block {name!r}: cannot map {size} bytes of memory: "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from None
        # QEMU madvises guest RAM MADV_HUGEPAGE (physmem.c, ram_block_add): with transparent
        # huge pages in "madvise" mode this turns 512 first-touch faults into one.
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                mm.madvise(mmap.MADV_HUGEPAGE)
            except OSError:  # THP unavailable (kernel config, container): plain pages
                pass
        return cls(name, mm, size, page_size=page_size)

    @classmethod
    def from_file(
        cls,
        name: str,
        path: str | os.PathLike[str],
        size: int | None = None,
        *,
        mode: str = "r",
        page_size: int = TARGET_PAGE_SIZE,
        keep_content: bool = False,
    ) -> RAMBlock:
        """Map ``path`` as a block.

        ``mode``: ``"r"`` read-only (a source that nobody writes), ``"c"`` copy-on-write (a
        source under a workload: the file is never modified), ``"w"`` shared writable (a
        destination whose RAM lives in the file; created or resized to ``size``, emptied first
        unless ``keep_content`` and it already has ``size`` bytes: then its bytes are the RAM,
        as with QEMU's ``memory-backend-file``).
        """
        path = os.fspath(path)
        if mode == "w":
            if size is None:
                raise ParameterError("a destination guest image needs a size (--guest-size)")
            _check_size(name, size, page_size)
            if os.path.isdir(path):
                raise ParameterError(f"guest image {path} is a directory: give a file name")
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise _image_error(path, "create or open it for writing", exc) from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ParameterError(
                        f"guest image {path} is not a regular file (a destination's RAM lives "
                        "in a file it can resize, e.g. in /dev/shm)"
                    )
                if not (keep_content and os.fstat(fd).st_size == size):
                    # Truncate first so the destination starts as a sparse file of zeros.
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, size)
                mm = mmap.mmap(fd, size, access=mmap.ACCESS_WRITE)
            except (OSError, OverflowError) as exc:
                raise _image_error(path, f"make it {size} bytes long", exc) from None
            finally:
                os.close(fd)
            blk = cls(name, mm, size, page_size=page_size, path=path, writable=True)
            blk.shared_file = True
            return blk
        if mode not in ("r", "c"):
            raise ParameterError(f"unknown guest image mode {mode!r}")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise _image_error(path, "open it", exc) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) and not stat.S_ISBLK(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                raise ParameterError(f"guest image {path} is {kind}: give an image file")
            file_size = st.st_size
            if size is None:
                size = file_size
            _check_size(name, size, page_size)
            if file_size < size:
                raise ParameterError(
                    f"guest image {path} has {file_size} bytes, fewer than the guest size {size}"
                )
            access = mmap.ACCESS_READ if mode == "r" else mmap.ACCESS_COPY
            try:
                mm = mmap.mmap(fd, size, access=access)
            except (OSError, OverflowError) as exc:
                raise _image_error(path, "map it", exc) from None
            # A file with a block allocated for every byte has no hole: no map to build (one
            # SEEK_DATA/SEEK_HOLE walk of the whole file saved; every page is read anyway).
            dense = st.st_blocks * 512 >= file_size
            data_map = file_data_map(fd, size, page_size) if mode == "r" and not dense else None
        finally:
            os.close(fd)
        blk = cls(name, mm, size, page_size=page_size, path=path, writable=(mode == "c"))
        blk.data_map = data_map
        return blk

    # ------------------------------------------------------------------ pages
    def page(self, index: int) -> memoryview:
        o = index * self.page_size
        return self.view[o : o + self.page_size]

    def is_zero(self, offset: int) -> bool:
        """Whether the page at byte ``offset`` is all zeros (QEMU's ``buffer_is_zero``)."""
        m = self.data_map
        if m is not None and not m[offset // self.page_size]:
            return True
        w = self.words
        i = offset >> 3
        if w[i] or w[i + self._last_word]:
            return False
        # tobytes + bytes == is memcpy + memcmp; memoryview == compares item by item.
        return self.view[offset : offset + self.page_size].tobytes() == self._zero

    def zero_pages_in_run(self, start: int, count: int) -> list[int]:
        """Byte offsets of the zero pages among ``count`` pages from byte ``start``.

        Vectorised in C: the first and last byte of every page are gathered with strided
        slices; only pages where both are zero get a full compare. Pages in a hole of a
        read-only file (:attr:`data_map`) are zero without being read.
        """
        ps = self.page_size
        m = self.data_map
        if m is not None:
            p0 = start // ps
            seg = m[p0 : p0 + count]
            if seg.count(1) != count:
                out: list[int] = []
                pos = 0
                for run in _DIRTY_RUN.finditer(seg):
                    out += range(start + pos * ps, start + run.start() * ps, ps)
                    out += self._zero_pages_read(start + run.start() * ps, run.end() - run.start())
                    pos = run.end()
                out += range(start + pos * ps, start + count * ps, ps)
                return out
        return self._zero_pages_read(start, count)

    def _zero_pages_read(self, start: int, count: int) -> list[int]:
        ps = self.page_size
        end = start + count * ps
        v = self.view
        first = v[start:end:ps].tobytes()
        last = v[start + ps - 1 : end : ps].tobytes()
        both = (int.from_bytes(first, "little") | int.from_bytes(last, "little")).to_bytes(
            count, "little"
        )
        zero = self._zero
        out = []
        for m in _ZERO_BYTE.finditer(both):
            o = start + m.start() * ps
            if v[o : o + ps].tobytes() == zero:
                out.append(o)
        return out

    def populate(self, offset: int, length: int) -> None:
        """Fault a range in with one call (``MADV_POPULATE_WRITE``, Linux 5.14+) before it is
        written: cheaper than one page fault per 4 KiB inside the copy. A no-op elsewhere."""
        if not self._populate or offset % mmap.PAGESIZE:
            return
        try:
            self._mm.madvise(_MADV_POPULATE_WRITE, offset, length)
        except (OSError, ValueError):
            self._populate = False

    def prefault(self) -> None:
        """Touch every page now (QEMU's prealloc), so faults are not paid during migration."""
        v = self.view
        for o in range(0, self.used_length, self.page_size):
            v[o] = v[o]

    def write_page(self, offset: int, data: bytes | memoryview) -> None:
        """Write one page at byte ``offset`` (no dirty tracking: used by the destination)."""
        self.view[offset : offset + self.page_size] = data

    # ------------------------------------------------------------------ dirty bitmap
    def mark_dirty(self, index: int) -> None:
        with self._lock:
            self.dirty[index] = 1

    def mark_dirty_many(self, indices: list[int]) -> None:
        """Set several dirty bits at once (the lock keeps a concurrent sync from losing one)."""
        with self._lock:
            d = self.dirty
            for i in indices:
                d[i] = 1

    def mark_all_dirty(self) -> None:
        with self._lock:
            self.dirty[:] = b"\x01" * self.pages

    def sync_dirty(self) -> bytearray:
        """Take the dirty bitmap and clear it (QEMU's bitmap sync): returns the taken copy."""
        with self._lock:
            taken = self.dirty
            self.dirty = bytearray(self.pages)
        return taken

    def dirty_count(self) -> int:
        return self.dirty.count(1)

    # ------------------------------------------------------------------ digests
    def digest(self, algorithm: str = "sha256") -> str:
        """Hex digest of the block's bytes (deterministic: depends on content only)."""
        h = hashlib.new(algorithm)
        step = 16 << 20
        m = self.data_map
        if m is None and self.path is not None and self.shared_file:
            # A shared file mapping (a destination): its holes are zero, read or not.
            try:
                self._mm.flush()
                fd = os.open(self.path, os.O_RDONLY)
            except (OSError, ValueError):
                fd = -1
            if fd >= 0:
                try:
                    m = file_data_map(fd, self.used_length, self.page_size)
                finally:
                    os.close(fd)
        if m is None:
            for o in range(0, self.used_length, step):
                h.update(self.view[o : o + step])
            return h.hexdigest()
        zero = bytes(step)
        ps = self.page_size
        pos = 0  # pages
        for run in _DIRTY_RUN.finditer(m):
            for lo, hi, data in ((pos, run.start(), False), (run.start(), run.end(), True)):
                for o in range(lo * ps, hi * ps, step):
                    n = min(step, hi * ps - o)
                    h.update(self.view[o : o + n] if data else zero[:n])
            pos = run.end()
        for o in range(pos * ps, self.used_length, step):
            h.update(zero[: min(step, self.used_length - o)])
        return h.hexdigest()

    def close(self) -> None:
        self.words.release()
        self.view.release()
        try:
            self._mm.close()
        except BufferError:  # a view still exported somewhere: let GC release it
            pass

    def __repr__(self) -> str:
        where = self.path or "anonymous"
        return f"RAMBlock({self.name!r}, {self.used_length}, {where})"


def dirty_runs(bitmap: bytes | bytearray) -> Iterator[tuple[int, int]]:
    """``(first_page, page_count)`` for each run of dirty pages in a taken bitmap."""
    for m in _DIRTY_RUN.finditer(bitmap):
        yield m.start(), m.end() - m.start()


#: Largest RAM block accepted (2^52 bytes: x86-64's physical address space; QEMU refuses more).
MAX_BLOCK_BYTES = 1 << 52


def _check_size(name: str, size: int, page_size: int) -> None:
    if not isinstance(size, int) or size <= 0 or size % page_size:
        raise ParameterError(
            f"RAM block {name!r}: size {size} must be a positive multiple of {page_size} bytes"
        )
    if size > MAX_BLOCK_BYTES:
        raise ParameterError(
            f"RAM block {name!r}: size {size} bytes is above the {MAX_BLOCK_BYTES >> 40} TiB "
            "a guest can address"
        )


def parse_ramblock_file(text: str) -> tuple[str, str]:
    """``NAME=FILE`` (``--add-ramblock``): another RAM block named NAME whose RAM is in FILE.
    Split at the first ``=``: QEMU's block names hold ``:`` and ``/``
    (``0000:00:02.0/vga.vram``), never ``=``."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ParameterError(
            f"--add-ramblock {text!r}: expected NAME=FILE, e.g. pc.bios=/dev/shm/bios.img")
    if len(name.encode()) > 255:
        raise ParameterError(f"--add-ramblock {text!r}: a RAM block name has at most 255 bytes")
    return name, path


def _image_error(path: str, what: str, exc: BaseException) -> ParameterError:
    """A clear ParameterError for an OS error on a guest image file (no traceback)."""
    why = getattr(exc, "strerror", None) or str(exc)
    hint = ""
    errno_ = getattr(exc, "errno", None)
    if errno_ == errno.ENOENT:
        hint = " (does its directory exist?)"
    elif errno_ in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = " (not writable here: pick a file you may write, e.g. under /dev/shm)"
    elif errno_ in (errno.EFBIG, errno.ENOSPC) or isinstance(exc, OverflowError):
        hint = " (the file system cannot hold a file this large: lower --guest-size)"
    return ParameterError(f"guest image {path}: cannot {what}: {why}{hint}")


@dataclass(frozen=True)
class GuestDigest:
    """Digests of a guest: per block and over all blocks in order (name, length, bytes)."""

    algorithm: str
    blocks: dict[str, str]
    whole: str


class GuestMemory:
    """The RAM blocks of one guest, in QEMU's order (the order of the migration block list)."""

    def __init__(self, blocks: list[RAMBlock] | None = None) -> None:
        self.blocks: list[RAMBlock] = []
        self._by_name: dict[str, RAMBlock] = {}
        for b in blocks or []:
            self.add(b)

    # ------------------------------------------------------------------ construction
    @classmethod
    def anonymous(cls, size: int, name: str = DEFAULT_RAMBLOCK) -> GuestMemory:
        return cls([RAMBlock.anonymous(name, size)])

    @classmethod
    def from_image(
        cls, path: str | os.PathLike[str], size: int | None = None, *,
        name: str = DEFAULT_RAMBLOCK, mode: str = "r",
    ) -> GuestMemory:
        return cls([RAMBlock.from_file(name, path, size, mode=mode)])

    def add(self, block: RAMBlock) -> RAMBlock:
        if block.name in self._by_name:
            raise ParameterError(f"duplicate RAM block name {block.name!r}")
        self.blocks.append(block)
        self._by_name[block.name] = block
        return block

    # ------------------------------------------------------------------ queries
    def block(self, name: str) -> RAMBlock | None:
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def total_bytes(self) -> int:
        return sum(b.used_length for b in self.blocks)

    @property
    def total_pages(self) -> int:
        return sum(b.pages for b in self.blocks)

    def block_list(self) -> list[tuple[str, int]]:
        """``[(idstr, used_length)]`` as sent in the RAM section's MEM_SIZE record."""
        return [(b.name, b.used_length) for b in self.blocks]

    def mark_all_dirty(self) -> None:
        for b in self.blocks:
            b.mark_all_dirty()

    def dirty_pages(self) -> int:
        return sum(b.dirty_count() for b in self.blocks)

    def digest(self, algorithm: str = "sha256") -> GuestDigest:
        per = {b.name: b.digest(algorithm) for b in self.blocks}
        h = hashlib.new(algorithm)
        for b in self.blocks:
            h.update(len(b.idstr).to_bytes(1, "big") + b.idstr)
            h.update(b.used_length.to_bytes(8, "big"))
            h.update(bytes.fromhex(per[b.name]))
        return GuestDigest(algorithm, per, h.hexdigest())

    def same_content(self, other: GuestMemory, blocks: list[str] | None = None) -> bool:
        """Byte-for-byte comparison (memcmp) of the named blocks (default: all of ours)."""
        names = blocks if blocks is not None else [b.name for b in self.blocks]
        step = 1 << 20
        for name in names:
            a, b = self.block(name), other.block(name)
            if a is None or b is None or a.used_length != b.used_length:
                return False
            for o in range(0, a.used_length, step):
                if a.view[o : o + step].tobytes() != b.view[o : o + step].tobytes():
                    return False
        return True

    def close(self) -> None:
        for b in self.blocks:
            b.close()


def file_data_map(fd: int, size: int, page_size: int = TARGET_PAGE_SIZE) -> bytearray | None:
    """One byte per page of the first ``size`` bytes of the open file ``fd``: 1 where the
    page overlaps data, 0 where it lies in a hole (SEEK_DATA/SEEK_HOLE); None when the file
    system cannot tell."""
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        return None
    pages = size // page_size
    m = bytearray(pages)
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, seek_data)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, seek_hole), size)
            first, last = start // page_size, -(-end // page_size)
            m[first:last] = b"\x01" * (last - first)
            pos = end
    except OSError:
        return None
    return m


def write_block(block: RAMBlock, path: str | os.PathLike[str]) -> None:
    """Write ``block``'s bytes to ``path`` (created or replaced); runs of zeros become holes,
    so a sparse guest stays sparse."""
    step = 1 << 20
    zero = bytes(step)
    v = block.view
    try:
        with open(path, "wb") as f:
            for o in range(0, block.used_length, step):
                chunk = v[o : o + step].tobytes()
                if chunk == zero[: len(chunk)]:
                    f.seek(len(chunk), os.SEEK_CUR)
                else:
                    f.write(chunk)
            f.truncate(block.used_length)
    except OSError as exc:
        raise _image_error(os.fspath(path), "write the final RAM to it", exc) from None


# ---------------------------------------------------------------------- deterministic filler
#: What :func:`fill_stale` writes: no page of it is zero, and it is unlike any corpus page.
STALE_BYTE = 0xA5


def fill_stale(block: RAMBlock) -> None:
    """Fill ``block`` with non-zero stale bytes (a reused destination's leftover RAM)."""
    chunk = bytes([STALE_BYTE]) * min(block.used_length, 1 << 20)
    for off in range(0, block.used_length, len(chunk)):
        n = min(len(chunk), block.used_length - off)
        block.view[off : off + n] = chunk[:n]


def fill_deterministic(block: RAMBlock, seed: int = 0) -> None:
    """Fill ``block`` with deterministic, Silesia-like mixed content (fallback filler).

    Per 4 KiB page: about 20% zero pages, 45% text-like, 25% binary with structure, 10%
    random -- compressible about 2-3x by zstd-1. Only used when the Silesia stand-in
    generator (``qatmig_engine.silesia``) is unavailable.
    """
    import random

    rng = random.Random(seed)
    ps = block.page_size
    words = [
        bytes(rng.choice(b"etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(2, 9)))
        for _ in range(600)
    ]
    # A 4 MiB pattern of pages, tiled over the block with a per-page tag so pages differ.
    pat_pages = 1024
    pattern = bytearray(pat_pages * ps)
    for i in range(pat_pages):
        kind = rng.random()
        o = i * ps
        if kind < 0.20:
            continue
        if kind < 0.65:
            text = bytearray()
            while len(text) < ps:
                text += rng.choice(words) + (b"\n" if rng.random() < 0.1 else b" ")
            pattern[o : o + ps] = text[:ps]
        elif kind < 0.90:
            rec = rng.randbytes(32) + bytes(32)
            pattern[o : o + ps] = (rec * (ps // 64))[:ps]
        else:
            pattern[o : o + ps] = rng.randbytes(ps)
    zero = bytes(ps)
    nonzero = [p for p in range(0, len(pattern), ps) if pattern[p : p + ps] != zero]
    view = block.view
    n = block.used_length
    step = len(pattern)
    for base in range(0, n, step):
        chunk = min(step, n - base)
        view[base : base + chunk] = pattern[:chunk]
        # Tag each non-zero page with its page number so no two pages are identical.
        for p in nonzero:
            if p >= chunk:
                break
            view[base + p : base + p + 8] = ((base + p) // ps).to_bytes(8, "little")
