"""The pieces of a certification: checks, their statuses and levels, and the verdict rules.

Standard library only. A :class:`Check` is one line of the report (a host check, a conformance
test, a benchmark case, a baseline comparison); the verdict is derived from the checks alone,
so the JSON, the Markdown and the JUnit files can never disagree about it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = "1.0"
REPORT_KIND = "qatmig-certify-report"

PASS, FAIL, WARN, SKIP, ERROR = "PASS", "FAIL", "WARN", "SKIP", "ERROR"
STATUSES = (PASS, FAIL, WARN, SKIP, ERROR)
REQUIRED, RECOMMENDED, INFORMATIONAL = "required", "recommended", "informational"
LEVELS = (REQUIRED, RECOMMENDED, INFORMATIONAL)
STAGES = ("host", "conformance", "benchmark", "compare", "run")

CERTIFIED = "CERTIFIED"
CERTIFIED_WITH_WARNINGS = "CERTIFIED_WITH_WARNINGS"
NOT_CERTIFIED = "NOT_CERTIFIED"
INCOMPLETE = "INCOMPLETE"
VERDICTS = (CERTIFIED, CERTIFIED_WITH_WARNINGS, NOT_CERTIFIED, INCOMPLETE)

#: Exit status of ``qatmig certify`` per verdict: 0 certified, 1 not, 2 could not run.
EXIT_CODES = {CERTIFIED: 0, CERTIFIED_WITH_WARNINGS: 0, NOT_CERTIFIED: 1, INCOMPLETE: 2}


@dataclass
class Check:
    """One finding. ``status`` ERROR means *could not run* (the tool, not the host, failed);
    ``fix`` says what to do when the status is FAIL/WARN/ERROR."""

    id: str
    title: str
    stage: str
    level: str
    status: str
    message: str = ""
    fix: str = ""
    code: str = ""  # QATMIG_E_* for failures people search for
    evidence: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.id}: status {self.status!r} not in {STATUSES}")
        if self.level not in LEVELS:
            raise ValueError(f"check {self.id}: level {self.level!r} not in {LEVELS}")
        if self.stage not in STAGES:
            raise ValueError(f"check {self.id}: stage {self.stage!r} not in {STAGES}")

    @property
    def counts(self) -> bool:
        """Does this check take part in the verdict? (informational checks never do)"""
        return self.level != INFORMATIONAL

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def verdict_of(checks: Iterable[Check]) -> str:
    """FAIL of a counted check -> NOT_CERTIFIED; else ERROR (or a SKIP of a *required*
    check) -> INCOMPLETE; else WARN -> CERTIFIED_WITH_WARNINGS; else CERTIFIED."""
    counted = [c for c in checks if c.counts]
    if any(c.status == FAIL for c in counted):
        return NOT_CERTIFIED
    if any(c.status == ERROR or (c.status == SKIP and c.level == REQUIRED) for c in counted):
        return INCOMPLETE
    if any(c.status == WARN for c in counted):
        return CERTIFIED_WITH_WARNINGS
    return CERTIFIED


def combine_verdicts(verdicts: Iterable[str]) -> str:
    """A fleet's verdict: a host that is not certified outweighs one that could not run."""
    vs = list(verdicts)
    if not vs:
        return INCOMPLETE
    for v in (NOT_CERTIFIED, INCOMPLETE, CERTIFIED_WITH_WARNINGS):
        if v in vs:
            return v
    return CERTIFIED


def tally(checks: Iterable[Check]) -> dict[str, int]:
    out = dict.fromkeys(STATUSES, 0)
    for c in checks:
        out[c.status] += 1
    return out


def problems(checks: Iterable[Check]) -> list[Check]:
    """The checks a person must look at, worst first: counted FAIL, ERROR, required SKIP, WARN."""
    rank = {FAIL: 0, ERROR: 1, SKIP: 2, WARN: 3}
    out = [
        c for c in checks
        if c.counts and (c.status in (FAIL, ERROR, WARN) or
                         (c.status == SKIP and c.level == REQUIRED))
    ]
    return sorted(out, key=lambda c: rank[c.status])
