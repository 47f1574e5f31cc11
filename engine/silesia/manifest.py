"""The Silesia corpus as published: 12 files, their sizes, sha256 and published ratios.

Sizes and sha256 values are those of the canonical corpus (``silesia.zip`` from the corpus
homepage); per-file ratios are the ``gzip --best`` / ``lz4 -9`` columns of the x3-compressor
README; whole-corpus ratios are lzbench 2.0.1 on ``silesia.tar`` (211,947,520 B).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SilesiaFile:
    """One corpus member: ``name`` as in the zip, exact ``size`` and ``sha256``."""

    name: str
    size: int
    sha256: str
    kind: str
    description: str
    #: Published ``gzip --best`` ratio (the per-file target for zlib level 9).
    gzip_best: float
    #: Published ``lz4 -9`` ratio (informative only).
    lz4_9: float


SILESIA_FILES: tuple[SilesiaFile, ...] = (
    SilesiaFile("dickens", 10_192_446,
                "b24c37886142e11d0ee687db6ab06f936207aa7f2ea1fd1d9a36763c7a507e6a",
                "English text", "Collected works of Charles Dickens", 2.6461, 2.2948),
    SilesiaFile("mozilla", 51_220_480,
                "657fc3764b0c75ac9de9623125705831ebbfbe08fed248df73bc2dc66e2a963b",
                "exe", "Tarred executables of Mozilla 1.0 (Tru64 UNIX)", 2.6966, 2.3176),
    SilesiaFile("mr", 9_970_564,
                "68637ed52e3e4860174ed2dc0840ac77d5f1a60abbcb13770d5754e3774d53e6",
                "picture", "Medical magnetic resonance image (3-D head)", 2.7138, 2.3472),
    SilesiaFile("nci", 33_553_445,
                "fc63a31770947b8c2062d3b19ca94c00485a232bb91b502021948fee983e1635",
                "database", "Chemical database of structures", 11.2311, 9.1071),
    SilesiaFile("ooffice", 6_152_192,
                "e7ee013880d34dd5208283d0d3d91b07f442e067454276095ded14f322a656eb",
                "exe", "A DLL from OpenOffice.org 1.01", 1.9907, 1.7349),
    SilesiaFile("osdb", 10_085_684,
                "60f027179302ca3ad87c58ac90b6be72ec23588aaa7a3b7fe8ecc0f11def3fa3",
                "database", "Sample MySQL database (Open Source Database Benchmark)",
                2.7138, 2.5290),
    SilesiaFile("reymont", 6_627_202,
                "0eac0114a3dfe6e2ee1f345a0f79d653cb26c3bc9f0ed79238af4933422b7578",
                "Polish PDF", "Text of 'Chlopi' by W. Reymont (uncompressed PDF)",
                3.6396, 3.1345),
    SilesiaFile("samba", 21_606_400,
                "93ba07bc44d8267789c1d911992f40b089ffa2140b4a160fac11ccae9a40e7b2",
                "source", "Tarred source code of Samba 2-2.3", 3.9950, 3.5122),
    SilesiaFile("sao", 7_251_944,
                "c2d0ea2cc59d4c21b7fe43a71499342a00cbe530a1d5548770e91ecd6214adcc",
                "binary data", "The SAO star catalog", 1.3613, 1.2639),
    SilesiaFile("webster", 41_458_703,
                "6a68f69b26daf09f9dd84f7470368553194a0b294fcfa80f1604efb11143a383",
                "HTML", "The 1913 Webster Unabridged Dictionary", 3.4372, 2.9554),
    SilesiaFile("xml", 5_345_280,
                "0e82e54e695c1938e4193448022543845b33020c8be6bf3bf3ead2224903e08c",
                "XML", "Collected XML files (21 files concatenated)", 8.0709, 6.9277),
    SilesiaFile("x-ray", 8_474_240,
                "7de9fce1405dc44ae5e6813ed21cd5751e761bd4265655a005d39b9685d1c9ad",
                "picture", "X-ray picture of a child's hand", 1.4035, 1.1798),
)

SILESIA_BY_NAME: dict[str, SilesiaFile] = {f.name: f for f in SILESIA_FILES}
SILESIA_NAMES: tuple[str, ...] = tuple(f.name for f in SILESIA_FILES)
SILESIA_TOTAL_SIZE = 211_938_580

#: lzbench 2.0.1 whole-corpus ratios (``silesia.tar``), keyed by this project's codec names.
PUBLISHED_TOTALS: dict[str, float] = {"zlib-1": 2.743, "zlib-9": 3.133, "zstd-1": 2.887}

#: The codecs the stand-in is calibrated against, as used in ratio tables.
RATIO_CODECS: tuple[str, ...] = ("zlib-1", "zlib-9", "zstd-1")

#: Where the official zip can be downloaded (override with ``QATMIG_SILESIA_URL``).
SILESIA_ZIP_URL = "https://sun.aei.polsl.pl/~sdeor/corpus/silesia.zip"

assert sum(f.size for f in SILESIA_FILES) == SILESIA_TOTAL_SIZE  # table self-check, not input
