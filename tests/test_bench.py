"""``qatmig bench``: the matrix command end to end (as a subprocess), its JSON/CSV/plots, and the
pure parts (bandwidth parsing, dialect per QEMU version, aggregation, ratios)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from qatmig_engine import bench
from qatmig_engine.dialects import DEFAULT_DIALECT
from qatmig_engine.errors import ParameterError
from qemu_support import QEMU_MARKS

QATMIG = [sys.executable, "-c",
          "import sys; from qatmig_engine.cli import main; sys.exit(main(sys.argv[1:]))"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bench(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QATMIG, "bench", "--guest", "mixed", "--guest-size", "4M",
                           "-o", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_bench_engine_matrix_json_csv_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plots need matplotlib: pip install -e '.[test]'")
    p = _bench(tmp_path, "--impl", "engine", "--multifd-compression", "none,zstd",
               "--channels", "1,2", "--max-bandwidth", "unlimited,1Gbit", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert [i["label"] for i in res["impls"]] == [f"engine ({DEFAULT_DIALECT})"]
    assert len(res["cells"]) == 2 * 2 * 2 and len(res["runs"]) == 8
    keys = {(c["method"], c["channels"], c["max_bandwidth"]) for c in res["cells"]}
    assert keys == {(m, c, b) for m in ("none", "zstd") for c in (1, 2)
                    for b in (0, 125_000_000)}
    for c in res["cells"]:
        assert c["wall_s"] > 0 and c["src_cpu_s"] > 0 and c["dst_cpu_s"] > 0
        assert c["throughput_mbps"] == pytest.approx(4 * 2**20 * 8 / c["wall_s"] / 1e6)
        assert c["ratios"] == {}  # no QEMU in the matrix: nothing to compare with
    assert len(res["meta"]["loadavg_before"]) == 3 and res["meta"]["repeat"] == 1
    out = tmp_path / "out"
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert len(rows) == 8 and rows[0]["impl"] == f"engine ({DEFAULT_DIALECT})"
    assert {"total_ms", "downtime_ms", "throughput_mbps", "pages_per_second",
            "send_cpu_percent", "recv_cpu_percent"} <= set(rows[0])
    assert json.loads((out / "results.json").read_text())["cells"] == res["cells"]
    for name in ("bench-unlimited.png", "bench-1Gbit.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert "| method | channels | max-bandwidth | total ms |" in (out / "tables.md").read_text()


def test_bench_table_and_no_plots(tmp_path: Path) -> None:
    p = _bench(tmp_path, "--impl", "engine@qemu-7.2", "--multifd-compression", "zlib",
               "--no-plots")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "engine (qemu-7.2)"
    assert lines[1].split()[:3] == ["method", "channels", "max-bandwidth"]
    assert lines[3].split()[:3] == ["zlib", "1", "unlimited"] or \
        lines[3].split()[:3] == ["zlib", "2", "unlimited"]
    assert "load average" in p.stdout
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize("args, message", [
    (("--impl", "qemu:/nonexistent/qemu"), "not an executable"),
    (("--impl", "engine@qemu-1.0"), "unknown dialect"),
    (("--max-bandwidth", "fast"), "cannot parse bandwidth"),
    (("--channels", "two"), "comma-separated list of integers"),
    (("--impl", "engine@qemu-7.2", "--multifd-compression", "qatzip"), "qatzip"),
])
def test_bench_bad_arguments_one_line(tmp_path: Path, args: tuple[str, ...],
                                      message: str) -> None:
    p = _bench(tmp_path, *args)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("qatmig: error:") and message in p.stderr


@pytest.mark.parametrize("text, want", [
    ("unlimited", 0), ("0", 0), ("1Gbit", 125_000_000), ("10Gbit", 1_250_000_000),
    ("512M", 512 << 20), ("1.25G", int(1.25 * (1 << 30))), ("100Mbit", 12_500_000),
])
def test_parse_bandwidth(text: str, want: int) -> None:
    assert bench.parse_bandwidth(text) == want


def test_format_bandwidth_round_trips_links() -> None:
    for text in ("unlimited", "1Gbit", "10Gbit", "100Mbit"):
        assert bench.format_bandwidth(bench.parse_bandwidth(text)) == text


def test_dialect_for_version() -> None:
    assert bench.dialect_for_version("QEMU emulator version 7.2.22 (Debian)") == "qemu-7.2"
    assert bench.dialect_for_version("QEMU emulator version 9.1.0") == "qemu-9.0"
    newest = max(bench.DIALECTS, key=lambda d: tuple(int(x) for x in d[5:].split(".")))
    assert bench.dialect_for_version("QEMU emulator version 10.0.2 (Debian)") == newest
    with pytest.raises(ParameterError, match=r"QEMU emulator version 6\.2\.0: older than every di"):
        bench.dialect_for_version("QEMU emulator version 6.2.0")


def test_resolve_impls_pairs_engine_with_each_qemu_dialect() -> None:
    exe = sys.executable  # any executable stands for the binary; its version is faked
    fake = {exe: "QEMU emulator version 7.2.22"}

    impls = bench.resolve_impls(["engine", f"qemu:{exe}"], version_of=fake.__getitem__)
    assert [(i.kind, i.dialect) for i in impls] == [("engine", "qemu-7.2"), ("qemu", "qemu-7.2")]
    assert bench.baseline_for(impls[0], impls) == [impls[1]]
    assert [i.label for i in bench.resolve_impls(["engine"])] == [f"engine ({DEFAULT_DIALECT})"]


def _run(impl: str, wall: float, src: float, dst: float, k: int = 0) -> bench.RunResult:
    return bench.RunResult(impl, "zstd", 2, 0, k, wall, src, dst, 5.0, None, None)


def test_aggregate_median_spread_and_ratios() -> None:
    e = bench.aggregate([_run("engine (qemu-7.2)", w, 1.0 + w, 1.0)
                         for w in (1.0, 3.0, 2.0)], 1 << 30)
    assert (e.wall_s, e.wall_s_min, e.wall_s_max, e.runs) == (2.0, 1.0, 3.0, 3)
    assert e.src_cpu_s == 3.0 and e.cpu_s_spread == pytest.approx(2.0)
    assert e.cpu_s_per_gib == pytest.approx(4.0)
    q = bench.aggregate([_run("QEMU 7.2", 4.0, 1.5, 0.5)], 1 << 30)
    impls = [bench.Impl("engine", "qemu-7.2", "engine (qemu-7.2)"),
             bench.Impl("qemu", "qemu-7.2", "QEMU 7.2", "/usr/bin/qemu-system-x86_64")]
    bench.add_ratios([e, q], impls)
    assert e.ratios["QEMU 7.2"] == {"wall_s": 0.5, "src_cpu_s": 2.0, "dst_cpu_s": 2.0,
                                    "cpu_s": 2.0}
    assert q.ratios == {}


def _needs_qemu(fn):  # type: ignore[no-untyped-def]
    for mark in QEMU_MARKS:
        fn = mark(fn)
    return fn


@_needs_qemu
def test_bench_engine_vs_qemu_ratio_columns(tmp_path: Path) -> None:
    p = _bench(tmp_path, "--impl", "engine,qemu", "--multifd-compression", "zstd",
               "--channels", "2", "--no-plots", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    labels = [i["label"] for i in res["impls"]]
    assert labels[0] == "engine (qemu-7.2)" and labels[1].startswith("QEMU 7.")
    eng = next(c for c in res["cells"] if c["impl"] == labels[0])
    q = next(c for c in res["cells"] if c["impl"] == labels[1])
    assert set(eng["ratios"]) == {labels[1]}
    # /proc counts CPU in 10 ms ticks: a 4 MiB QEMU migration may read 0, and then no ratio.
    assert eng["ratios"][labels[1]]["cpu_s"] == (
        pytest.approx(eng["cpu_s"] / q["cpu_s"]) if q["cpu_s"] else None)
    assert q["downtime_ms"] is not None
    header = (tmp_path / "out" / "tables.txt").read_text().splitlines()[1]
    assert f"CPU ÷ {labels[1]}" in header


def _result(cells: list[bench.Cell], impls: list[bench.Impl]) -> dict:
    return {"impls": [i.to_json() for i in impls], "methods": ["zstd"], "channels": [],
            "max_bandwidth": [0], "cells": [c.to_json() for c in cells],
            "meta": {"started": "t0", "finished": "t1", "loadavg_before": [1.0, 1.0, 1.0],
                     "loadavg_after": [2.0, 2.0, 2.0], "machine": "m", "python": "3",
                     "repeat": 1, "cpu_method": "cpu", "guest": {"description": "g"}}}


def _cell(impl: str, ch: int, src: float, dst: float) -> bench.Cell:
    return bench.Cell(impl, "zstd", ch, 0, 1 << 30, 1, 2.0, 2.0, 2.0, src, dst, 0.0, None)


def test_scaling_model_fits_per_gib_and_per_channel_and_predicts() -> None:
    impl = bench.Impl("engine", "qemu-9.2", "engine (qemu-9.2)")
    # send = 2.0 + 0.1 * channels, recv = 1.0 exactly: the fit must recover both.
    cells = [_cell(impl.label, ch, 2.0 + 0.1 * ch, 1.0) for ch in (1, 2, 4, 8)]
    fits = bench.scaling_fits(_result(cells, [impl]))
    send = next(f for f in fits if f.side == "send")
    recv = next(f for f in fits if f.side == "recv")
    assert send.per_gib == pytest.approx(2.0) and send.per_channel == pytest.approx(0.1)
    assert recv.per_gib == pytest.approx(1.0) and recv.per_channel == pytest.approx(0.0)
    assert send.residual == pytest.approx(0.0, abs=1e-9)
    p = bench.predict_host(fits, impl.label, "zstd", channels=8, link_bytes_s=1.25e9,
                           ratio=3.0, cores=16)
    # CPU-bound: 8 channels x 1 core / 2.8 CPU-s per GiB, below the link's 3.75 GB/s raw.
    assert p["raw_gb_s"] == pytest.approx(8 / 2.8 * (1 << 30) / 1e9)
    assert p["send_cpu_percent"] == pytest.approx(800.0)
    md = bench.markdown_report(_result(cells, [impl]))
    assert "Scaling model" in md and "| engine (qemu-9.2) | zstd | send | 2.00 | +0.100 |" in md


def _seed_like_cells(impl: str, wire_bytes: int | None) -> list[bench.Cell]:
    """QEMU 10.0's zstd here: 2.54 send / 1.49 recv CPU-s per GiB, flat in the channel count."""
    out = []
    for ch in (1, 2, 4, 8):
        c = _cell(impl, ch, 2.54, 1.49)
        c.wire_bytes = wire_bytes
        out.append(c)
    return out


