"""The cffi libqatzip binding, against the real library when it loads, else the C test double.

The real library is ``$QATMIG_LIBQATZIP`` (a path, as the engine resolves it) or the loader's
``libqatzip.so.3``; CI has neither and never builds one, so there the double runs
(``QATMIG_LIBQATZIP=/path/to/libqatzip.so.3 pytest -p qatmig tests/test_qat_binding.py`` runs
the same tests against a local QATzip build).

Test ids say which one ran (``[real-libqatzip]`` / ``[test-double]``), and each test records
a ``libqatzip`` property. Error paths need the double's fault controls: they skip when the
real library is installed (set QATMIG_FORCE_QATZIP_DOUBLE=1 to run them there too).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import threading
from pathlib import Path

import pytest
from qatmig_engine.errors import QatError, QatLibraryError, QatUnavailable
from qatmig_engine.qat.binding import (
    EXPECTED_SIZES,
    QatzipLibrary,
    QzSession,
    Rc,
    gzip_ext_members,
    load_library,
    probe_library,
    rc_name,
)
from shared_data import shared_path

_spec = importlib.util.spec_from_file_location(
    "qatzip_double_build", Path(__file__).parent / "qatzip_double" / "build.py")
assert _spec and _spec.loader
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

VECTORS = shared_path("vectors", "qatzip")
REAL = build.real_library()
WHICH = "real-libqatzip" if REAL else "test-double"


@pytest.fixture(scope="module", params=[WHICH])
def qzlib(request, tmp_path_factory):
    """``(QatzipLibrary, DoubleControl | None)``: the real library wins when it loads."""
    if REAL:
        return load_library(REAL), None
    try:
        path = build.build(tmp_path_factory.getbasetemp() / "qatzip_double")
    except RuntimeError as exc:
        pytest.skip(f"no real libqatzip ({build.HOW_TO_USE_REAL}) and the test double "
                    f"cannot be built: {exc}")
    ctl = build.DoubleControl(path)
    return load_library(path), ctl


@pytest.fixture
def lib(qzlib, record_property):
    lib, ctl = qzlib
    record_property("libqatzip", f"{WHICH}:{lib.path or lib.requested}")
    if ctl is not None:
        ctl.reset()
    yield lib
    if ctl is not None:
        ctl.reset()


@pytest.fixture
def double(qzlib, lib):
    ctl = qzlib[1]
    if ctl is None:
        pytest.skip("error paths are injected through the test double, which is only used when "
                    "the real libqatzip is absent; set QATMIG_FORCE_QATZIP_DOUBLE=1 to use it")
    return ctl


def _vector(name: str) -> bytes:
    p = VECTORS / name
    if not p.exists():
        pytest.skip(f"golden vector {p} not present (shared/vectors/qatzip)")
    return p.read_bytes()


@pytest.fixture(scope="module")
def mixed() -> bytes:
    return _vector("inputs/mixed_128pages.bin")


# ------------------------------------------------------------------------- static facts
def test_rc_names_are_qatzips():
    table = {"QZ_OK": 0, "QZ_DUPLICATE": 1, "QZ_FORCE_SW": 2, "QZ_PARAMS": -1, "QZ_FAIL": -2,
             "QZ_BUF_ERROR": -3, "QZ_DATA_ERROR": -4, "QZ_TIMEOUT": -5, "QZ_INTEG": -100,
             "QZ_NO_HW": 11, "QZ_NO_MDRV": 12, "QZ_NO_INST_ATTACH": 13, "QZ_LOW_MEM": 14,
             "QZ_LOW_DEST_MEM": 15, "QZ_UNSUPPORTED_FMT": 16, "QZ_NONE": 100,
             "QZ_NOSW_NO_HW": -101, "QZ_NOSW_NO_MDRV": -102, "QZ_NOSW_NO_INST_ATTACH": -103,
             "QZ_NOSW_LOW_MEM": -104, "QZ_NO_SW_AVAIL": -105, "QZ_NOSW_UNSUPPORTED_FMT": -116,
             "QZ_POST_PROCESS_ERROR": -117, "QZ_METADATA_OVERFLOW": -118,
             "QZ_OUT_OF_RANGE": -119, "QZ_NOT_SUPPORTED": -200}
    assert {r.name: r.value for r in Rc} == table
    for name, value in table.items():
        assert rc_name(value) == name
    assert rc_name(-7) == "QZ_UNKNOWN(-7)"


def test_library_error_carries_call_rc_and_name():
    e = QatLibraryError("qzCompress", -2, rc_name(-2), "detail")
    assert (e.call, e.rc, e.rc_name) == ("qzCompress", -2, "QZ_FAIL")
    assert str(e) == "qzCompress returned QZ_FAIL (-2): detail"


def test_missing_library_is_qat_unavailable(tmp_path):
    with pytest.raises(QatUnavailable, match="library not found"):
        QatzipLibrary(tmp_path / "libqatzip.so.3")
    info = probe_library(tmp_path / "libqatzip.so.3")
    assert not info.loaded and "library not found" in info.error


def test_a_library_without_qatzip_symbols_is_refused():
    with pytest.raises(QatUnavailable, match="lacks QATzip symbols"):
        QatzipLibrary("libz.so.1")


# ------------------------------------------------------------------------- ABI
def test_struct_sizes_match_the_x86_64_layout(lib):
    for name, size in EXPECTED_SIZES.items():
        assert lib.ffi.sizeof(name) == size
    assert lib.ffi.offsetof("QzSession_T", "internal") == 16
    assert lib.ffi.offsetof("QzSessionParamsCommon_T", "hw_buff_sz") == 20
    assert lib.ffi.offsetof("QzSessionParamsDeflate_T", "data_fmt") == 52


def test_defaults_deflate_are_the_observed_ones(lib):
    p = lib.defaults_deflate()
    c = p.common_params
    assert (c.direction, c.comp_lvl, c.comp_algorithm, c.max_forks, c.sw_backup) == (2, 1, 8, 3, 1)
    assert (c.hw_buff_sz, c.strm_buff_sz, c.input_sz_thrshold) == (65536, 65536, 1024)
    assert (c.req_cnt_thrshold, c.wait_cnt_thrshold, c.polling_mode) == (32, 8, 0)
    assert (p.huffman_hdr, p.data_fmt) == (0, 2)


@pytest.mark.parametrize(("n", "bound"), [(0, 34), (1, 82), (1024, 1232), (65536, 73808),
                                          (65537, 73810), (1 << 20, 1179728),
                                          (100 << 20, 117964880)])
def test_max_compressed_length_without_a_hw_session(lib, n, bound):
    assert lib.max_compressed_length(n) == bound


def test_info_names_the_library(lib):
    info = lib.info()
    assert info.loaded and info.path
    assert info.test_double == (WHICH == "test-double")
    assert json.dumps(info.to_json())
    assert info.version_guess


# ------------------------------------------------------------------------- sessions
@pytest.mark.parametrize("level", range(1, 10))
def test_roundtrip_every_level(lib, mixed, level):
    with QzSession(lib, level=level) as s:
        out = s.compress(mixed)
        assert gzip.decompress(out) == mixed
        assert s.decompress(out, len(mixed)) == mixed
        assert sum(src for src, _ in gzip_ext_members(out)) == len(mixed)


@pytest.mark.parametrize(("inp", "gold"), [
    ("mixed_128pages.bin", "mixed_128pages.gzip_ext.L1.gz"),
    ("mixed_128pages.bin", "mixed_128pages.gzip_ext.L9.gz"),
    ("text_1mib.bin", "text_1mib.gzip_ext.L1.gz"),
])
def test_software_session_output_equals_the_golden_vectors(lib, inp, gold):
    """Real library in software mode, or the double: libqatzip 1.3.1's software-path bytes."""
    data = _vector(f"inputs/{inp}")
    want = _vector(f"outputs/{gold}")
    level = int(gold.split(".L")[1].split(".")[0])
    with QzSession(lib, level=level, max_input=len(data)) as s:
        if s.hardware:
            pytest.skip("a QAT device is present: hardware deflate bytes differ by design")
        assert hashlib.sha256(s.compress(data)).hexdigest() == hashlib.sha256(want).hexdigest()
        assert s.engine_calls == 0, "served by the engine's producer (key budget spent)"


