"""Deterministic mixed-content RAM images for the QEMU interop tests and golden captures.

One content kind per 4 KiB page, chosen by a seeded PRNG: zero (~20 %), text (~40 %),
random (~30 %) and sparse (zero except a 16-byte tag, ~10 %) — the mix used in the QEMU 7.2
observations. ``build_image(size, seed)`` is the recipe named in the golden manifest
(``RECIPE``): the same (size, seed, mix) gives the same bytes on every machine and Python >= 3.9.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from collections.abc import Iterator

from qatmig_engine.constants import TARGET_PAGE_SIZE
from qatmig_engine.errors import ParameterError

RECIPE = "qatmig_engine.qemu.image.build_image v1"

_WORDS = (
    "migration multifd channel packet page ramblock offset header flags sync zero normal "
    "compression zlib zstd deflate stream frame window destination source guest memory "
    "the of and to in is that for it with as was on be by this are from at or an have not "
    "QEMU virtual machine device state section footer vmstate bitmap dirty iteration round "
    "0x11223344 QEVM pc.ram pc.bios pc.rom 4096 131072 1344 512KiB"
).split()

_POOL_SIZE = 1 << 20
_KINDS = ("zero", "text", "random", "sparse")
_WEIGHTS = (20, 40, 30, 10)


def _text_pool(rng: random.Random) -> bytes:
    out = []
    n = 0
    while n < _POOL_SIZE + TARGET_PAGE_SIZE:
        line = " ".join(rng.choices(_WORDS, k=rng.randint(4, 14))) + ".\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()


#: Default mix (percent of pages): zero, text, random, sparse.
DEFAULT_MIX: tuple[int, int, int, int] = _WEIGHTS


def _page_kinds(size: int, seed: int, mix: tuple[int, ...]) -> list[str]:
    rng = random.Random(seed)
    return rng.choices(_KINDS, weights=mix, k=size // TARGET_PAGE_SIZE)


def _check_mix(mix: tuple[int, ...]) -> tuple[int, ...]:
    mix = tuple(mix)
    if len(mix) != 4 or any(w < 0 for w in mix) or not sum(mix):
        raise ParameterError(f"mix {mix} must be 4 non-negative weights (zero, text, random, "
                             "sparse) with a positive sum")
    return mix


#: Images are built in blocks of this size, block ``b`` from seed ``seed * 65537 + b``, so a
#: large image can be streamed to a file without holding it in memory.
BLOCK_SIZE = 64 << 20


def _check_size(size: int) -> None:
    if size <= 0 or size % TARGET_PAGE_SIZE:
        raise ParameterError(f"image size {size} must be a positive multiple of 4096")


def iter_image(
    size: int, seed: int = 1, mix: tuple[int, ...] = DEFAULT_MIX
) -> Iterator[bytearray]:
    """The image in blocks of at most :data:`BLOCK_SIZE` bytes."""
    _check_size(size)
    mix = _check_mix(mix)
    done = block = 0
    while done < size:
        n = min(BLOCK_SIZE, size - done)
        yield _build_block(n, seed * 65_537 + block, mix)
        done += n
        block += 1


def build_image(size: int, seed: int = 1, mix: tuple[int, ...] = DEFAULT_MIX) -> bytearray:
    """``size`` bytes (a multiple of 4 KiB) of mixed page content, fully determined by seed.

    ``mix`` weighs the page kinds (zero, text, random, sparse).
    """
    _check_size(size)
    mix = _check_mix(mix)
    if size <= BLOCK_SIZE:
        return _build_block(size, seed * 65_537, mix)
    out = bytearray()
    for part in iter_image(size, seed, mix):
        out += part
    return out


def _build_block(size: int, seed: int, mix: tuple[int, ...]) -> bytearray:
    ps = TARGET_PAGE_SIZE
    kinds = _page_kinds(size, seed, mix)
    rng = random.Random(seed * 1_000_003 + 7)
    pool = _text_pool(rng)
    img = bytearray(size)
    tag = hashlib.sha256(f"qatmig-{seed}".encode()).digest()[:8]
    for i, kind in enumerate(kinds):
        off = i * ps
        if kind == "text":
            start = rng.randrange(_POOL_SIZE)
            img[off : off + ps] = pool[start : start + ps]
        elif kind == "random":
            img[off : off + ps] = rng.randbytes(ps)
        elif kind == "sparse":
            pos = rng.randrange(0, ps - 16, 16)
            img[off + pos : off + pos + 16] = tag + struct.pack(">Q", i)
    return img


def write_image(
    path: str | os.PathLike[str], size: int, seed: int = 1, mix: tuple[int, ...] = DEFAULT_MIX
) -> str:
    """Write ``build_image(size, seed, mix)`` to ``path``; return its sha256 hex digest."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for part in iter_image(size, seed, mix):
            f.write(part)
            h.update(part)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
