"""The command line as users meet it, run as a subprocess: wrong arguments, unusable files,
signals and closed pipes end with one clear ``qatmig...: error`` line and an exit status, never a
traceback, a hang or a crash at interpreter exit (issue 13, item 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

CLI = [sys.executable, "-c", "import sys; from qatmig_engine.cli import main; sys.exit(main())"]


def _run(args: list[str], timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout,
                          **kw)  # type: ignore[call-overload]


def _assert_clean_failure(p: subprocess.CompletedProcess[str], rc: int, *needles: str) -> None:
    """Exit status ``rc``, no traceback, and the last stderr line is the error and says why."""
    err = p.stderr
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert p.returncode == rc, (p.returncode, err)
    last = err.strip().splitlines()[-1]
    assert "error" in last, err
    for n in needles:
        assert n in last, (n, last)


LISTEN = ["listen", "--listen", "127.0.0.1:0", "--timeout", "5"]


@pytest.mark.parametrize(
    ("size", "image", "needle"),
    [
        ("64T", "{tmp}/a.img", "guest image"),
        ("99999999T", "{tmp}/a.img", "TiB a guest can address"),
        ("1M", "{tmp}", "is a directory"),
        ("1M", "{tmp}/missing/dir/a.img", "does its directory exist"),
        ("1M", "/proc/qatmig-test.img", "/proc/qatmig-test.img"),
        ("1M", "/sys/qatmig-test.img", "/sys/qatmig-test.img"),
        ("1M", "/dev/null", "not a regular file"),
    ],
    ids=["64T", "99999999T", "directory", "missing-dir", "proc", "sys", "dev-null"],
)
def test_listen_unusable_guest_image_is_one_clear_line(tmp_path, size, image, needle):
    p = _run([*LISTEN, "--guest-size", size, "--guest-image", image.format(tmp=tmp_path)])
    _assert_clean_failure(p, 1, needle)
    assert "listening on" not in p.stderr  # refused before any socket is opened


def test_listen_immutable_guest_image(tmp_path):
    img = tmp_path / "immutable.img"
    img.write_bytes(b"")
    if subprocess.run(["chattr", "+i", str(img)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i needs root and a file system with the immutable flag (ext4)")
    try:
        p = _run([*LISTEN, "--guest-size", "1M", "--guest-image", str(img)])
    finally:
        subprocess.run(["chattr", "-i", str(img)], check=True)
    _assert_clean_failure(p, 1, "not writable here")


def test_send_guest_image_directory(tmp_path):
    p = _run(["send", "127.0.0.1:9", "--guest-image", str(tmp_path), "--timeout", "2"])
    _assert_clean_failure(p, 1, "is a directory")


def test_migrate_destination_image_in_missing_directory(tmp_path):
    p = _run(["migrate", "--guest-size", "1M", "--corpus", "filler", "--quiet",
              "--destination-image", str(tmp_path / "missing" / "d.img")])
    _assert_clean_failure(p, 1, "does its directory exist")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0"])
@pytest.mark.parametrize("command", ["migrate", "listen", "send"])
def test_timeout_must_be_finite_and_positive(value, command):
    args = {"migrate": ["migrate", "--guest-size", "1M", "--corpus", "filler"],
            "listen": [*LISTEN[:3], "--guest-size", "1M"],
            "send": ["send", "127.0.0.1:9", "--guest-size", "1M", "--corpus", "filler"]}[command]
    p = _run([*args, f"--timeout={value}"], timeout=30)
    _assert_clean_failure(p, 2, "--timeout", "finite number of seconds above 0")


def test_engine_api_refuses_a_timeout_that_would_wait_forever():
    from qatmig_engine.api import migrate_loopback
    from qatmig_engine.errors import ParameterError

    for value in (float("nan"), float("inf"), -1.0, 0.0):
        with pytest.raises(ParameterError, match="finite number of seconds"):
            migrate_loopback(1 << 20, corpus="filler", timeout=value)


def test_migrate_guest_larger_than_the_disk_fails_before_writing(tmp_path):
    env = {**os.environ, "QATMIG_CACHE_DIR": str(tmp_path)}
    p = _run(["migrate", "--guest-size", "1T", "--corpus", "stand-in", "--quiet"], env=env)
    _assert_clean_failure(p, 1, "MiB are free")
    written = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert sum(f.stat().st_blocks for f in written) * 512 < (64 << 20), written


def test_sigterm_while_building_an_image_leaves_no_part_file(tmp_path):
    out = tmp_path / "g.img"
    # 4 GiB: the build must still be running when the signal lands, even on a loaded machine
    proc = subprocess.Popen([*CLI, "guest", "build", "--size", "4G", "--corpus", "stand-in",
                             "-o", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".*.part")):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no .part file appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated" in err.strip().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["migrate", "--guest-size", "1M", "--corpus", "filler", "--json", "--quiet"],
    ["devices", "--json"],
], ids=["migrate-json", "devices-json"])
def test_stdout_closed_early_is_not_a_traceback(args):
    # ``qatmig ... | head -0``: the reader is gone before the first write.
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run(CLI + args, stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr
    assert p.returncode == 141, p.stderr


def _golden_zstd_with_a_flipped_payload_byte() -> tuple[list[bytes], int]:
    import struct

    from qatmig_engine.qemu.golden import load_connections, load_manifest

    m = load_manifest()
    blobs = load_connections("zstd", m)
    b = bytearray(blobs[1])
    pos = 64  # after MultiFDInit_t
    while True:
        normal, nps = struct.unpack_from(">II", b, pos + 16)
        if normal:
            b[pos + 1344 + nps // 2] ^= 0x10
            break
        pos += 1344
    blobs[1] = bytes(b)
    return blobs, m["ram"]["size"]


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "progress"])
def test_listen_after_a_zstd_error_exits_1_without_crash(tmp_path, quiet):
    """A corrupt zstd payload from a (replayed) QEMU 7.2 source: the error, exit 1, nothing
    else (it used to print ``BufferError: memoryview has 1 exported buffer`` and die with
    SIGSEGV in the final garbage collection)."""
    import socket
    import threading

    blobs, size = _golden_zstd_with_a_flipped_payload_byte()
    proc = subprocess.Popen(
        CLI + LISTEN[:3] + ["--guest-image", str(tmp_path / "d.img"), "--guest-size", str(size),
                            "--dialect", "qemu-7.2", "--multifd-compression", "zstd",
                            "--timeout", "10"] + (["--quiet"] if quiet else []),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    socks = []
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        port = int(line.strip().rsplit(":", 1)[1])
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in blobs]

        def pump(s: socket.socket, data: bytes) -> None:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        for s, d in zip(socks, blobs, strict=True):
            threading.Thread(target=pump, args=(s, d), daemon=True).start()
        _, err = proc.communicate(timeout=60)
    finally:
        for s in socks:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (proc.returncode, err)
    assert "BufferError" not in err and "Traceback" not in err and "Exception" not in err, err
    assert err.strip().splitlines() == [
        "qatmig: error: migration failed: multifd 0: decompressStream returned Data corruption "
        "detected"]


def test_zstd_decompressor_releases_the_payload_buffer_on_error():
    """After a decode error nobody holds an export of the caller's buffer: it can be resized
    (a bytearray with an exported buffer cannot) and its memoryview released."""
    from qatmig_engine.codecs import get_codec
    from qatmig_engine.errors import CodecError

    spec = get_codec("zstd")
    good = spec.new_compressor(1).compress((b"multifd page text " * 456)[:8192])
    payload = bytearray(good[:6] + b"\xff" * (len(good) - 6))  # frame header, then garbage
    view = memoryview(payload)
    d = spec.new_decompressor()
    with pytest.raises(CodecError) as info:
        d.decompress(view, 2)
    # ``info`` keeps the traceback, and with it the decoder's frame, alive (as a stats object
    # recording the failure does): the export must be gone anyway.
    view.release()  # BufferError while an export is alive
    payload.extend(b"x")  # BufferError while an export is alive
    assert info.value.channel == 0


FAULT_FORM = "--qat-inject-fault expects K or after_packets=K"


@pytest.mark.parametrize(
    ("command", "method"),
    [("check", "none"), ("check", "zlib"), ("check", "zstd"), ("check", "qatzip"),
     ("migrate", "none"), ("listen", "zstd"), ("send", "zlib")],
)
def test_malformed_qat_inject_fault_is_refused_whatever_the_method(tmp_path, command, method):
    """Without a qatzip backend nothing parses the spec later: validation must refuse it."""
    args = {"check": ["check"],
            "migrate": ["migrate", "--guest-size", "1M", "--corpus", "filler", "--quiet"],
            "listen": [*LISTEN, "--guest-size", "1M", "--guest-image", str(tmp_path / "d.img")],
            "send": ["send", "127.0.0.1:9", "--guest-size", "1M"]}[command]
    p = _run([*args, "--multifd-compression", method, "--qat-inject-fault", "after_packets=x"],
             timeout=30)
    _assert_clean_failure(p, 1, "fault injection: bad value for after_packets: 'x'", FAULT_FORM)
    assert p.stderr.strip().splitlines() == [p.stderr.strip()], p.stderr  # one line only
    assert p.stderr.startswith("qatmig: error: ")
    assert p.stdout == ""
    assert "listening on" not in p.stderr and not (tmp_path / "d.img").exists()


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("bogus", "expected key=value, got 'bogus'"),
     ("channel=1", "after_packets=K is required"),
     ("after_packets=1,mode=odd", "mode must be error or truncate"),
     ("after_packets=1,rc=QZ_NOPE", "bad value for rc: 'QZ_NOPE'"),
     ("after_packets=1,channel=2", "channel=2 names no channel of multifd-channels 2")],
)
def test_check_names_what_is_wrong_with_a_fault_spec(spec, needle):
    p = _run(["check", "--multifd-compression", "zstd", "--qat-inject-fault", spec], timeout=30)
    _assert_clean_failure(p, 1, needle, FAULT_FORM)


def test_check_accepts_a_wellformed_fault_spec_with_any_method():
    for method in ("none", "qatzip"):
        p = _run(["check", "--multifd-compression", method,
                  "--qat-inject-fault", "after_packets=3,channel=1,rc=QZ_TIMEOUT,mode=truncate"],
                 timeout=30)
        assert (p.returncode, p.stderr) == (0, ""), p.stderr