def test_session_reports_software_mode_without_a_device(lib):
    with QzSession(lib) as s:
        if s.hardware:
            pytest.skip("a QAT device is present on this host")
        assert s.hw_session_stat == Rc.QZ_NO_HW


def test_hardware_mode_frames_one_member_per_hw_buff_sz(lib, double, mixed):
    double.set(hw=1)
    with QzSession(lib) as s:
        assert s.hardware and s.hw_session_stat == Rc.QZ_OK
        out = s.compress(mixed)
    members = gzip_ext_members(out)
    assert [src for src, _ in members] == [65536] * 8
    assert out == _vector("outputs/mixed_128pages.synthetic_hw_layout_gzip_ext.L1.gz")


def test_set_level_resets_up_the_session(lib, mixed):
    with QzSession(lib, level=1) as s:
        a = s.compress(mixed)
        s.set_level(9)
        b = s.compress(mixed)
    assert a != b and gzip.decompress(b) == mixed


def test_one_call_per_packet_and_never_last0(lib, double, mixed):
    with QzSession(lib) as s:
        for i in range(1, 6):
            s.compress(mixed[: i * 4096 * 16])
    assert double.get("compress_calls") == 5
    assert double.get("last0_calls") == 0
    assert double.get("max_compress_len") == 5 * 4096 * 16


