"""``verified`` across two processes: compare a migration's two ends after the fact.

Each end is a RAM image file (the source's ``--guest-image``, the destination's), a sha256
hex digest, or the ``--json`` output of ``qatmig send`` / ``qatmig listen`` (its
``source_digest`` / ``destination_digest``). Two images are compared page by page, so a
mismatch names the pages; anything else compares sha256 digests of the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .constants import TARGET_PAGE_SIZE
from .errors import ParameterError

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
CHUNK = 1 << 20
#: How many differing page offsets a report lists.
MAX_LISTED = 16


@dataclass
class End:
    """One side as given: an image (``path``, ``size``) or just a digest."""

    text: str
    kind: str  # image, digest, json
    sha256: str | None = None
    path: Path | None = None
    size: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"given": self.text, "kind": self.kind, "sha256": self.sha256,
                "size": self.size}


@dataclass
class Verdict:
    verified: bool
    source: End
    destination: End
    reason: str
    pages: int | None = None
    differing_pages: int | None = None
    differing_offsets: list[int] = field(default_factory=list)
    zeroed_pages: int | None = None  # differing pages that are all zero at the destination

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": self.verified, "reason": self.reason,
            "source": self.source.to_json(), "destination": self.destination.to_json(),
            "pages": self.pages, "differing_pages": self.differing_pages,
            "differing_offsets": self.differing_offsets, "zeroed_pages": self.zeroed_pages,
        }


def _digest_from_json(path: Path, role: str) -> str:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ParameterError(f"{path}: not a readable qatmig --json output ({exc})") from None
    keys = ("source_digest", "destination_digest")
    if role == "destination":
        keys = keys[::-1]
    for key in keys:
        value = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(value, str) and _HEX64.match(value):
            return value.lower()
    raise ParameterError(
        f"{path}: no source_digest or destination_digest in it (was it written with "
        "--no-digest, or by a failed migration?)"
    )


def resolve(text: str, role: str, size: int | None = None) -> End:
    """An end given on the command line: a 64-hex sha256, a ``.json`` report, or an image."""
    if _HEX64.match(text) and not os.path.exists(text):
        return End(text, "digest", sha256=text.lower())
    path = Path(text)
    if not path.is_file():
        raise ParameterError(
            f"{role} {text!r} is neither an image file, a qatmig --json report nor a sha256 "
            "hex digest (64 hex digits)"
        )
    if path.suffix == ".json":
        return End(text, "json", sha256=_digest_from_json(path, role))
    file_size = path.stat().st_size
    n = file_size if size is None else size
    if n > file_size:
        raise ParameterError(f"{role} image {path} has {file_size} bytes, fewer than --size {n}")
    return End(text, "image", path=path, size=n)


def _hash_image(end: End) -> None:
    assert end.path is not None and end.size is not None
    h = hashlib.sha256()
    left = end.size
    with open(end.path, "rb") as f:
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    end.sha256 = h.hexdigest()


def compare(source: End, destination: End, page_size: int = TARGET_PAGE_SIZE) -> Verdict:
    """Whether ``destination`` holds exactly ``source``'s bytes."""
    if source.kind == "image" and destination.kind == "image":
        return _compare_images(source, destination, page_size)
    for end in (source, destination):
        if end.kind == "image":
            _hash_image(end)
    same = source.sha256 == destination.sha256
    return Verdict(same, source, destination,
                   "sha256 digests are equal" if same else "sha256 digests differ")


def _compare_images(src: End, dst: End, page_size: int) -> Verdict:
    assert src.path is not None and dst.path is not None
    assert src.size is not None and dst.size is not None
    n = min(src.size, dst.size)
    hs, hd = hashlib.sha256(), hashlib.sha256()
    zero = bytes(page_size)
    differing, zeroed, offsets = 0, 0, []
    pos = 0
    with open(src.path, "rb") as fs, open(dst.path, "rb") as fd:
        while pos < n:
            want = min(CHUNK, n - pos)
            a, b = fs.read(want), fd.read(want)
            hs.update(a)
            hd.update(b)
            if a != b:
                for o in range(0, len(a), page_size):
                    pa, pb = a[o : o + page_size], b[o : o + page_size]
                    if pa != pb:
                        differing += 1
                        zeroed += pb == zero[: len(pb)]
                        if len(offsets) < MAX_LISTED:
                            offsets.append(pos + o)
            pos += len(a)
            if len(a) < want:
                break
    for end, h, size in ((src, hs, src.size), (dst, hd, dst.size)):
        end.sha256 = h.hexdigest() if size == n else None
    pages = (n + page_size - 1) // page_size
    if src.size != dst.size:
        reason = f"sizes differ: source {src.size} bytes, destination {dst.size} bytes"
        return Verdict(False, src, dst, reason, pages, differing, offsets, zeroed)
    if differing:
        listed = ", ".join(f"{o:#x}" for o in offsets)
        more = ", ..." if differing > len(offsets) else ""
        reason = (f"{differing} of {pages} pages differ (offsets {listed}{more})"
                  + (f"; {zeroed} of them are zero at the destination" if zeroed else ""))
        return Verdict(False, src, dst, reason, pages, differing, offsets, zeroed)
    return Verdict(True, src, dst, f"all {pages} pages are equal", pages, 0, [], 0)
