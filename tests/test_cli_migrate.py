"""``qatmig migrate`` / ``listen`` / ``send`` from the command line."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import time

import pytest
from qatmig_engine.cli import main
from qatmig_engine.guest import GuestMemory, RAMBlock, fill_deterministic

REQUIRED = {
    "status", "total_time_ms", "downtime_ms", "throughput_mbps", "pages_per_second",
    "transferred_bytes", "normal_pages", "zero_pages", "dirty_sync_count", "compression_ratio",
    "send_cpu_percent", "recv_cpu_percent", "verified", "multifd_channels",
    "multifd_compression", "dialect", "corpus", "qat_backend",
}


def test_migrate_json(capsys):
    rc = main(["migrate", "--guest-size", "4M", "--multifd-compression", "zstd", "--json",
               "--corpus", "filler", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert REQUIRED <= set(out)
    assert out["status"] == "completed" and out["verified"] is True
    assert out["multifd_compression"] == "zstd" and out["multifd_channels"] == 2


def test_migrate_table_row(capsys):
    rc = main(["migrate", "--guest-size", "2M", "--quiet", "--multifd-channels", "3",
               "--corpus", "filler"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert lines[0].split()[:3] == ["method", "channels", "total"]
    row = lines[2].split()
    assert row[0] == "none" and row[1] == "3" and row[-1] == "yes"
    assert lines[3].startswith("Mbps: megabits/s on the wire") and "100% = one core" in lines[4]
    # the time and rate come from the same run as the row (unrounded there): match their form
    assert re.fullmatch(
        r"migrated 2 MiB of guest RAM \(512 pages, corpus filler\) over 3 none channels "
        r"\(dialect qemu-10\.0\) in \d+\.\d\d s at [\d,]+ Mbps: destination RAM verified "
        r"identical to the source\.", lines[5]), lines[5]


def test_migrate_qatzip_reports_backend(capsys):
    rc = main(["migrate", "--guest-size", "2M", "--multifd-compression", "qatzip",
               "--corpus", "filler", "--qat-backend", "sw", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["qat_backend"] == "sw"
    assert out["qat_fallback_reasons"] == [] and out["qat_fallback_events"] == []


def _fake_host(name: str) -> str:
    from qatmig_engine.resources import fixtures_dir

    return str(fixtures_dir("sysfs", name, "sys"))


def test_migrate_table_names_backend_and_fallback_reason(capsys):
    # A fake host with a ready 4xxx dc device but no libqatzip: auto falls back and says why.
    rc = main(["migrate", "--guest-size", "2M", "--multifd-compression", "qatzip",
               "--corpus", "filler", "--qat-backend", "auto", "--quiet",
               "--qat-sysfs-root", _fake_host("4xxx_pf_dc"),
               "--qat-library", "/nonexistent/libqatzip.so.3"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "qatzip backend: sw" in out
    assert "fallback to software: library not found" in out


def test_migrate_qat_fallback_off_fails_fast_naming_what_is_missing(capsys):
    t0 = time.monotonic()
    rc = main(["migrate", "--guest-size", "2M", "--multifd-compression", "qatzip",
               "--corpus", "filler", "--qat-fallback", "off", "--quiet",
               "--qat-sysfs-root", _fake_host("4xxx_sym_asym")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "no dc service: cfg_services is 'sym;asym'" in err
    # Not a wall-clock benchmark: the bound is the 30 s idle timeout it must not wait for.
    assert time.monotonic() - t0 < 20


@pytest.mark.parametrize(
    "argv, match",
    [
        (["migrate", "--guest-size", "2M", "--multifd-channels", "0"], "multifd_channels"),
        (["migrate", "--guest-size", "2M", "--dialect", "qemu-7.2",
          "--multifd-compression", "qatzip"], "qemu-7.2"),
        (["listen", "--listen", "127.0.0.1:0", "--guest-image", "/dev/null"], "--guest-size"),
        (["send", "127.0.0.1:1"], "--guest-image"),
    ],
)
def test_bad_arguments_are_clear_errors(argv, match, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("qatmig: error:") and match in err


def test_help_has_examples(capsys):
    for cmd in ("migrate", "listen", "send"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out and "--multifd-compression" in out


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _qatmig(*args):
    code = "import sys; from qatmig_engine.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_listening(port, proc, timeout=20):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return
        try:
            # A probe connection would be taken as a channel: only check the port is bound.
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            s.close()
        except OSError:
            return
        time.sleep(0.05)


def _image(path, size):
    g = GuestMemory([RAMBlock.anonymous("pc.ram", size)])
    fill_deterministic(g.blocks[0], seed=11)
    path.write_bytes(g.blocks[0].view)
    g.close()


def test_listen_and_send_processes(tmp_path):
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    _image(src, 4 << 20)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    port = _free_port()
    common = ["--multifd-compression", "zlib", "--dialect", "qemu-7.2", "--uuid",
              "12345678-1234-1234-1234-123456789abc", "--timeout", "10", "--quiet"]
    lp = _qatmig("listen", "--listen", f"127.0.0.1:{port}", "--guest-image", str(dst),
                 "--guest-size", "4M", "--json", *common)
    _wait_listening(port, lp)
    sp = _qatmig("send", f"127.0.0.1:{port}", "--guest-image", str(src), "--json", *common)
    sout, serr = sp.communicate(timeout=60)
    lout, lerr = lp.communicate(timeout=60)
    assert sp.returncode == 0, serr
    assert lp.returncode == 0, lerr
    s, d = json.loads(sout), json.loads(lout)
    assert s["status"] == d["status"] == "completed"
    assert d["destination_digest"] == s["source_digest"] == before
    assert dst.read_bytes() == src.read_bytes()


def test_send_dirty_rate_writes_the_ram_at_stop_time_to_final_image(tmp_path):
    """The exec: contract's running guest: --guest-image untouched, --final-image = the RAM
    the destination must hold (it differs from the image: the workload wrote)."""
    src, dst, final = tmp_path / "src.img", tmp_path / "dst.img", tmp_path / "final.img"
    _image(src, 16 << 20)
    before = src.read_bytes()
    port = _free_port()
    common = ["--uuid", "12345678-1234-1234-1234-123456789abc", "--timeout", "10", "--quiet"]
    lp = _qatmig("listen", "--listen", f"127.0.0.1:{port}", "--guest-image", str(dst),
                 "--guest-size", "16M", "--json", *common)
    _wait_listening(port, lp)
    sp = _qatmig("send", f"127.0.0.1:{port}", "--guest-image", str(src), "--dirty-rate",
                 "5000", "--final-image", str(final), "--json", *common)
    sout, serr = sp.communicate(timeout=60)
    _lout, lerr = lp.communicate(timeout=60)
    assert (sp.returncode, lp.returncode) == (0, 0), serr + lerr
    assert src.read_bytes() == before
    got = final.read_bytes()
    assert len(got) == len(before) and got != before
    assert dst.read_bytes() == got
    assert json.loads(sout)["source_digest"] == hashlib.sha256(got).hexdigest()


def test_listen_exits_non_zero_on_failure(tmp_path):
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    _image(src, 2 << 20)
    port = _free_port()
    lp = _qatmig("listen", "--listen", f"127.0.0.1:{port}", "--guest-image", str(dst),
                 "--guest-size", "2M", "--multifd-compression", "zstd", "--timeout", "3",
                 "--quiet")
    _wait_listening(port, lp)
    sp = _qatmig("send", f"127.0.0.1:{port}", "--guest-image", str(src),
                 "--multifd-compression", "zlib", "--timeout", "3", "--quiet")
    _, serr = sp.communicate(timeout=60)
    _, lerr = lp.communicate(timeout=60)
    assert lp.returncode == 1 and "flags received 2 flags expected 4" in lerr
    assert sp.returncode == 1 and "qatmig: error: migration failed" in serr


def test_listen_on_port_zero_announces_its_port_even_with_json(tmp_path):
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    _image(src, 2 << 20)
    lp = _qatmig("listen", "--listen", "127.0.0.1:0", "--guest-image", str(dst),
                 "--guest-size", "2M", "--json", "--quiet", "--no-digest", "--timeout", "10")
    try:
        line = lp.stderr.readline()  # the first stderr line names the bound address
        assert line.startswith("qatmig: listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        assert port > 0
        sp = _qatmig("send", f"127.0.0.1:{port}", "--guest-image", str(src), "--json",
                     "--quiet", "--no-digest", "--timeout", "10")
        sout, serr = sp.communicate(timeout=60)
        lout, lerr = lp.communicate(timeout=60)
    finally:
        if lp.poll() is None:
            lp.kill()
            lp.communicate()
    assert sp.returncode == 0, serr
    assert lp.returncode == 0, lerr
    s, d = json.loads(sout), json.loads(lout)
    assert s["status"] == d["status"] == "completed"
    assert s["source_digest"] is None and d["destination_digest"] is None
    assert dst.read_bytes() == src.read_bytes()


def test_readme_listen_tap_send_agree_on_one_default_dialect(tmp_path):
    """The README's lines as written (no --dialect anywhere): send -> tap -> listen."""
    from qatmig_engine.dialects import DEFAULT_DIALECT

    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    _image(src, 4 << 20)
    port = _free_port()
    lp = _qatmig("listen", "--listen", f"127.0.0.1:{port}", "--guest-image", str(dst),
                 "--guest-size", "4M", "--timeout", "20", "--json", "--quiet")
    _wait_listening(port, lp)
    tp = _qatmig("tap", "--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{port}",
                 "--timeout", "20", "--json")
    try:
        line = tp.stderr.readline()
        tap_port = int(line.split("listening on 127.0.0.1:")[1].split(",")[0])
        sp = _qatmig("send", f"127.0.0.1:{tap_port}", "--guest-image", str(src), "--json",
                     "--timeout", "20", "--quiet")
        sout, serr = sp.communicate(timeout=60)
        lout, lerr = lp.communicate(timeout=60)
        tout, terr = tp.communicate(timeout=60)
    finally:
        for p in (lp, tp):
            if p.poll() is None:
                p.kill()
                p.wait(5)
    assert sp.returncode == 0, serr
    assert lp.returncode == 0, lerr
    assert tp.returncode == 0, tout + terr
    s, d, t = json.loads(sout), json.loads(lout), json.loads(tout)
    assert s["dialect"] == d["dialect"] == t["dialect"] == DEFAULT_DIALECT == "qemu-10.0"
    assert d["vm_commands"] == t["commands"] == ["MIG_CMD_SWITCHOVER_START"]
    assert t["ok"] and dst.read_bytes() == src.read_bytes()


