"""Guests at the edges: RAM images that exercise what the default Silesia guest does not.

The default guest (``silesia_guest_memory``) has no zero pages, is a multiple of a multifd packet
(512 KiB), below 4 GiB, and static. These fixtures add, with names saying what they are:

* ``guest_with_zero_pages`` -- the stand-in corpus with a realistic zero-page share (25 %), to
  be migrated into a destination whose RAM is *not* zero beforehand (``destination_fill``);
* ``guest_small_text`` -- 1 MiB of English-like text, for level comparisons;
* ``guest_odd_size`` -- 16 MiB + 4 KiB: the last multifd packet of the block holds one page;
* ``guest_mostly_zero`` -- a sparse 64 MiB guest, 97 % zero pages (statistics where the main
  channel carries most bytes: qemu-7.2 ZERO records);
* ``guest_above_4g`` -- a sparse 4 GiB + 2 MiB guest with 1 MiB of data at the start and
  1 MiB right above 4 GiB (page offsets that need more than 32 bits). A few MiB on disk; an
  implementation that keeps holes sparse (and sends zero pages as 8-byte offsets, 9.x
  zero-page-detection multifd) migrates it in about a second.
* ``guest_qemu_like_ramblocks`` -- seven RAM blocks with the names and sizes a QEMU 7.2 ``pc``
  machine with standard VGA migrates: ``pc.ram`` (the zero-page guest above), the VGA's 16 MiB
  ``0000:00:02.0/vga.vram``, ``/rom@etc/acpi/tables``, ``pc.bios``, ``pc.rom``,
  ``/rom@etc/table-loader`` and ``/rom@etc/acpi/rsdp``, each with content of its kind (a
  framebuffer, ACPI tables, firmware code, an option ROM); every block but ``pc.ram`` is
  smaller than a multifd packet or not a multiple of one, and names carry ``/``, ``:`` and
  ``@``.

Images are built once per session in the session's temporary directory (the stand-in one in the
Silesia cache); the engine is imported inside the fixtures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .fixtures import GuestImage
from .roles import RAMBlockFile

PAGE = 4096
ODD_SIZE = (16 << 20) + PAGE
ABOVE_4G_SIZE = (4 << 30) + (2 << 20)
#: Non-zero pages of ``guest_above_4g``: 256 at the start, 256 from 4 GiB on.
ABOVE_4G_DATA_PAGES = 512
#: Share of zero pages in ``guest_with_zero_pages`` (Silesia-like guests carry a good part).
ZERO_SHARE = 0.25
#: The blocks after ``pc.ram`` of ``guest_qemu_like_ramblocks``, in QEMU's order: name and
#: used_length (a QEMU 7.2 ``pc`` machine, fixtures/golden/qemu-7.2/manifest.json, plus the
#: standard VGA's default 16 MiB of video memory).
QEMU_LIKE_RAMBLOCKS = (
    ("0000:00:02.0/vga.vram", 16 << 20),
    ("/rom@etc/acpi/tables", 128 << 10),
    ("pc.bios", 256 << 10),
    ("pc.rom", 128 << 10),
    ("/rom@etc/table-loader", PAGE),
    ("/rom@etc/acpi/rsdp", PAGE),
)


def _text_pages(n: int, tag: str) -> bytes:
    out = bytearray()
    for p in range(n):
        line = f"{tag} page {p:06d}: the quick brown fox jumps over the lazy dog\n".encode()
        out += (line * (PAGE // len(line) + 1))[:PAGE]
    return bytes(out)


@pytest.fixture(scope="session")
def guest_with_zero_pages() -> GuestImage:
    """16 MiB of the stand-in corpus with 25 % zero pages (``qatmig guest build --zero-ratio``)."""
    from qatmig_engine.silesia import cached_guest_image

    size = 16 << 20
    path = cached_guest_image(size, corpus="stand-in", zero_ratio=ZERO_SHARE)
    return GuestImage(path=Path(path), size=size, corpus=f"stand-in, {ZERO_SHARE:.0%} zero pages")


@pytest.fixture(scope="session")
def guest_small_text(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    """1 MiB of English-like text (words drawn from a fixed vocabulary, deterministic): every
    level compresses it, and higher levels measurably better."""
    import random

    size = 1 << 20
    rng = random.Random(1)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    vocab = ["".join(rng.choice(letters[: rng.randint(6, 26)]) for _ in range(rng.randint(2, 9)))
             for _ in range(3000)]
    words: list[str] = []
    n = 0
    while n < size:
        w = rng.choice(vocab) if rng.random() < 0.9 else rng.choice(vocab).capitalize() + ","
        words.append(w)
        n += len(w) + 1
    text = " ".join(words).encode()[:size]
    path = tmp_path_factory.mktemp("edge-guests-text") / "small-text.img"
    path.write_bytes(text)
    return GuestImage(path=path, size=size, corpus="english-like text, 1 MiB")


@pytest.fixture(scope="session")
def guest_odd_size(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    """16 MiB + 4 KiB of text pages: not a multiple of a 128-page multifd packet."""
    path = tmp_path_factory.mktemp("edge-guests") / "odd-size.img"
    with open(path, "wb") as f:
        chunk = 256  # pages per write
        for first in range(0, ODD_SIZE // PAGE, chunk):
            f.write(_text_pages(min(chunk, ODD_SIZE // PAGE - first), f"odd@{first}"))
    assert path.stat().st_size == ODD_SIZE
    return GuestImage(path=path, size=ODD_SIZE, corpus="text, 16 MiB + 4 KiB")


@pytest.fixture(scope="session")
def guest_mostly_zero(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    """Sparse 64 MiB with 1 MiB of text at the start and 1 MiB in the middle: 97 % zero pages
    (a freshly booted guest), so under qemu-7.2 most bytes are the main channel's ZERO
    records."""
    path = tmp_path_factory.mktemp("edge-guests-zero") / "mostly-zero.img"
    size = 64 << 20
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(_text_pages(256, "start"))
        f.seek(size // 2)
        f.write(_text_pages(256, "middle"))
    return GuestImage(path=path, size=size, corpus="sparse, 97 % zero pages")


@pytest.fixture(scope="session")
def guest_above_4g(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    """Sparse 4 GiB + 2 MiB: 1 MiB of data at the start, 1 MiB right above 4 GiB, holes between
    (page offsets above 2^32 on the wire)."""
    path = tmp_path_factory.mktemp("edge-guests-4g") / "above-4g.img"
    with open(path, "wb") as f:
        f.truncate(ABOVE_4G_SIZE)
        f.write(_text_pages(ABOVE_4G_DATA_PAGES // 2, "low"))
        f.seek(4 << 30)
        f.write(_text_pages(ABOVE_4G_DATA_PAGES // 2, "above 4 GiB"))
    return GuestImage(path=path, size=ABOVE_4G_SIZE, corpus="sparse, data above 4 GiB")


def _block_content(name: str, size: int) -> bytes:
    """Deterministic bytes of the kind each QEMU block holds (zeros where QEMU's are)."""
    import random

    rng = random.Random(name)
    out = bytearray(size)
    if name.endswith("vga.vram"):
        # A 1024x768 32-bit framebuffer: a gradient with a few text-like rows; the rest of
        # the video memory is zero.
        xs = bytes(x * 255 // 1023 for x in range(1024))
        fb = bytearray()
        for y in range(768):
            row = bytearray(b"\xff\xff\xff\x00" * 1024)
            if y % 64:
                row[0::4] = xs
                row[1::4] = bytes([y * 255 // 767]) * 1024
                row[2::4] = bytes((x ^ y) & 0xFF for x in range(1024))
            fb += row
        out[: len(fb)] = fb
    elif name == "/rom@etc/acpi/tables":
        tables = b"".join(sig + bytes(rng.randrange(256) for _ in range(60)) + b"BOCHS BXPC"
                          for sig in (b"DSDT", b"FACP", b"APIC", b"HPET", b"WAET") * 180)
        out[: len(tables)] = tables
    elif name == "pc.bios":
        # Firmware code: hardly compressible, and no page of it is zero.
        out[:] = rng.randbytes(size)
    elif name == "pc.rom":
        rom = b"\x55\xaa" + bytes([16]) + rng.randbytes(8 << 10)
        out[: len(rom)] = rom
    elif name == "/rom@etc/table-loader":
        cmds = b"".join(b"\x01\x00\x00\x00etc/acpi/tables" + bytes(108) for _ in range(16))
        out[: len(cmds)] = cmds
    elif name == "/rom@etc/acpi/rsdp":
        rsdp = b"RSD PTR " + rng.randbytes(1) + b"BOCHS " + bytes([0]) + rng.randbytes(4)
        out[: len(rsdp)] = rsdp
    return bytes(out)


@pytest.fixture(scope="session")
def guest_qemu_like_ramblocks(
    guest_with_zero_pages: GuestImage, tmp_path_factory: pytest.TempPathFactory
) -> GuestImage:
    """Seven RAM blocks named and sized as a QEMU 7.2 ``pc`` machine's with standard VGA:
    ``pc.ram`` (16 MiB of the stand-in corpus, 25 % zero pages) followed by
    :data:`QEMU_LIKE_RAMBLOCKS`, each with content of its kind."""
    folder = tmp_path_factory.mktemp("edge-guests-ramblocks")
    extra = []
    for i, (name, size) in enumerate(QEMU_LIKE_RAMBLOCKS):
        path = folder / f"block{i + 1}.img"
        path.write_bytes(_block_content(name, size))
        extra.append(RAMBlockFile(name=name, path=path, size=size))
    return GuestImage(path=guest_with_zero_pages.path, size=guest_with_zero_pages.size,
                      corpus=f"{len(extra) + 1} RAM blocks as QEMU's pc machine (pc.ram: "
                      f"{guest_with_zero_pages.corpus})", extra_ramblocks=tuple(extra))