def test_teardown_and_close_release_the_session(lib, double):
    s = QzSession(lib)
    assert double.get("live_sessions") == 1
    s.close()
    s.close()  # idempotent
    assert double.get("live_sessions") == 0
    assert (double.get("teardown_calls"), double.get("close_calls")) == (1, 1)
    with pytest.raises(QatError, match="closed"):
        s.compress(b"x" * 4096)


def test_buffers_are_pinned_then_common(lib, double, mixed):
    with QzSession(lib) as s:
        assert s.pinned is True
    double.set(pinned_fail=1)
    with QzSession(lib) as s:
        assert s.pinned is False
        assert gzip.decompress(s.compress(mixed)) == mixed
    assert double.get("malloc_common") >= 2


def test_session_is_owned_by_one_thread(lib):
    s = QzSession(lib)
    errors = []

    def other():
        try:
            s.compress(b"a" * 4096)
        except QatError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=other)
    t.start()
    t.join(timeout=30)
    s.close()
    assert errors and "one thread" in errors[0]


def test_buffer_grows_for_a_larger_packet(lib, mixed):
    with QzSession(lib, max_input=4096) as s:
        out = s.compress(mixed)
    assert gzip.decompress(out) == mixed


def test_empty_input_is_refused(lib):
    with QzSession(lib) as s, pytest.raises(QatError, match="empty"):
        s.compress(b"")


# ------------------------------------------------------------------------- error paths
def test_init_without_sw_backup_and_no_device(lib, double):
    with pytest.raises(QatLibraryError) as ei:
        QzSession(lib, sw_backup=False)
    assert (ei.value.call, ei.value.rc_name) == ("qzInit", "QZ_NOSW_NO_HW")


@pytest.mark.parametrize("rc", [Rc.QZ_NOSW_NO_HW, Rc.QZ_PARAMS, Rc.QZ_NOSW_LOW_MEM])
def test_setup_errors_name_the_code(lib, double, rc):
    double.set(setup_rc=int(rc))
    with pytest.raises(QatLibraryError) as ei:
        QzSession(lib)
    assert ei.value.call == "qzSetupSessionDeflate"
    assert ei.value.rc_name == rc.name
    assert rc.name in str(ei.value)


def test_bad_params_are_qz_params(lib, double):
    with pytest.raises(QatLibraryError, match="QZ_PARAMS"):
        QzSession(lib, hw_buff_sz=3000)


@pytest.mark.parametrize("rc", [Rc.QZ_FAIL, Rc.QZ_BUF_ERROR, Rc.QZ_TIMEOUT, Rc.QZ_NOSW_LOW_MEM])
def test_compress_error_codes(lib, double, mixed, rc):
    double.set(fail_after=1, fail_rc=int(rc))
    with QzSession(lib) as s:
        s.compress(mixed)
        with pytest.raises(QatLibraryError) as ei:
            s.compress(mixed)
    assert (ei.value.call, ei.value.rc, ei.value.rc_name) == ("qzCompress", int(rc), rc.name)


