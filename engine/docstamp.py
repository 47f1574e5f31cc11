"""Figures in docs that say where they came from: stamped blocks written by the script that
measured them.

A benchmark (or ``qatmig bench``) writes its figures into a docs file as one *block*::

    <!-- figures id=codecs script="benchmarks/bench_codecs.py --update-docs"
         code=engine/codecs,engine/wire.py commit=0123456789ab code-sha=89abcdef0123
         measured=2026-11-30T14:20Z -->
    ...the tables and sentences the script produced...
    *Written by `benchmarks/bench_codecs.py --update-docs` at commit `0123456789ab` ...*
    <!-- /figures id=codecs -->

``code`` lists the files and folders whose behaviour the figures describe; ``code-sha`` is a
digest of their content when measured (:func:`code_digest`), ``commit`` the git commit they
were measured at (``+dirty`` when those files differed from it). :func:`check` (and the test
that calls it) reports every block whose code has changed since: re-run its script, or mark
it ``measured at <commit>, code since changed`` with :func:`mark_stale`
(``python -m qatmig_engine.docstamp mark-stale``). Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Files whose content defines behaviour (not caches, not editor droppings).
CODE_SUFFIXES = (".py", ".c", ".h", ".toml", ".json", ".yaml", ".yml", ".txt")
STALE_NOTE = "code since changed"

_BEGIN = re.compile(r"<!-- figures (?P<attrs>.*?)-->", re.S)
_END = "<!-- /figures id={id} -->"
_ATTR = re.compile(r'(?P<key>[\w-]+)=(?:"(?P<quoted>[^"]*)"|(?P<bare>\S+))')


def repo_root() -> Path:
    """The source tree this module lives in (``engine/`` is beside ``docs/``)."""
    return Path(__file__).resolve().parent.parent


def _code_files(root: Path, paths: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for rel in paths:
        p = root / rel
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix in CODE_SUFFIXES and "__pycache__" not in f.parts
            )
        else:
            raise FileNotFoundError(f"measured code path {rel!r} does not exist under {root}")
    return sorted(set(files))


def code_digest(paths: Iterable[str], root: Path | None = None) -> str:
    """12 hex digits of sha256 over the (relative path, content) of every code file under
    ``paths``: equal digests mean the measured code is unchanged, whatever the commits."""
    root = root or repo_root()
    h = hashlib.sha256()
    for f in _code_files(root, paths):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:12]


def code_digest_at(commit: str, paths: Iterable[str], root: Path | None = None) -> str:
    """:func:`code_digest` of ``paths`` as they were at git ``commit`` (for stamping figures
    measured before this module existed)."""
    import tarfile
    import tempfile

    root = root or repo_root()
    paths = list(paths)
    with tempfile.TemporaryDirectory(prefix="qatmig-docstamp-") as tmp:
        out = subprocess.run(["git", "-C", str(root), "archive", commit, "--", *paths],
                             capture_output=True, timeout=60, check=True).stdout
        tar = Path(tmp) / "code.tar"
        tar.write_bytes(out)
        with tarfile.open(tar) as t:
            t.extractall(tmp, filter="data")
        return code_digest(paths, Path(tmp))


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def measured_commit(paths: Iterable[str], root: Path | None = None) -> str:
    """HEAD's short hash, ``+dirty`` when ``paths`` differ from HEAD, ``unknown`` off git."""
    root = root or repo_root()
    head = _git(root, "rev-parse", "--short=12", "HEAD")
    if not head:
        return "unknown"
    dirty = _git(root, "status", "--porcelain", "--", *paths)
    return head + ("+dirty" if dirty else "")


@dataclass(frozen=True)
class FigureBlock:
    """One stamped block of a docs file."""

    doc: Path
    id: str
    script: str
    code: tuple[str, ...]
    commit: str
    code_sha: str
    measured: str
    stale: bool
    start: int  # offsets of the whole block (begin marker to end marker) in the file text
    end: int
    body: str


def _attrs(text: str) -> dict[str, str]:
    return {m["key"]: m["quoted"] if m["quoted"] is not None else m["bare"]
            for m in _ATTR.finditer(text)}


def read_blocks(doc: Path) -> list[FigureBlock]:
    """Every stamped block of ``doc``; ValueError for a block without its end marker."""
    text = doc.read_text()
    blocks = []
    for m in _BEGIN.finditer(text):
        a = _attrs(m["attrs"])
        bid = a.get("id", "")
        end_marker = _END.format(id=bid)
        end = text.find(end_marker, m.end())
        if not bid or end < 0:
            raise ValueError(f"{doc}: figures block {bid or '(no id)'} has no {end_marker}")
        blocks.append(FigureBlock(
            doc=doc, id=bid, script=a.get("script", ""),
            code=tuple(c for c in a.get("code", "").split(",") if c),
            commit=a.get("commit", ""), code_sha=a.get("code-sha", ""),
            measured=a.get("measured", ""), stale=a.get("stale") == "yes",
            start=m.start(), end=end + len(end_marker), body=text[m.end():end].strip("\n"),
        ))
    return blocks


def _footer(script: str, commit: str, measured: str, stale: bool) -> str:
    when = measured.replace("T", " ").replace("Z", " UTC")
    if stale:
        return (f"*Measured at commit `{commit}` ({when}) by `{script}`, {STALE_NOTE}: these "
                "figures describe older code. Re-run the script to refresh them.*")
    return f"*Written by `{script}` at commit `{commit}` ({when}).*"


def _strip_footer(body: str) -> str:
    lines = body.rstrip("\n").split("\n")
    if lines and (lines[-1].startswith("*Written by `") or lines[-1].startswith("*Measured at ")):
        lines = lines[:-1]
    return "\n".join(lines).rstrip("\n")


