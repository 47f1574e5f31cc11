"""Every command block in README.md and docs/*.md runs as written, in order, in a fresh folder.

Conventions a doc follows (checked here):

* every fence names its language; ```` ```sh ```` and ```` ```python ```` blocks are run, data
  blocks (``json``, ``yaml``, ``toml``, ``text``, ``qmp``, ``console``) are not;
* a block that cannot run here says why on the line before it:
  ``<!-- not run: REASON -->`` (e.g. it needs QAT hardware, or it *is* the test command);
* a block needing a real QEMU says ``<!-- needs: qemu -->``, one needing QEMU 10.0
  ``<!-- needs: qemu-10.0 -->``: they run when that QEMU is present and skip (saying how to
  get it) when not.

A doc's blocks share one fresh working folder and run in order, as a reader would type them.
``docs/plugin.md``'s python blocks are pytest modules: ``test_plugin_docs.py`` runs those.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGS = {"sh", "python"}
DATA_LANGS = {"json", "yaml", "toml", "text", "qmp", "console", "ini", "csv", "xml"}
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
NOTE = re.compile(r"<!--\s*(not run|needs):\s*(.*?)\s*-->\s*$")
#: per document: blocks of one doc together must finish within this (a hang fails, never waits).
DOC_TIMEOUT_S = 600


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    code: str
    not_run: str | None = None
    needs: str | None = None

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        b = Block(doc, line, m.group(1), m.group(2))
        note = NOTE.search(before)
        if note and note.group(1) == "not run":
            b.not_run = note.group(2)
        elif note:
            b.needs = note.group(2)
        out.append(b)
    return out


ALL = [b for d in DOCS for b in blocks(d)]


def test_every_fence_names_its_language() -> None:
    bad = [b.where for b in ALL if b.lang not in RUN_LANGS | DATA_LANGS]
    assert not bad, (
        f"fences without a known language at {bad}: label them sh/python (run by this test) "
        f"or one of {sorted(DATA_LANGS)} (not run)"
    )


def test_docs_have_runnable_blocks() -> None:
    runnable = [b for b in ALL if b.lang in RUN_LANGS and not b.not_run]
    assert len(runnable) >= 10, "the docs lost their examples"


def _qemu10() -> str | None:
    try:
        from qatmig_engine.qemu import fetch  # type: ignore[attr-defined]
    except ImportError:
        return None
    finder = getattr(fetch, "find_qemu10", None)
    found = finder() if finder is not None else None
    return str(found) if found else None


def _unmet(need: str) -> str | None:
    if need == "qemu" and not shutil.which("qemu-system-x86_64"):
        return "needs qemu-system-x86_64 (apt-get install qemu-system-x86, or `make system-deps`)"
    if need == "qemu-10.0" and _qemu10() is None:
        return "needs QEMU 10.0 unpacked from bookworm-backports (`make system-deps` as root)"
    if need not in ("qemu", "qemu-10.0"):
        return f"unknown need {need!r}"
    return None


def _run(block: Block, cwd: Path, env: dict[str, str], timeout: float) -> None:
    if block.lang == "sh":
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        argv = [sys.executable, "-c", block.code]
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{block.where}: did not finish in {timeout:.0f} s\n{out[-3000:]}")
    finally:
        # Background jobs a block started (`listen ... &`) must not outlive it.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.returncode != 0:
        pytest.fail(f"{block.where}: exit status {proc.returncode}\n{block.code}\n---\n"
                    f"{out[-4000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_doc_runs_as_written(doc: Path, tmp_path: Path) -> None:
    todo = [b for b in blocks(doc) if b.lang in RUN_LANGS]
    if doc.name == "plugin.md":
        todo = [b for b in todo if b.lang != "python"]  # pytest modules: test_plugin_docs.py
    if not todo:
        pytest.skip(f"{doc.name} has no command blocks")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["QATMIG_DOCS_RUN"] = "1"
    env.pop("PYTEST_XDIST_WORKER", None)
    skipped = []
    for b in todo:
        if b.not_run:
            skipped.append(f"{b.where}: {b.not_run}")
            continue
        unmet = _unmet(b.needs) if b.needs else None
        if unmet:
            skipped.append(f"{b.where}: {unmet}")
            continue
        _run(b, tmp_path, env, DOC_TIMEOUT_S)
    if skipped and len(skipped) == len(todo):
        pytest.skip("; ".join(skipped))