def test_ok_with_partial_consumption_is_an_error(lib, double, mixed):
    double.set(short_consume_after=0)
    with QzSession(lib) as s, pytest.raises(QatLibraryError, match="consumed 262144 of 524288"):
        s.compress(mixed)


def test_ok_with_partial_output_is_an_error(lib, double, mixed):
    double.set(short_output_after=0)
    with QzSession(lib) as s, pytest.raises(QatLibraryError, match="malformed output"):
        s.compress(mixed)


def test_decompress_truncated_input_is_an_error(lib, mixed):
    with QzSession(lib) as s:
        out = s.compress(mixed)
        with pytest.raises(QatLibraryError, match="produced"):
            s.decompress(out[: len(out) // 2], len(mixed))
        with pytest.raises(QatLibraryError, match="produced"):
            s.decompress(out, len(mixed) - 4096)


def test_decompress_garbage_is_data_error(lib):
    with QzSession(lib) as s, pytest.raises(QatLibraryError, match="QZ_DATA_ERROR"):
        s.decompress(b"\x00" * 1000, 4096)


def test_decompress_rc_override(lib, double, mixed):
    double.set(decompress_rc=int(Rc.QZ_FAIL))
    with QzSession(lib) as s:
        out = s.compress(mixed)
        with pytest.raises(QatLibraryError, match="QZ_FAIL"):
            s.decompress(out, len(mixed))


def test_gzip_ext_member_walk_rejects_bad_buffers(mixed):
    good = _vector("outputs/mixed_128pages.gzip_ext.L1.gz")
    assert gzip_ext_members(good) == [(524288, len(good) - 32)]
    two_calls = _vector("outputs/mixed_128pages.gzip_ext.L1.two_calls_last0_last1.gz")
    # QZ size fields 0/0: the streamed-call fault
    with pytest.raises(QatError, match=r"gzip-ext member at offset 0: ISIZE 886791197 !="):
        gzip_ext_members(two_calls)
    for bad in (good[:-1], good[:20], b"\x1f\x8b\x08\x00" + good[4:], good + b"\x00"):
        with pytest.raises(QatError, match=r"gzip-ext member"):
            gzip_ext_members(bad)


# ------------------------------------------------------------------------- fuzz
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 60), st.binary(max_size=4))
def test_member_walk_raises_only_qat_error(prefix_noise, cut, patch):
    good = bytes.fromhex("1f8b08040000000000ff0c00515a0800") + (5).to_bytes(4, "little") + \
        (7).to_bytes(4, "little") + b"\x03" * 7 + b"\x00" * 4 + (5).to_bytes(4, "little")
    for buf in (prefix_noise, good[:cut] + patch + good[cut + len(patch):], good + prefix_noise):
        try:
            members = gzip_ext_members(buf)
        except QatError:
            continue
        assert all(src >= 0 and dst >= 0 for src, dst in members)


def test_library_resolution_order(monkeypatch, tmp_path):
    from qatmig_engine.qat.binding import ENV_LIBRARY, SONAME, _resolve_request

    monkeypatch.delenv(ENV_LIBRARY, raising=False)
    assert _resolve_request(None) == SONAME
    monkeypatch.setenv(ENV_LIBRARY, str(tmp_path / "env.so"))
    assert _resolve_request(None) == str(tmp_path / "env.so")
    assert _resolve_request(tmp_path / "explicit.so") == str(tmp_path / "explicit.so")
    info = probe_library()
    assert not info.loaded and str(tmp_path / "env.so") in info.error


def test_env_variable_loads_the_same_library(lib, monkeypatch):
    monkeypatch.setenv("QATMIG_LIBQATZIP", lib.requested)
    assert load_library() is lib


# ------------------------------------------------------------- the library's stateful bugs

