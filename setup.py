"""Only what pyproject.toml cannot say statically: the package list, found, not typed.

``fixtures/`` is installed as the data package ``qatmig_fixtures``; setuptools warns about every
data sub-folder whose name could be imported unless it is listed as a package, and new fixture
folders keep arriving, so they are found with setuptools' own rule (the leading run of
identifier-named folders); code packages are the folders with an ``__init__.py``.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
#: import name -> folder (the same mapping as [tool.setuptools.package-dir] in pyproject.toml).
CODE_FOLDERS = {
    "qatmig_engine": "engine",
    "pytest_qatmig": "pytest_qatmig",
    "qatmig_conformance": "conformance",
}


def code_packages() -> list[str]:
    found = []
    for name, folder in CODE_FOLDERS.items():
        for init in (HERE / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(HERE / folder).parts
            found.append(".".join([name, *rel]))
    return sorted(found)


def fixture_packages(root: Path = HERE / "fixtures") -> list[str]:
    found = {"qatmig_fixtures"}
    for folder in root.rglob("*"):
        if not folder.is_dir():
            continue
        parts: list[str] = []
        for part in folder.relative_to(root).parts:
            if not part.isidentifier():
                break
            parts.append(part)
        if parts:
            found.add(".".join(["qatmig_fixtures", *parts]))
    return sorted(found)


setup(packages=code_packages() + fixture_packages())
