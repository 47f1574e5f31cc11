"""What the suite negotiated with both ends: the judge checks the wire against it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..constants import TARGET_PAGE_SIZE


@dataclass(frozen=True)
class Expectations:
    """The migration both ends were given; None means "learn it from the wire".

    * ``dialect`` — ``qemu-7.2`` / ``qemu-9.0`` / ``qemu-9.2`` / ``qemu-10.0``;
    * ``method`` / ``level`` — multifd-compression and its level (the level is checked where
      the stream shows it: zlib's FLEVEL bits, qatzip's XFL byte);
    * ``channels`` — multifd-channels: ids 0..n-1, each once, and exactly n connections;
    * ``uuid`` — the ``-uuid`` both ends were given (every init packet must carry it);
    * ``ramblocks`` — RAM block names and used_length the source must announce (exactly
      those, unless ``other_ramblocks``: then at least those, as a real QEMU adds its
      firmware, ROM and VGA blocks);
    * ``page_size`` — the target page size (4096 on x86);
    * ``every_page`` — every page of every block must arrive at least once (QEMU's bulk
      stage sends them all);
    * ``qatzip_hw_chunks`` — accept a qatzip payload of several gzip-ext members of 64 KiB
      (QAT hardware's layout) instead of exactly one member (the software path's).
    """

    dialect: str = "qemu-7.2"
    method: str | None = None
    level: int | None = None
    channels: int | None = None
    uuid: str | bytes | None = None
    ramblocks: Mapping[str, int] | None = None
    other_ramblocks: bool = False
    page_size: int = TARGET_PAGE_SIZE
    every_page: bool = True
    qatzip_hw_chunks: bool = False
