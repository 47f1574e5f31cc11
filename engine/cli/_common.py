"""Helpers shared by the subcommands: sizes, --json, tables, progress bars."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from ..errors import ParameterError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"256M"`` -> 268435456. Suffixes are binary (K, M, G, T), as QEMU's ``-m``."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ParameterError(f"cannot parse size '{text}' (examples: 4096, 256M, 1G)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value != int(value):
        raise ParameterError(f"size '{text}' is not a whole number of bytes")
    return int(value)


def size_arg(text: str) -> int:
    """argparse ``type=`` for sizes."""
    try:
        return parse_size(text)
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def timeout_arg(text: str) -> float:
    """argparse ``type=`` for network timeouts: finite seconds above 0."""
    from ..transport import check_timeout

    try:
        return check_timeout(text)
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def print_json(obj: Any, out: TextIO | None = None) -> None:
    """Pretty JSON on ``out`` (sys.stdout looked up at call time, so capture works)."""
    out = out or sys.stdout
    json.dump(obj, out, indent=2, sort_keys=False, default=str)
    out.write("\n")


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Plain aligned text table: numeric columns (and their headers) right-aligned, a missing
    value shown as ``-`` in its column's alignment."""
    rows = [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def is_num(s: str) -> bool:
        return bool(re.fullmatch(r"[-+]?[\d,._]+[%x×]?", s))

    numeric = [
        any(is_num(r[i]) for r in rows if i < len(r))
        and all(is_num(r[i]) or r[i] in ("-", "") for r in rows if i < len(r))
        for i in range(len(widths))
    ]

    def fmt(r: Sequence[str]) -> str:
        cells = zip(r, widths, numeric, strict=False)
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in cells)

    lines = [fmt(list(headers)), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def progress(total: int | None, desc: str, *, quiet: bool = False, unit: str = "B") -> Any:
    """A tqdm bar on stderr, disabled when ``quiet`` or stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        leave=False,
    )