def render_block(
    block_id: str, body: str, *, script: str, code: Sequence[str], root: Path | None = None,
    commit: str | None = None, code_sha: str | None = None, measured: str | None = None,
    stale: bool = False,
) -> str:
    """The markdown of one block (markers, ``body``, footer) stamped with the commit and digest
    of ``code`` now, unless given."""
    root = root or repo_root()
    commit = commit or measured_commit(code, root)
    code_sha = code_sha or code_digest(code, root)
    measured = measured or time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    if '"' in script or "-->" in script:
        raise ValueError(f"script {script!r}: no double quotes or --> in a figures marker")
    attrs = [f"id={block_id}", f'script="{script}"',
             f"code={','.join(code)}", f"commit={commit}", f"code-sha={code_sha}",
             f"measured={measured}"]
    if stale:
        attrs.append("stale=yes")
    begin = f"<!-- figures {' '.join(attrs)} -->"
    return (f"{begin}\n{_strip_footer(body.strip())}\n\n{_footer(script, commit, measured, stale)}"
            f"\n{_END.format(id=block_id)}")


def stamp(code: Sequence[str], root: Path | None = None) -> dict[str, str]:
    """What to record when a measurement *starts*: ``commit``, ``code_sha`` and ``measured``
    (UTC). Keep it with the raw results (``--json``) so figures rendered later from them are
    stamped with the code they measured, not the code of the day they were rendered."""
    root = root or repo_root()
    return {"commit": measured_commit(code, root), "code_sha": code_digest(code, root),
            "measured": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())}


def write_block(
    doc: str | os.PathLike[str], block_id: str, body: str, *, script: str,
    code: Sequence[str], root: Path | None = None, heading: str | None = None,
    stamped: dict[str, str] | None = None,
) -> None:
    """Put ``body`` into ``doc`` as the stamped block ``block_id``: replace the block of that id,
    else insert it after the line ``heading`` (e.g. ``"## Codecs"``) when given and present,
    else append it (under ``heading``) at the end of the file. ``stamped`` is the
    :func:`stamp` taken when the measurement started (default: one taken now)."""
    doc = Path(doc)
    root = root or repo_root()
    st = stamped or stamp(code, root)
    block = render_block(block_id, body, script=script, code=code, root=root,
                         commit=st["commit"], code_sha=st["code_sha"], measured=st["measured"],
                         stale=st["code_sha"] != code_digest(code, root))
    text = doc.read_text() if doc.exists() else ""
    old = [b for b in read_blocks(doc) if b.id == block_id] if text else []
    if old:
        text = text[:old[0].start] + block + text[old[0].end:]
    elif heading and heading in text.split("\n"):
        i = text.index(heading + "\n") + len(heading) + 1 if heading + "\n" in text else len(text)
        text = text[:i] + "\n" + block + "\n" + text[i:]
    else:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        text += sep + (f"{heading}\n\n" if heading else "") + block + "\n"
    doc.write_text(text)


def stale_blocks(docs: Iterable[Path], root: Path | None = None) -> list[tuple[FigureBlock, str]]:
    """Blocks whose measured code changed since they were written and that do not say so,
    each with the current digest of that code."""
    root = root or repo_root()
    out = []
    for doc in docs:
        for b in read_blocks(doc):
            now = code_digest(b.code, root)
            if now != b.code_sha and not b.stale:
                out.append((b, now))
    return out


def check(docs: Iterable[Path], root: Path | None = None) -> list[str]:
    """One readable line per block whose figures no longer describe the code (empty = fine)."""
    root = root or repo_root()
    problems = []
    for b, now in stale_blocks(docs, root):
        problems.append(
            f"{b.doc.relative_to(root) if b.doc.is_relative_to(root) else b.doc}: figures "
            f"{b.id!r} were measured at commit {b.commit} (code {', '.join(b.code)} digest "
            f"{b.code_sha}), that code has changed since (digest {now}): re-run "
            f"`{b.script}` or `python -m qatmig_engine.docstamp mark-stale`"
        )
    return problems


def mark_stale(docs: Iterable[Path], root: Path | None = None) -> list[FigureBlock]:
    """Rewrite every stale block's marker and footer to say ``measured at <commit>, code since
    changed`` (the figures stay, labelled); returns the blocks marked."""
    root = root or repo_root()
    marked = []
    for doc in docs:
        blocks = [b for b, _ in stale_blocks([doc], root)]
        if not blocks:
            continue
        text = doc.read_text()
        for b in sorted(blocks, key=lambda b: b.start, reverse=True):
            new = render_block(b.id, b.body, script=b.script, code=b.code, root=root,
                               commit=b.commit, code_sha=b.code_sha, measured=b.measured,
                               stale=True)
            text = text[:b.start] + new + text[b.end:]
        doc.write_text(text)
        marked.extend(blocks)
    return marked


def docs_files(root: Path | None = None) -> list[Path]:
    root = root or repo_root()
    return [*sorted((root / "docs").glob("*.md")), root / "README.md"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m qatmig_engine.docstamp",
        description="Check the stamped figure blocks in docs/ against the code they measured.")
    ap.add_argument("action", choices=("check", "mark-stale", "list"))
    ap.add_argument("docs", nargs="*", type=Path, help="docs files (default docs/*.md, README)")
    args = ap.parse_args(argv)
    docs = args.docs or docs_files()
    if args.action == "list":
        for doc in docs:
            for b in read_blocks(doc):
                state = "stale" if b.stale else "current"
                print(f"{doc}: {b.id} by {b.script} at {b.commit} ({state})")
        return 0
    if args.action == "mark-stale":
        for b in mark_stale(docs):
            print(f"{b.doc}: {b.id}: marked measured at {b.commit}, {STALE_NOTE}")
        return 0
    problems = check(docs)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
