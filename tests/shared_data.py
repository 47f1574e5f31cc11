"""Where the project's shared reference data (QATzip vectors, Calgary/Canterbury) lives.

Not a fixture module: plain lookups used by several test files. Order: ``$QATMIG_SHARED``, then
``../shared`` beside the repository (how CI lays a checkout out), then ``/work/shared``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_dir(marker: str = "README.md") -> Path | None:
    """The first candidate directory that holds ``marker`` (a path relative to it), or None."""
    env = os.environ.get("QATMIG_SHARED")
    candidates = ([Path(env)] if env else []) + [REPO.parent / "shared", Path("/work/shared")]
    for cand in candidates:
        if (cand / marker).exists():
            return cand
    return None


def shared_path(*parts: str) -> Path:
    """``<shared>/<parts>``; a path that does not exist when no shared directory has it."""
    base = shared_dir(os.path.join(*parts)) or Path(
        os.environ.get("QATMIG_SHARED", REPO.parent / "shared"))
    return base.joinpath(*parts)
