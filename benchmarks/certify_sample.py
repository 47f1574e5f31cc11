"""Write the sample reports of docs/certify.md by running ``qatmig certify`` (no typed figures).

Two runs: this machine with ``fixtures/hosts/software-only.yaml`` (the software path, as a CI
machine runs it), and a broken fake Gen4 host (the ``4xxx_down`` sysfs tree) with a small
hardware profile, to show what a failing report says. The report.md of each run goes into
docs/certify.md as a stamped block (``qatmig_engine.docstamp``), headings demoted to fit.

    python benchmarks/certify_sample.py --update-docs      # rewrite the blocks
    python benchmarks/certify_sample.py                    # print them
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "certify.md"
CODE = ["pytest_qatmig/certify", "fixtures/hosts/software-only.yaml"]
FAKE_PROFILE = """\
name: fake-4xxx
description: the seed's two 4xxx PFs, on a fake sysfs tree where one is down and one is missing
devices:
  expected: ["0000:6b:00.0", "0000:70:00.0"]
  min_ready: 2
certify:
  libqatzip: {min_version: "1.3"}
  host: {min_memlock: 64K}
  conformance: {k: "qatzip_on_this_workers_device or host_matches", guest_size: 4M}
  bench:
    guest_size: 8M
    repeat: 1
    cases:
      - {id: qatzip-2ch, multifd-compression: qatzip, multifd-channels: 2, qat-backend: hw}
"""


def certify(*args: str) -> tuple[int, str]:
    cmd = [sys.executable, "-c",
           "import sys; from qatmig_engine.cli import main; sys.exit(main(sys.argv[1:]))",
           "certify", *args, "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    return res.returncode, res.stderr


def demote(md: str, levels: int = 3) -> str:
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", md, flags=re.M)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update-docs", action="store_true", help=f"rewrite the blocks in {DOC}")
    args = ap.parse_args(argv)
    blocks: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="qatmig-certify-sample-") as tmp:
        out = Path(tmp) / "software-only"
        rc, err = certify("--profile", str(ROOT / "fixtures/hosts/software-only.yaml"),
                          "-o", str(out))
        if not (out / "report.md").exists():
            print(err, file=sys.stderr)
            return 1
        blocks["certify-sample-software"] = (
            f"`qatmig certify --profile fixtures/hosts/software-only.yaml -o out/` exited {rc}; "
            "its `out/report.md`:\n\n" + demote((out / "report.md").read_text()))
        prof = Path(tmp) / "fake-4xxx.yaml"
        prof.write_text(FAKE_PROFILE)
        out = Path(tmp) / "broken"
        rc, err = certify("--profile", str(prof), "-o", str(out), "--fake-host", "4xxx_down")
        if not (out / "report.md").exists():
            print(err, file=sys.stderr)
            return 1
        md = (out / "report.md").read_text()
        head = md[:md.index("## Host checks")] if "## Host checks" in md else md
        blocks["certify-sample-broken"] = (
            f"`qatmig certify --profile fake-4xxx.yaml -o out/ --fake-host 4xxx_down` exited "
            f"{rc}; the top of its `out/report.md`:\n\n" + demote(head.rstrip()) + "\n")
    if not args.update_docs:
        for name, body in blocks.items():
            print(f"--- {name}\n{body}")
        return 0
    from qatmig_engine import docstamp

    script = "benchmarks/certify_sample.py --update-docs"
    docstamp.write_block(DOC, "certify-sample-software", blocks["certify-sample-software"],
                         script=script, code=CODE, heading="### A software-only machine")
    docstamp.write_block(DOC, "certify-sample-broken", blocks["certify-sample-broken"],
                         script=script, code=CODE, heading="### A broken Gen4 host")
    print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