def test_a_listener_of_another_dialect_says_which_one_the_bytes_look_like(tmp_path):
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    _image(src, 4 << 20)
    port = _free_port()
    lp = _qatmig("listen", "--listen", f"127.0.0.1:{port}", "--guest-image", str(dst),
                 "--guest-size", "4M", "--timeout", "20")
    _wait_listening(port, lp)
    sp = _qatmig("send", f"127.0.0.1:{port}", "--guest-image", str(src), "--timeout", "20",
                 "--dialect", "qemu-7.2")
    sp.communicate(timeout=60)
    _lout, lerr = lp.communicate(timeout=60)
    assert lp.returncode == 1
    assert "look like dialect qemu-7.2" in lerr and "peer silent" not in lerr


def test_send_connect_wait_outlasts_a_listener_that_starts_late(tmp_path):
    """`listen ... &` then `send` at once: --connect-wait retries the refused connection."""
    import subprocess
    import sys
    import time

    port = _free_port()
    cli = [sys.executable, "-m", "qatmig_engine.cli"]
    refused = subprocess.run([*cli, "send", f"127.0.0.1:{port}", "--guest-size", "1M",
                              "--quiet"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().endswith("use --connect-wait S to retry while it starts)")
    sender = subprocess.Popen([*cli, "send", f"127.0.0.1:{port}", "--guest-size", "1M",
                               "--quiet", "--json", "--connect-wait", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the sender is now retrying; no listener yet
    assert sender.poll() is None
    listener = subprocess.run([*cli, "listen", "--listen", f"127.0.0.1:{port}", "--guest-image",
                               str(tmp_path / "d.img"), "--guest-size", "1M", "--quiet",
                               "--json"], capture_output=True, text=True, timeout=120)
    out, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    assert json.loads(out)["status"] == "completed"
    assert listener.returncode == 0, listener.stderr
    assert json.loads(out)["source_digest"] == json.loads(listener.stdout)["destination_digest"]
