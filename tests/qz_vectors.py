"""The QATzip golden vectors, available without the shared data directory.

``shared/vectors/qatzip`` holds libqatzip 1.3.1's outputs (software path, zlib 1.2.13). When that
directory is absent (a fresh CI machine), the inputs are rebuilt from the manifest's recipes and
the outputs from this project's producers; they count as the library's bytes only when their
sha256 equals the manifest's (recorded below), so a test using them still compares against
libqatzip.
"""

from __future__ import annotations

import hashlib
import struct
from functools import cache

from shared_data import shared_path

#: The shared vectors ($QATMIG_SHARED, ../shared beside the repo, or /work/shared).
VECTORS = shared_path("vectors", "qatzip")

#: sha256 of the inputs and of libqatzip's outputs, from shared/vectors/qatzip/manifest.json.
INPUT_SHA256 = {
    "mixed_128pages": "f28ac5b1108768d6f9de1a64309a1944f9290d4921beda01df0d1b7f524363d8",
    "text_1mib": "9c5ca280bac726360f8097566e34728e4518882971760a6f35e8c76afc8f4346",
}
#: file -> (input, producer, level, sha256)
OUTPUTS = {
    "mixed_128pages.gzip_ext.L1.gz": ("mixed_128pages", "sw", 1,
        "d95bf5482080622c46b9dcc152883c02bf4a312c979b509475363e1ce5277d1c"),
    "mixed_128pages.gzip_ext.L9.gz": ("mixed_128pages", "sw", 9,
        "05bee77f7a6549de1f66a9ceab760f26a7ae7612e5f590770b8caab537056ec6"),
    "text_1mib.gzip_ext.L1.gz": ("text_1mib", "sw", 1,
        "0dcf7bcf90b49867346bd9dc512a8a7eca0fa014d45dd6ee9644033f1c04129f"),
    "text_1mib.gzip_ext.L9.gz": ("text_1mib", "sw", 9,
        "2223febe4e407fc5938666b134d67bed221fa80abf6b81915eaac2a222b12e09"),
    "mixed_128pages.synthetic_hw_layout_gzip_ext.L1.gz": ("mixed_128pages", "hw", 1,
        "9e1fb7ce48f74e6b58b76ba8ed7367e9ea278644c66c24aa1b3bbe281059d18b"),
    "mixed_128pages.gzip_ext.L1.two_calls_last0_last1.gz": ("mixed_128pages", "two", 1,
        "fe611c309fa9916ce37e101020262b83cce1d6edae8d7de15c970be8a2879827"),
}
TWO_CALL_SPLIT = 300_000

_TEXT_LINE = "page {p:03d} line {k:04d}: the quick brown fox jumps over the lazy dog 0123456789\n"


def _sha256_ctr(label: bytes, n: int) -> bytes:
    out = bytearray()
    j = 0
    while len(out) < n:
        out += hashlib.sha256(label + struct.pack("<Q", j)).digest()
        j += 1
    return bytes(out[:n])


def _text_page(p: int, n: int = 4096) -> bytes:
    out = []
    size = 0
    k = 0
    while size < n:
        line = _TEXT_LINE.format(p=p, k=k)
        out.append(line)
        size += len(line)
        k += 1
    return "".join(out)[:n].encode()


@cache
def build_input(name: str) -> bytes:
    """An input rebuilt from its manifest recipe (checked against the recorded sha256)."""
    if name == "mixed_128pages":
        pages = []
        for p in range(128):
            label = f"qatzip-vectors/page/{p}".encode()
            if p % 4 == 0:
                pages.append(_sha256_ctr(label, 4096))
            elif p % 4 == 1:
                pages.append(_text_page(p))
            elif p % 4 == 2:
                pages.append(_sha256_ctr(label, 2048) + _text_page(p, 2048))
            else:
                pages.append(bytes((7 * k + p) % 251 for k in range(4096)))
        data = b"".join(pages)
    elif name == "text_1mib":
        line = "%06d Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n"
        text = "".join(line % (k % 1000) for k in range((1 << 20) // 60 + 1))
        data = text[: 1 << 20].encode()
    else:
        raise KeyError(name)
    if hashlib.sha256(data).hexdigest() != INPUT_SHA256[name]:
        raise AssertionError(f"recipe for {name} no longer matches the manifest")
    return data


def input_bytes(name: str) -> bytes:
    f = VECTORS / "inputs" / f"{name}.bin"
    return f.read_bytes() if f.exists() else build_input(name)


def produce(file: str) -> bytes:
    """Our producer's bytes for a vector file (equal to libqatzip's on zlib 1.2.13)."""
    from qatmig_engine.codecs import qzformat

    name, kind, level, _ = OUTPUTS[file]
    data = input_bytes(name)
    if kind == "hw":
        return qzformat.compress_hw_layout(data, level)
    if kind == "two":
        return qzformat.compress_two_calls(data, TWO_CALL_SPLIT, level)
    return qzformat.compress(data, level)


def library_output(file: str) -> bytes | None:
    """libqatzip's bytes for ``file``: the shared file, else our reproduction if its sha256 is
    the library's; None when neither is available (another zlib build, no shared data)."""
    f = VECTORS / "outputs" / file
    if f.exists():
        return f.read_bytes()
    out = produce(file)
    return out if hashlib.sha256(out).hexdigest() == OUTPUTS[file][3] else None
