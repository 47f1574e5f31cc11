"""The conformance suite judges: one-defect copies of the engine, run as a third party would
(``--qatmig-impl exec:WRAPPER``, the wrapper running a patched copy of ``qatmig_engine``),
fail it — through the cross directions, the wire judge or the suite's own RAM digests — while
the unpatched engine through the same wrapper passes.

Each mutant is a text patch of one engine file; the patch must apply exactly once, so a change
of the engine that makes a mutant meaningless fails here instead of passing silently.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import qatmig_engine

pytest_plugins = ["pytester"]

#: name -> (engine file, old text, new text)
MUTANTS: dict[str, list[tuple[str, str, str]]] = {
    # Packet headers and offsets little-endian, on both ends (they agree with each other).
    "little-endian-headers": [
        ("wire.py", '_FIXED = struct.Struct(">IIIIIIQII24s256s")',
         '_FIXED = struct.Struct("<IIIIIIQII24s256s")'),
        ("wire.py", 's = _offsets_structs[n] = struct.Struct(f">{n}Q")',
         's = _offsets_structs[n] = struct.Struct(f"<{n}Q")'),
    ],
    # Channel ids counted from 1 on both ends.
    "channel-ids-from-1": [
        ("source.py", "init = InitPacket(ch, src.uuid).encode()",
         "init = InitPacket(ch + 1, src.uuid).encode()"),
        ("destination.py",
         "init = InitPacket.decode(raw, expected_uuid=self.uuid, channels=n)\n"
         "                if init.channel_id in chans:\n"
         "                    raise duplicate_channel_error(init.channel_id)\n"
         "                chans[init.channel_id] = conn",
         "init = InitPacket.decode(raw, expected_uuid=self.uuid, channels=n + 1)\n"
         "                if init.channel_id - 1 in chans:\n"
         "                    raise duplicate_channel_error(init.channel_id)\n"
         "                chans[init.channel_id - 1] = conn"),
    ],
    # The VM uuid zeroed on both ends (the -uuid both were given is ignored).
    "uuid-zeroed": [
        ("source.py", "init = InitPacket(ch, src.uuid).encode()",
         "init = InitPacket(ch, bytes(16)).encode()"),
        ("destination.py", "expected_uuid=self.uuid, channels=n)",
         "expected_uuid=bytes(16), channels=n)"),
    ],
    # A destination that loses a page after completing and says `verified: true` anyway.
    "lies-verified": [
        ("api.py",
         "        st = dst.run()\n        if on_done is not None:",
         "        st = dst.run()\n        blk.write_page(4096, bytes(4096))\n"
         "        st.verified = True\n        if on_done is not None:"),
    ],
}


def _mutant(tmp_path: Path, name: str | None) -> Path:
    """A wrapper script running ``python -m qatmig_engine.cli`` from a (patched) copy."""
    root = tmp_path / (name or "unpatched")
    pkg = root / "qatmig_engine"
    shutil.copytree(Path(qatmig_engine.__file__).parent, pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for rel, old, new in MUTANTS.get(name or "", []):
        path = pkg / rel
        text = path.read_text()
        assert text.count(old) == 1, f"mutant {name}: patch for {rel} no longer applies"
        path.write_text(text.replace(old, new))
    wrapper = root / "impl.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={root} exec {sys.executable} -m qatmig_engine.cli \"$@\"\n"
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def _run(pytester: pytest.Pytester, wrapper: Path, *args: str) -> pytest.RunResult:
    env_pp = os.environ.get("PYTHONPATH")
    assert not env_pp or str(wrapper.parent) not in env_pp  # the suite never imports the mutant
    return pytester.runpytest_subprocess(
        "-p", "qatmig", "--pyargs", "qatmig_conformance.test_migration",
        "--qatmig-devices=sw", "--qatmig-guest-size=4M", f"--qatmig-impl=exec:{wrapper}",
        "-k", "test_round_trip_per_method and zstd", "-p", "no:cacheprovider", "-v", *args,
    )


def test_the_unpatched_engine_through_a_wrapper_passes(pytester, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = _run(pytester, _mutant(tmp_path, None))
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*zstd-impl-to-impl*PASSED*", "*zstd-impl-to-peer*PASSED*",
                                 "*zstd-peer-to-impl*PASSED*"])


@pytest.mark.parametrize("name", ["little-endian-headers", "channel-ids-from-1", "uuid-zeroed"])
def test_a_defect_on_both_ends_fails_the_cross_directions_and_the_wire_judge(  # type: ignore[no-untyped-def]
        pytester, tmp_path, name) -> None:
    result = _run(pytester, _mutant(tmp_path, name))
    outcomes = result.parseoutcomes()
    # impl -> impl: the two ends agree with each other, but the judge between them does not.
    assert outcomes.get("failed") == 3, result.stdout.str()
    result.stdout.fnmatch_lines(["*wire judge: the stream from source exec:*"])
    result.stdout.fnmatch_lines(["*zstd-impl-to-impl*FAILED*"])


def test_an_implementation_that_lies_verified_fails_on_the_suites_digest(  # type: ignore[no-untyped-def]
        pytester, tmp_path) -> None:
    result = _run(pytester, _mutant(tmp_path, "lies-verified"))
    outcomes = result.parseoutcomes()
    # Its destination is in impl-to-impl and peer-to-impl; impl-to-peer (reference dest) passes.
    assert outcomes.get("failed") == 2 and outcomes.get("passed") == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*destination RAM differs from the source*pages_differing*"])
