"""Wire dialects: what differs between QEMU releases on the multifd wire.

A dialect is chosen by name (``qemu-7.2``, ``qemu-9.0``, ``qemu-9.2``, ``qemu-10.0``).
``qemu-10.0`` is ``qemu-9.2`` plus the main channel's ``MIG_CMD_SWITCHOVER_START`` command, which
10.0 sources send before the stop-and-copy stage for 10.0+ machine types; 10.x device-state
packets are recognised and refused in every dialect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .constants import (
    MULTIFD_FLAG_QATZIP,
    MULTIFD_FLAG_QPL,
    MULTIFD_FLAG_UADK,
    MULTIFD_FLAG_ZLIB,
    MULTIFD_FLAG_ZSTD,
)
from .errors import ParameterError

#: Compression method -> its flag bit in the packet header.
METHOD_FLAGS: dict[str, int] = {
    "none": 0,
    "zlib": MULTIFD_FLAG_ZLIB,
    "zstd": MULTIFD_FLAG_ZSTD,
    "qpl": MULTIFD_FLAG_QPL,
    "uadk": MULTIFD_FLAG_UADK,
    "qatzip": MULTIFD_FLAG_QATZIP,
}


@dataclass(frozen=True)
class Dialect:
    """What one QEMU release does on the multifd wire (see docs/wire-format.md)."""

    name: str
    #: MULTIFD_FLAG_COMPRESSION_MASK of that release: bits outside it are dropped by its receiver.
    compression_mask: int
    #: multifd-compression values that release knows.
    methods: tuple[str, ...]
    #: Header offset 32 is ``zero_pages`` (9.0+); before, bytes 32..63 are reserved zeros.
    has_zero_pages: bool
    #: zero-page-detection values accepted (7.2 has no parameter: it always behaves as legacy).
    zero_page_detection: tuple[str, ...]
    #: Default zero-page-detection of that release.
    default_zero_page_detection: str
    #: Sync at every RAM section EOS (<= 8.0) instead of at RAM_SAVE_FLAG_MULTIFD_FLUSH (8.1+).
    flush_after_each_section: bool
    #: The destination identifies channels by peeking the magic (8.0+) rather than by order.
    channel_by_magic: bool
    #: Error wording generation: "7" for the 7.x/9.0 texts, "new" for 9.2+.
    wording: str
    #: Machine type written in CONFIGURATION when the caller names none (that release's ``pc``).
    machine_type: str = "pc-i440fx-7.2"
    #: 10.0+: knows QEMU_VM_COMMAND MIG_CMD_SWITCHOVER_START (sent for 10.0+ machine types).
    switchover_start: bool = False

    def method_flag(self, method: str) -> int:
        """Flag bit of ``method``; ParameterError if this release does not know it."""
        if method not in self.methods:
            raise ParameterError(
                f"Parameter 'multifd-compression' does not accept value '{method}' "
                f"(not available in the {self.name} dialect; use --dialect qemu-9.2)"
            )
        return METHOD_FLAGS[method]


DIALECTS: dict[str, Dialect] = {
    "qemu-7.2": Dialect(
        name="qemu-7.2",
        compression_mask=0x0E,
        methods=("none", "zlib", "zstd"),
        has_zero_pages=False,
        zero_page_detection=("legacy", "none"),
        default_zero_page_detection="legacy",
        flush_after_each_section=True,
        channel_by_magic=False,
        wording="7",
        machine_type="pc-i440fx-7.2",
    ),
    "qemu-9.0": Dialect(
        name="qemu-9.0",
        compression_mask=0x0E,
        methods=("none", "zlib", "zstd"),
        has_zero_pages=True,
        zero_page_detection=("none", "legacy", "multifd"),
        default_zero_page_detection="multifd",
        flush_after_each_section=False,
        channel_by_magic=True,
        wording="7",
        machine_type="pc-i440fx-9.0",
    ),
    "qemu-9.2": Dialect(
        name="qemu-9.2",
        compression_mask=0x3E,
        methods=("none", "zlib", "zstd", "qatzip", "qpl", "uadk"),
        has_zero_pages=True,
        zero_page_detection=("none", "legacy", "multifd"),
        default_zero_page_detection="multifd",
        flush_after_each_section=False,
        channel_by_magic=True,
        wording="new",
        machine_type="pc-i440fx-9.2",
    ),
}

# QEMU 10.0 speaks 9.2's wire plus MIG_CMD_SWITCHOVER_START for 10.x machine types.
DIALECTS["qemu-10.0"] = replace(
    DIALECTS["qemu-9.2"], name="qemu-10.0", machine_type="pc-i440fx-10.0", switchover_start=True
)

#: The one default of every command and API (the newest QEMU supported).
DEFAULT_DIALECT = "qemu-10.0"


def get_dialect(name: str | Dialect) -> Dialect:
    """Look a dialect up by name (``qemu-7.2``, ``qemu-9.0``, ``qemu-9.2``, ``qemu-10.0``)."""
    if isinstance(name, Dialect):
        return name
    try:
        return DIALECTS[name]
    except KeyError:
        raise ParameterError(
            f"unknown dialect '{name}': choose one of {', '.join(DIALECTS)}"
        ) from None


def machine_sends_switchover_start(machine_type: str) -> bool:
    """Whether a 10.0+ QEMU with this machine type sends MIG_CMD_SWITCHOVER_START.

    QEMU's ``send-switchover-start`` migration property defaults on and ``hw_compat_9_2`` turns
    it off, so versioned machine types before 10.0 (``pc-i440fx-9.2``, ``pc-q35-7.2``) do not
    send it; 10.0+ ones and unversioned ones (``microvm``, ``none``) do.
    """
    m = re.search(r"-(\d+)\.(\d+)$", machine_type)
    if m is None:
        return True
    return (int(m.group(1)), int(m.group(2))) >= (10, 0)
