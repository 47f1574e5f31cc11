"""Runs on a fleet host inside an execnet gateway (sent as source by :mod:`.fleet`).

Receives the options as JSON, writes the profile it was sent to a temporary directory, runs
:func:`pytest_qatmig.certify.run.certify_host` and sends back ``("progress", kind, text)``
messages, then ``("result", report_json, raw_files_json)`` or ``("error", traceback)``.
Only the standard library and an installed pytest-qatmig are needed on the host.
"""

from __future__ import annotations

from typing import Any

RAW_LIMIT = 4 << 20  # bytes of raw logs sent back per host


def serve(channel: Any) -> None:
    import json
    import tempfile
    import traceback
    from pathlib import Path

    opts = json.loads(channel.receive())
    try:
        from pytest_qatmig.certify.run import certify_host

        with tempfile.TemporaryDirectory(prefix="qatmig-certify-") as tmp:
            profile = Path(tmp) / opts.get("profile_name", "profile.yaml")
            profile.write_text(opts["profile_text"])
            opts["profile"] = str(profile)
            opts["raw_dir"] = str(Path(tmp) / "raw")

            def progress(kind: str, text: str) -> None:
                channel.send(("progress", kind, text))

            report = certify_host(opts, progress)
            raw: dict[str, str] = {}
            size = 0
            for p in sorted(Path(opts["raw_dir"]).rglob("*")):
                if p.is_file():
                    text = p.read_text(errors="replace")
                    size += len(text)
                    if size > RAW_LIMIT:
                        break
                    raw[str(p.relative_to(opts["raw_dir"]))] = text
            channel.send(("result", json.dumps(report, default=str), json.dumps(raw)))
    except BaseException:
        channel.send(("error", traceback.format_exc()))


if __name__ == "__channelexec__":
    serve(channel)  # type: ignore[name-defined]  # noqa: F821
