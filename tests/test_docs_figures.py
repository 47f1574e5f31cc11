"""Figures in docs are stamped blocks written by the script that measured them, and a block
whose measured code changed since must say so (``qatmig_engine.docstamp``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from qatmig_engine import docstamp

ROOT = docstamp.repo_root()


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "codec.py").write_text("LEVEL = 1\n")
    (tmp_path / "code" / "__pycache__").mkdir()
    (tmp_path / "code" / "__pycache__" / "codec.pyc").write_bytes(b"cache")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "perf.md").write_text("# Perf\n\n## Codecs\n\nintro\n")
    return tmp_path


def test_block_is_written_under_its_heading_and_replaced_in_place(tmp_path):
    root = _tree(tmp_path)
    doc = root / "docs" / "perf.md"
    docstamp.write_block(doc, "codecs", "| a | b |\n|---|---|\n| 1 | 2 |",
                         script="bench.py --update-docs",
                         code=["code"], root=root, heading="## Codecs")
    docstamp.write_block(doc, "codecs", "| a | b |\n|---|---|\n| 3 | 4 |",
                         script="bench.py --update-docs",
                         code=["code"], root=root, heading="## Codecs")
    text = doc.read_text()
    assert text.count("<!-- figures id=codecs") == 1 and "| 3 | 4 |" in text and "| 1 |" not in text
    assert text.index("## Codecs") < text.index("<!-- figures") < text.index("intro")
    (b,) = docstamp.read_blocks(doc)
    assert b.script == "bench.py --update-docs" and b.code == ("code",)
    assert b.code_sha == docstamp.code_digest(["code"], root) and not b.stale
    assert b.body.endswith(f"at commit `{b.commit}` ({b.measured[:10]} {b.measured[11:16]} UTC).*")
    assert docstamp.check([doc], root) == []


def test_changed_code_fails_the_check_until_marked_stale(tmp_path):
    root = _tree(tmp_path)
    doc = root / "docs" / "perf.md"
    docstamp.write_block(doc, "codecs", "| x |\n|---|\n| 9 |", script="bench.py --update-docs",
                         code=["code"], root=root)
    (root / "code" / "__pycache__" / "codec.pyc").write_bytes(b"other cache")  # not code
    assert docstamp.check([doc], root) == []
    (root / "code" / "codec.py").write_text("LEVEL = 2\n")
    (problem,) = docstamp.check([doc], root)
    assert "figures 'codecs' were measured at commit" in problem
    assert "re-run `bench.py --update-docs`" in problem
    (marked,) = docstamp.mark_stale([doc], root)
    assert marked.id == "codecs"
    assert docstamp.check([doc], root) == []
    text = doc.read_text()
    assert f"*Measured at commit `{marked.commit}`" in text and "code since changed" in text
    assert "| 9 |" in text and text.count("*Measured at") == 1 and "*Written by" not in text
    # Re-measuring replaces the stale block with a current one.
    docstamp.write_block(doc, "codecs", "| x |\n|---|\n| 10 |", script="bench.py --update-docs",
                         code=["code"], root=root)
    (b,) = docstamp.read_blocks(doc)
    assert not b.stale and "code since changed" not in doc.read_text()


def test_a_block_without_its_end_marker_is_an_error(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("<!-- figures id=x script=\"s\" code=engine commit=a code-sha=b -->\n| 1 |\n")
    with pytest.raises(ValueError, match="has no <!-- /figures id=x -->"):
        docstamp.read_blocks(doc)


def test_measured_code_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="measured code path 'nope'"):
        docstamp.code_digest(["nope"], tmp_path)


def test_every_docs_block_describes_the_code_it_names():
    """Fails when code measured by a docs table changed after the table was written, unless
    the table says "measured at <commit>, code since changed" (docstamp mark-stale)."""
    problems = docstamp.check(docstamp.docs_files(ROOT), ROOT)
    assert problems == [], "\n".join(problems)


def test_every_stamped_block_names_an_existing_script():
    for doc in docstamp.docs_files(ROOT):
        for b in docstamp.read_blocks(doc):
            script = b.script.split()[0]
            assert script == "qatmig" or (ROOT / script).is_file(), (doc, b.id, b.script)


def _table_lines_outside_blocks(doc: Path) -> list[str]:
    text = doc.read_text()
    for b in sorted(docstamp.read_blocks(doc), key=lambda b: b.start, reverse=True):
        text = text[:b.start] + text[b.end:]
    return [ln for ln in text.split("\n") if re.match(r"\|.*\d.*\|$", ln)
            and not re.match(r"\|[-| :]+\|$", ln)]


def test_performance_figures_all_come_from_stamped_blocks():
    loose = _table_lines_outside_blocks(ROOT / "docs" / "performance.md")
    assert loose == [], "tables in docs/performance.md not written by a benchmark:\n" + \
        "\n".join(loose)


def test_readme_claims_name_tests_that_exist():
    """The README's "checked against" table names the tests that back each claim."""
    text = (ROOT / "README.md").read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)`", text)
    assert len(named) >= 3
    missing = [n for n in named if not (ROOT / n).is_file()]
    assert missing == []


#: Benchmark scripts; ``_name.py`` files are modules they share, not benchmarks.
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_every_benchmark_takes_update_docs(script: Path) -> None:
    """One flag name everywhere: each benchmark's --help offers --update-docs."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    # An option line of the help (not a mention in the description).
    assert re.search(r"^\s+--update-docs\b", r.stdout, flags=re.M), r.stdout


def test_the_makefile_passes_the_same_flag_to_every_benchmark() -> None:
    text = (ROOT / "Makefile").read_text()
    assert "UPDATE_DOCS_FLAG := $(if $(UPDATE_DOCS),--update-docs,)" in text
    runs = [ln for ln in text.splitlines() if "benchmarks/" in ln and ln.startswith("\t")]
    assert runs
    # Every benchmark the Makefile runs can be told to update the docs, with that flag only.
    named = set(re.findall(r"benchmarks/(\w+\.py)", " ".join(runs)))
    flagged = {m for ln in runs if "$(UPDATE_DOCS_FLAG)" in ln
               for m in re.findall(r"benchmarks/(\w+\.py)", ln)}
    assert named == flagged
    assert not re.search(r"--(update-doc|write-docs)\b", text)