def test_prediction_for_the_seed_host_uses_the_counted_wire_ratio() -> None:
    impl = bench.Impl("qemu", "qemu-10.0", "QEMU 10.0")
    # Counted wire = guest / 2.89 (zstd-1 on Silesia): CPU binds before the 10 Gbit/s link.
    rows = bench.predictions(_result(_seed_like_cells(impl.label, int((1 << 30) / 2.89)),
                                     [impl]))
    (row,) = rows
    assert row["ratio"] == pytest.approx(2.89, rel=1e-6) and row["bound"] == "send CPU"
    assert row["raw_gb_s"] == pytest.approx(8 / 2.54 * (1 << 30) / 1e9)
    assert row["send_cpu_percent"] == pytest.approx(800.0)
    assert row["recv_cpu_percent"] == pytest.approx(800 * 1.49 / 2.54)
    assert row["wire_mbps"] == pytest.approx(row["raw_gb_s"] * 1e9 / 2.89 * 8 / 1e6, rel=1e-6)
    assert row["seed"] == bench.SEED_FIGURES["zstd"]
    # A ratio of 2: the 1.25 GB/s link carries 2.5 GB/s of guest RAM, below the CPU's 3.4.
    (row,) = bench.predictions(_result(_seed_like_cells(impl.label, (1 << 30) // 2), [impl]))
    assert row["bound"] == "link" and row["raw_gb_s"] == pytest.approx(2.5, rel=1e-6)
    assert row["send_cpu_percent"] < 800
    md = bench.markdown_report(_result(_seed_like_cells(impl.label, None), [impl]))
    assert "Predicted for the seed host (8 channels, 10Gbit link, 16 cores per end)" in md
    assert "| QEMU 10.0 | zstd | not counted | send CPU (link not applied: no --count-wire) |" \
        in md and "| 8579 | 810 | 340 |" in md


def test_prediction_for_another_host_has_no_seed_columns() -> None:
    impl = bench.Impl("qemu", "qemu-10.0", "QEMU 10.0")
    host = bench.parse_host("4,1Gbit,2")
    assert host == bench.HostSpec(4, 125_000_000.0, 2)
    (row,) = bench.predictions(_result(_seed_like_cells(impl.label, None), [impl]), host)
    # Two cores for four channels: two channels' worth of CPU, 200 %.
    assert row["send_cpu_percent"] == pytest.approx(200.0) and row["seed"] is None
    assert "seed" not in bench.prediction_markdown(
        _result(_seed_like_cells(impl.label, None), [impl]), host)


@pytest.mark.parametrize("text", ["8,10Gbit", "8,fast,16", "0,10Gbit,16", "8,unlimited,16",
                                  "8,10Gbit,16,2"])
def test_parse_host_refuses_with_the_expected_form(text: str) -> None:
    with pytest.raises(ParameterError, match=r"--predict-host .*(CHANNELS,LINK,CORES|not "
                                             r"unlimited)"):
        bench.parse_host(text)


def test_bench_from_json_predicts_the_host_asked(tmp_path: Path) -> None:
    impl = bench.Impl("qemu", "qemu-10.0", "QEMU 10.0")
    src = tmp_path / "in.json"
    src.write_text(json.dumps(_result(_seed_like_cells(impl.label, None), [impl])))
    p = subprocess.run([*QATMIG, "bench", "--from-json", str(src), "--no-plots", "-o",
                        str(tmp_path / "out"), "--predict-host", "4,1Gbit,2"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    assert "Predicted for a host with 4 channels, 1Gbit link, 2 cores per end" in p.stdout
    assert "Predicted for a host with 4 channels" in (tmp_path / "out" / "tables.md").read_text()
    p = subprocess.run([*QATMIG, "bench", "--from-json", str(src), "--no-plots", "-o",
                        str(tmp_path / "out"), "--predict-host", "4,1Gbit"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "qatmig: error: --predict-host '4,1Gbit': expected CHANNELS,LINK,CORES with a link in "
        "bits or bytes/s, e.g. 8,10Gbit,16 (the seed's host)"]


def test_update_docs_writes_a_stamped_block_and_the_plots(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "bench.py").write_text("# measured code\n")
    doc = tmp_path / "docs" / "performance.md"
    doc.write_text("# Performance\n")
    monkeypatch.setattr(bench, "MEASURED_CODE", ("engine/bench.py",))
    impl = bench.Impl("engine", "qemu-9.2", "engine (qemu-9.2)")
    plot = tmp_path / "bench-unlimited.png"
    plot.write_bytes(PNG_MAGIC)
    bench.update_docs(_result([_cell(impl.label, 2, 2.0, 1.0)], [impl]), [plot],
                      "qatmig bench --update-docs", root=tmp_path)
    text = doc.read_text()
    assert "<!-- figures id=bench " in text and "<!-- /figures id=bench -->" in text
    assert bench.DOCS_HEADING in text and "![unlimited](perf/bench-bench-unlimited.png)" in text
    assert (tmp_path / "docs" / "perf" / "bench-bench-unlimited.png").read_bytes() == PNG_MAGIC
    first = text
    bench.update_docs(_result([_cell(impl.label, 2, 3.0, 1.0)], [impl]), [plot],
                      "qatmig bench --update-docs", root=tmp_path)
    assert doc.read_text().count("<!-- figures id=bench ") == 1 and doc.read_text() != first


def test_bench_from_json_renders_without_measuring(tmp_path: Path) -> None:
    impl = bench.Impl("engine", "qemu-9.2", "engine (qemu-9.2)")
    src = tmp_path / "in.json"
    src.write_text(json.dumps(_result([_cell(impl.label, 2, 2.0, 1.0)], [impl])))
    p = subprocess.run([*QATMIG, "bench", "--from-json", str(src), "--no-plots", "-o",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                       check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("engine (qemu-9.2)\n")
    assert (tmp_path / "out" / "results.csv").read_text().count("\n") == 2


def test_cells_above_one_are_listed_from_the_data() -> None:
    impls = [bench.Impl("engine", "qemu-7.2", "engine (qemu-7.2)"),
             bench.Impl("qemu", "qemu-7.2", "QEMU 7.2", "/usr/bin/qemu-system-x86_64")]
    e, q = _cell(impls[0].label, 2, 3.0, 1.0), _cell(impls[1].label, 2, 2.0, 2.0)
    bench.add_ratios([e, q], impls)
    res = _result([e, q], impls)
    assert bench.cells_above(res) == []  # CPU 4.0 / 4.0 and equal wall: not above 1.0
    assert "at or below 1.0× in every cell" in bench.markdown_report(res)
    e2 = _cell(impls[0].label, 2, 5.0, 1.0)
    bench.add_ratios([e2, q], impls)
    res2 = _result([e2, q], impls)
    assert bench.cells_above(res2) == [
        "engine (qemu-7.2) zstd x2 unlimited vs QEMU 7.2: CPU 1.50x (send 2.50x, recv 0.50x), "
        "wall 1.00x"]
    assert "above 1.0× in this run" in bench.markdown_report(res2)
    # A QEMU end that used no measurable CPU (a tiny guest) has no ratio: shown as –.
    q0 = _cell(impls[1].label, 2, 2.0, 0.0)
    e3 = _cell(impls[0].label, 2, 5.0, 1.0)
    bench.add_ratios([e3, q0], impls)
    assert bench.cells_above(_result([e3, q0], impls)) == [
        "engine (qemu-7.2) zstd x2 unlimited vs QEMU 7.2: CPU 3.00x (send 2.50x, recv –), "
        "wall 1.00x"]


def test_restamp_keeps_current_stamps_and_recomputes_older_code_lists(tmp_path: Path) -> None:
    code = ",".join(bench.MEASURED_CODE)
    current = {"commit": "abc1234", "code_sha": "x", "measured": "t", "code": code}
    assert bench._restamp(current, tmp_path) is current
    dirty = {"commit": "abc1234+dirty", "code_sha": "x", "measured": "t"}
    assert bench._restamp(dirty, tmp_path) is dirty  # cannot be recomputed: stays (stale)
    from qatmig_engine import docstamp

    root = docstamp.repo_root()
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    old = {"commit": head, "code_sha": "older-list", "measured": "t"}
    new = bench._restamp(old, root)
    assert new is not None and new["code"] == code
    assert new["code_sha"] == docstamp.code_digest_at(head, bench.MEASURED_CODE, root)