def test_failed_decompress_does_not_poison_the_next_call(lib, mixed):
    """libqatzip keeps a failed inflate stream in the session (every later qzDecompress returns
    QZ_DATA_ERROR, even on valid input): the binding sets the session up afresh first."""
    with QzSession(lib) as s:
        good = s.compress(mixed)
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF
        with pytest.raises(QatLibraryError, match=r"qzDecompress returned QZ_DATA_ERROR \(-4\)"):
            s.decompress(bytes(bad), len(mixed))
        assert s.resets == 1
        assert s.decompress(good, len(mixed)) == mixed
        with pytest.raises(QatLibraryError, match="produced"):  # stops inside the member
            s.decompress(good[: len(good) // 3], len(mixed))
        assert s.decompress(good, len(mixed)) == mixed


def test_a_reused_session_decompresses_packet_after_packet(lib, mixed):
    with QzSession(lib) as s:
        outs = [s.compress(mixed[i:i + 65536]) for i in range(0, len(mixed), 65536)]
        for i, out in enumerate(outs):
            assert s.decompress(out, 65536) == mixed[i * 65536:(i + 1) * 65536]
        assert s.resets == 0


_MANY_CALLS = """
import ctypes, sys
from qatmig_engine.qat.binding import LIBRARY_SOFTWARE_CALL_BUDGET, QzSession, load_library
lib = load_library(sys.argv[1])
data = bytes(range(256)) * 256
with QzSession(lib) as s:
    for i in range({calls}):
        out = s.compress(data)
        assert s.decompress(out, len(data)) == data
    engine_calls = s.engine_calls
libc = ctypes.CDLL(None)
key = ctypes.c_uint()
rc = libc.pthread_key_create(ctypes.byref(key), None)  # what OpenSSL's init needs
print(engine_calls, rc, LIBRARY_SOFTWARE_CALL_BUDGET)
"""


def test_software_path_key_leak_never_exhausts_the_process(lib):
    """Without a device every library call leaks a pthread key; past ~1020 the process dies
    (the double aborts there). 1100 compress + decompress pairs in a fresh process: the binding
    stops calling the library at its budget and serves the rest with the engine's producer."""
    import subprocess
    import sys

    path = lib.path or lib.requested
    p = subprocess.run([sys.executable, "-c", _MANY_CALLS.format(calls=1100), path],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    engine_calls, rc, budget = map(int, p.stdout.split())
    assert rc == 0
    assert engine_calls == 2 * 1100 - (budget - 1)


_LONG_RUN = """
import json, ssl, sys
from qatmig_engine.codecs import qzformat
from qatmig_engine.params import MigrationParameters
from qatmig_engine.qat import binding
from qatmig_engine.qat.backend import select_backend
from qatmig_engine.qat.binding import QatLibraryError, QzSession, load_library
from qatmig_engine.qat.devices import fixture_tree

path = sys.argv[1]
lib = load_library(path)
data = b"".join(b"%06d qatmig page of text\\n" % i for i in range(6000))[:131072]
failed = 0
with QzSession(lib) as s:
    for i in range(400):
        out = s.compress(data)
        assert out == qzformat.compress(data, 1), f"call {i}: not the software path's bytes"
        bad = bytearray(out)
        bad[len(bad) // 2] ^= 0xFF
        try:
            s.decompress(bytes(bad), len(data))
        except QatLibraryError:
            failed += 1
        assert s.decompress(out, len(data)) == data, f"call {i}: a dirty inflate state"
    resets, engine_calls = s.resets, s.engine_calls
sysfs, dev = fixture_tree("4xxx_pf_dc")
for i in range(400):
    sel = select_backend(MigrationParameters(multifd_compression="qatzip"), sysfs,
                         dev_root=dev, library=path)
    assert sel.backend == "sw", sel.backend
ssl.create_default_context()  # OpenSSL needs pthread keys: it fails once they are gone
print(json.dumps({"failed": failed, "resets": resets, "engine_calls": engine_calls,
                  "library_calls": binding.SOFTWARE_CALLS.used, "reasons": sel.reasons}))
"""


def test_a_long_run_with_failures_and_probes_keeps_the_process_alive(lib):
    """1601 would-be library calls in one fresh process (> the ~1020 keys it has): 400 rounds
    of compress + a corrupted decompress + a valid one on one session, then 400 backend
    selections on a host whose sysfs shows a ready 4xxx the library cannot use. Every valid
    decompress after a failure succeeds (the dirty inflate state is reset), every output is
    the software path's bytes, the budget stops the library calls and the probes, and OpenSSL
    still initialises at the end."""
    import subprocess
    import sys

    path = lib.path or lib.requested
    p = subprocess.run([sys.executable, "-c", _LONG_RUN, path], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    from qatmig_engine.qat.binding import LIBRARY_SOFTWARE_CALL_BUDGET as budget

    assert out["failed"] == 400
    assert out["library_calls"] == budget
    assert out["resets"] >= 1 and out["engine_calls"] > 0
    assert out["reasons"] == [f"libqatzip ({path}) not probed: it ran its software path "
                              f"{budget} times in this process already (no hardware session; "
                              "each such call leaks a pthread key)"]


# ------------------------------------------------------- fallback and truthfulness, the library
def _fake_ready_host() -> dict[str, str]:
    from qatmig_engine.qat.devices import fixture_tree

    sysfs, dev = fixture_tree("4xxx_pf_dc")
    return {"qat_sysfs_root": str(sysfs), "qat_dev_root": str(dev)}


def test_a_ready_device_in_sysfs_without_a_session_is_not_called_hardware(lib):
    """sysfs shows a ready 4xxx, libqatzip loads, but its session lands in software
    (hw_session_stat QZ_NO_HW here, where no device exists): auto selects the engine's own
    software producer and says why; nothing reports hw on sysfs alone."""
    from qatmig_engine.params import MigrationParameters
    from qatmig_engine.qat.backend import select_backend

    p = MigrationParameters(multifd_compression="qatzip", qat_backend="auto")
    p.extra.update(_fake_ready_host(), qat_library=lib.requested)
    sel = select_backend(p)
    if sel.backend == "hw":
        pytest.skip("the library found a QAT device on this host")
    (reason,) = sel.reasons
    assert reason == (f"libqatzip ({lib.path}) has no hardware session (hw_session_stat "
                      "QZ_NO_HW): it would compress in software, which this engine does itself "
                      "(the library's software path leaks a pthread key per call)")


def test_hardware_only_with_a_software_session_fails_before_migrating(lib):
    from qatmig_engine.api import migrate_loopback
    from qatmig_engine.params import MigrationParameters

    p = MigrationParameters(multifd_compression="qatzip", qat_backend="hw", qat_fallback=False)
    p.extra.update(_fake_ready_host(), qat_library=lib.requested)
    st = migrate_loopback(4 << 20, p, timeout=30)
    if st.qat_backend == "hw":
        pytest.skip("the library found a QAT device on this host")
    assert st.status == "failed" and st.normal_pages == 0
    assert st.error_type == "QatUnavailable"
    assert "qat-fallback off" in st.error and "hw_session_stat QZ_NO_HW" in st.error


def test_auto_with_a_software_session_migrates_in_software_and_says_so(lib):
    from qatmig_engine.api import migrate_loopback
    from qatmig_engine.params import MigrationParameters

    p = MigrationParameters(multifd_compression="qatzip", multifd_channels=2)
    p.extra.update(_fake_ready_host(), qat_library=lib.requested)
    j = migrate_loopback(4 << 20, p, timeout=60).to_json()
    if j["qat_backend"] == "hw":
        pytest.skip("the library found a QAT device on this host")
    assert (j["status"], j["verified"], j["qat_backend"]) == ("completed", True, "sw")
    assert any("has no hardware session" in r for r in j["qat_fallback_reasons"])


def _size_class_input(kind: str, n: int) -> bytes:
    import random

    rng = random.Random(f"{kind}-{n}")
    if kind == "random":  # incompressible: stored blocks, flushes of up to 32 K literals
        return rng.randbytes(n)
    line = b"%06d qatmig byte-exactness line\n"
    return b"".join(line % (k % 977) for k in range(n // 30 + 1))[:n]


@pytest.mark.parametrize("level", range(1, 10))
@pytest.mark.parametrize("kind", ["random", "text"])
@pytest.mark.parametrize("n", [1, 1000, 65536, 65537, 200_000, 524_288])
def test_engine_producer_equals_the_library_software_path(lib, level, kind, n):
    """qzformat.compress == one qzCompress(last=1) of the library's software path, at every
    level and size class (levels >= 4 on incompressible data used to carry a second empty
    stored block at a full-flush point)."""
    from qatmig_engine.codecs import qzformat

    data = _size_class_input(kind, n)
    with QzSession(lib, level=level, max_input=n) as s:
        if s.hardware:
            pytest.skip("a QAT device is present: the library's bytes are the device's")
        assert qzformat.compress(data, level) == s.compress(data)
        assert s.engine_calls == 0, "served by the engine's producer (key budget spent)"
