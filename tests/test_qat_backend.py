"""qatzip backend selection, fallback policy and mid-migration faults (no hardware needed).

Hardware is simulated with the fake sysfs trees plus the C test double of libqatzip in its
"hardware" mode (hw_session_stat QZ_OK, one member per 64 KiB). Those tests skip when the real
library is installed (set QATMIG_FORCE_QATZIP_DOUBLE=1 to run them there anyway).
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import threading
from pathlib import Path

import pytest
from qatmig_engine.codecs import get_codec, qzformat
from qatmig_engine.errors import ParameterError, QatLibraryError, QatmigError, QatUnavailable
from qatmig_engine.params import MigrationParameters
from qatmig_engine.qat.backend import (
    FallbackQzEngine,
    IsalQzEngine,
    QzFaultInjection,
    SoftwareQzEngine,
    select_backend,
)
from qatmig_engine.qat.binding import Rc
from qatmig_engine.qat.devices import discover, fixture_tree

_spec = importlib.util.spec_from_file_location(
    "qatzip_double_build", Path(__file__).parent / "qatzip_double" / "build.py")
assert _spec and _spec.loader
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

NO_LIB = "/nonexistent/libqatzip.so.3"
PAGE = 4096


def params(**kw) -> MigrationParameters:
    extra = kw.pop("extra", {})
    p = MigrationParameters(multifd_compression="qatzip", **kw)
    p.extra.update(extra)
    return p


def fake(tree: str) -> dict:
    s, d = fixture_tree(tree)
    return {"sysfs_root": s, "dev_root": d}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("QATMIG_LIBQATZIP", raising=False)
    monkeypatch.delenv("QATMIG_QAT_FAULT", raising=False)


@pytest.fixture(scope="module")
def _double_build(tmp_path_factory):
    if build.real_library():
        pytest.skip("the real libqatzip is installed: hardware is simulated only with the test "
                    "double, set QATMIG_FORCE_QATZIP_DOUBLE=1 to use it")
    try:
        path = build.build(tmp_path_factory.getbasetemp() / "qatzip_double")
    except RuntimeError as exc:
        pytest.skip(f"the libqatzip test double cannot be built: {exc}")
    return path, build.DoubleControl(path)


@pytest.fixture
def double(_double_build, record_property):
    """The double in hardware mode: ``(library_path, control)``."""
    path, ctl = _double_build
    record_property("libqatzip", f"test-double:{path}")
    ctl.reset()
    ctl.set(hw=1)
    yield path, ctl
    ctl.reset()


def packets(n: int = 12, seed: int = 7) -> list[bytes]:
    """Deterministic packets of 1..128 pages: random, text, zero and mixed pages."""
    rnd = random.Random(seed)
    words = [b"migration", b"multifd", b"qatzip", b"page", b"dirty", b"QEMU", b"\n"]
    out = []
    for i in range(n):
        pages = []
        for _ in range(rnd.choice((1, 3, 16, 64, 128))):
            kind = rnd.randrange(3)
            if kind == 0:
                pages.append(rnd.randbytes(PAGE))
            elif kind == 1:
                pages.append(b" ".join(rnd.choice(words) for _ in range(900))[:PAGE])
            else:
                pages.append(bytes([i]) * (PAGE // 2) + rnd.randbytes(PAGE // 2))
        out.append(b"".join(pages))
    return out


def send_and_receive(engine, pkts, channel=0, level=1):
    """Compress through the multifd_qatzip compressor, decode with the software decoder."""
    spec = get_codec("qatzip")
    comp = spec.new_compressor(level, channel=channel, qz=engine)
    dec = spec.new_decompressor(channel=channel)
    received = []
    for p in pkts:
        payload = comp.compress(memoryview(p))
        assert len(payload) <= spec.max_payload(len(p) // PAGE)
        received.append(dec.decompress(payload, len(p) // PAGE))
    comp.close()
    return received


def digest(chunks) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


# ------------------------------------------------------------------------- selection
def test_auto_without_device_or_library_falls_back_with_reasons():
    sel = select_backend(params(), library=NO_LIB, **fake("no_device"))
    assert sel.backend == "sw" and sel.requested == "auto"
    assert any(r.startswith("no QAT device") for r in sel.reasons)
    assert any("library not found" in r for r in sel.reasons)
    assert sel.make_engine(0) is None  # the codec's own byte-exact producer
    j = sel.to_json()
    assert j["qat_backend"] == "sw" and j["qat_fallback_reasons"] == sel.reasons
    assert j["qat_fallback_events"] == []


def test_auto_on_this_host_agrees_with_discovery():
    """The real /sys and the default library resolution (this machine: no QAT)."""
    sel = select_backend(params())
    if sel.backend == "hw":
        pytest.skip("this host has a usable QAT device")
    assert sel.reasons
    if not discover():
        assert any(r.startswith("no QAT device") for r in sel.reasons)


@pytest.mark.parametrize("backend", ["auto", "hw"])
def test_fallback_off_raises_naming_what_is_missing(backend):
    with pytest.raises(QatUnavailable) as ei:
        select_backend(params(qat_backend=backend, qat_fallback=False), library=NO_LIB,
                       **fake("no_device"))
    msg = ei.value.reason
    assert "no QAT device" in msg and "library not found" in msg
    assert "--qat-backend sw" in msg and "qat-fallback off" in msg


@pytest.mark.parametrize(("tree", "words"), [
    ("4xxx_sym_asym", "no dc service"),
    ("4xxx_down", "device is down"),
    ("401xx_no_driver", "no driver bound"),
])
def test_fallback_reason_names_the_device_problem(tree, words):
    sel = select_backend(params(), library=NO_LIB, **fake(tree))
    assert sel.backend == "sw" and any(words in r for r in sel.reasons)
    with pytest.raises(QatUnavailable, match=words):
        select_backend(params(qat_fallback=False), library=NO_LIB, **fake(tree))


def test_ready_device_without_library_names_the_library():
    sel = select_backend(params(), library=NO_LIB, **fake("4xxx_pf_dc"))
    assert sel.backend == "sw"
    assert len(sel.reasons) == 1 and "library not found" in sel.reasons[0]


def test_sw_requested_touches_nothing_even_with_fallback_off():
    sel = select_backend(params(qat_backend="sw", qat_fallback=False), library=NO_LIB,
                         sysfs_root="/nonexistent")
    assert (sel.backend, sel.reasons, sel.library) == ("sw", [], None)
    assert sel.make_engine(0) is None


def test_roots_and_library_from_params_extra():
    s, d = fixture_tree("4xxx_down")
    sel = select_backend(params(extra={"qat_sysfs_root": str(s), "qat_dev_root": str(d),
                                       "qat_library": NO_LIB}))
    assert any("device is down" in r for r in sel.reasons)


def test_missing_sysfs_root_is_a_reason_not_a_crash():
    sel = select_backend(params(), library=NO_LIB, sysfs_root="/nonexistent/sys")
    assert sel.backend == "sw" and any("does not exist" in r for r in sel.reasons)


def test_bad_sw_engine_is_a_parameter_error():
    with pytest.raises(ParameterError, match="qat_sw_engine"):
        select_backend(params(extra={"qat_sw_engine": "lz4"}))


# ------------------------------------------------------------------------- with the double
def test_ready_device_and_hardware_session_selects_hw(double):
    lib, ctl = double
    sel = select_backend(params(), library=lib, **fake("4xxx_vfs_vfio"))
    assert (sel.backend, sel.reasons) == ("hw", [])
    assert sel.library and sel.library.test_double
    engine = sel.make_engine(0)
    assert isinstance(engine, FallbackQzEngine) and engine.name == "hw"
    pkts = packets()
    assert digest(send_and_receive(engine, pkts)) == digest(pkts)
    assert ctl.get("compress_calls") == len(pkts) and ctl.get("last0_calls") == 0
    assert sel.events() == []
    sel.close()
    assert ctl.get("live_sessions") == 0


def test_library_in_software_mode_is_a_fallback_reason(double):
    lib, ctl = double
    ctl.set(hw=0)
    sel = select_backend(params(), library=lib, **fake("4xxx_pf_dc"))
    assert sel.backend == "sw"
    assert any("no hardware session (hw_session_stat QZ_NO_HW)" in r for r in sel.reasons)
    with pytest.raises(QatUnavailable, match="QZ_NO_HW"):
        select_backend(params(qat_fallback=False), library=lib, **fake("4xxx_pf_dc"))


@pytest.mark.parametrize("rc", [Rc.QZ_NOSW_NO_HW, Rc.QZ_NOSW_NO_INST_ATTACH, Rc.QZ_FAIL])
def test_library_setup_error_code_is_named(double, rc):
    lib, ctl = double
    ctl.set(setup_rc=int(rc))
    sel = select_backend(params(), library=lib, **fake("4xxx_pf_dc"))
    assert sel.backend == "sw" and any(rc.name in r for r in sel.reasons)
    with pytest.raises(QatUnavailable, match=rc.name):
        select_backend(params(qat_fallback=False), library=lib, **fake("4xxx_pf_dc"))


def test_no_device_means_the_library_is_not_probed(double):
    lib, ctl = double
    sel = select_backend(params(), library=lib, **fake("no_device"))
    assert sel.backend == "sw" and ctl.get("setup_calls") == 0 and ctl.get("init_calls") == 0
    assert sel.library and sel.library.loaded


# ------------------------------------------------------------------------- mid-migration
@pytest.mark.parametrize(("control", "reason"), [
    ({"fail_after": 5}, "QZ_FAIL"),
    ({"fail_after": 5, "fail_rc": int(Rc.QZ_TIMEOUT)}, "QZ_TIMEOUT"),
    ({"short_consume_after": 5}, "consumed"),
    ({"short_output_after": 5}, "malformed output"),
    ({"drop_hw_after": 5}, "dropped to software"),
])
def test_device_failing_mid_migration_switches_channel_to_software(double, control, reason):
    lib, ctl = double
    sel = select_backend(params(), library=lib, **fake("4xxx_pf_dc"))
    assert sel.backend == "hw"
    ctl.set(**control)
    engine = sel.make_engine(3)
    pkts = packets(12)
    received = send_and_receive(engine, pkts, channel=3)
    assert digest(received) == digest(pkts)  # nothing lost, nothing corrupted
    (event,) = sel.events()
    assert event["channel"] == 3 and event["packet_num"] == 5
    assert reason in event["reason"]
    assert (event["from"], event["to"]) == ("hw", "sw")
    assert ctl.get("compress_calls") == 6  # the library is not called after the fault
    assert engine.name == "sw (fallback from hw)"
    assert sel.to_json()["qat_fallback_events"] == [event]
    sel.close()
    assert ctl.get("live_sessions") == 0


def test_fault_with_fallback_off_fails_the_migration(double):
    lib, ctl = double
    sel = select_backend(params(qat_fallback=False), library=lib, **fake("4xxx_pf_dc"))
    ctl.set(fail_after=2)
    spec = get_codec("qatzip")
    comp = spec.new_compressor(1, channel=0, qz=sel.make_engine(0))
    pkts = packets(4)
    comp.compress(pkts[0])
    comp.compress(pkts[1])
    with pytest.raises(QatLibraryError, match="QZ_FAIL"):
        comp.compress(pkts[2])
    comp.close()
    assert sel.events() == []


def test_channels_fail_independently_each_in_its_thread(double):
    lib, ctl = double
    fault = QzFaultInjection(after_packets=4, channel=2, rc=int(Rc.QZ_TIMEOUT))
    sel = select_backend(params(multifd_channels=4, extra={"qat_fault_injection": fault}),
                         library=lib, **fake("4xxx_vfs_vfio"))
    pkts = packets(10)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def channel(i: int) -> None:
        try:  # the engine is made here: its session belongs to this thread
            results[i] = digest(send_and_receive(sel.make_engine(i), pkts, channel=i))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=channel, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and results == {i: digest(pkts) for i in range(4)}
    (event,) = sel.events()
    assert (event["channel"], event["packet_num"]) == (2, 4)
    assert "QZ_TIMEOUT" in event["reason"] and "injected" in event["reason"]
    assert ctl.get("compress_calls") == 4 * 10 - 6
    sel.close()


@pytest.mark.parametrize("mode", ["error", "truncate"])
def test_fault_injection_from_params_on_the_software_backend(mode):
    """No hardware here: the injected primary is the software producer; fallback still holds."""
    p = params(qat_backend="sw", extra={"qat_fault_injection": f"after_packets=3,mode={mode}"})
    sel = select_backend(p)
    engine = sel.make_engine(1)
    pkts = packets(8)
    assert digest(send_and_receive(engine, pkts, channel=1)) == digest(pkts)
    (event,) = sel.events()
    assert (event["channel"], event["packet_num"]) == (1, 3)


def test_fault_injection_from_env(monkeypatch):
    monkeypatch.setenv("QATMIG_QAT_FAULT", "2")
    sel = select_backend(params(qat_backend="sw"))
    assert sel.fault == QzFaultInjection(after_packets=2)
    pkts = packets(4)
    assert digest(send_and_receive(sel.make_engine(0), pkts)) == digest(pkts)
    assert [e["packet_num"] for e in sel.events()] == [2]


def test_fault_injection_with_fallback_off_raises():
    sel = select_backend(params(qat_backend="sw", qat_fallback=False,
                                extra={"qat_fault_injection": 1}))
    spec = get_codec("qatzip")
    comp = spec.new_compressor(1, qz=sel.make_engine(0))
    comp.compress(b"a" * PAGE)
    with pytest.raises(QatmigError, match="injected fault at packet 1"):
        comp.compress(b"a" * PAGE)


def test_partial_output_with_fallback_off_is_refused_before_it_is_sent():
    """QZ_OK with half the output (a real library fault), no fallback: a typed error naming
    the channel, never a broken packet."""
    sel = select_backend(params(qat_backend="sw", qat_fallback=False,
                                extra={"qat_fault_injection": "after_packets=1,mode=truncate"}))
    comp = get_codec("qatzip").new_compressor(1, channel=3, qz=sel.make_engine(3))
    pkts = packets(2)
    assert qzformat.decompress(comp.compress(pkts[0]), max_output=len(pkts[0])) == pkts[0]
    with pytest.raises(QatmigError, match=r"channel 3: QATzip engine sw output rejected "
                       r"\(qat-fallback off\): gzip-ext member at offset 0 runs past"):
        comp.compress(pkts[1])


def test_a_source_failing_mid_run_releases_its_guest_ram(multifd_pair, guest_odd_size):
    """A channel thread's error keeps its frames; their views of guest RAM must not keep the
    source's mapping (and file) open: the fixture's teardown fails on a left-over descriptor."""
    pair = multifd_pair(compression="qatzip", qat_backend="sw", qat_fallback="off",
                        qat_inject_fault="after_packets=1,rc=QZ_FAIL", judge=False)
    result = pair.migrate(guest_odd_size, timeout=10)
    assert result.status == "failed"
    assert "QZ_FAIL" in result["source_result"]["error"]


def test_fault_injection_parsing():
    assert QzFaultInjection.parse("7") == QzFaultInjection(7)
    f = QzFaultInjection.parse("after_packets=3, channel=1, rc=QZ_TIMEOUT, mode=truncate")
    assert f == QzFaultInjection(3, channel=1, rc=-5, mode="truncate")
    assert QzFaultInjection.parse("after_packets=1,rc=-4").rc == -4
    assert QzFaultInjection.from_params(params(extra={"qat_fault_injection": {
        "after_packets": 2}})) == QzFaultInjection(2)
    assert QzFaultInjection.from_params(params()) is None
    for bad in ("", "x", "after_packets=-1", "channel=1", "after_packets=1,mode=odd",
                "after_packets=1,color=red", "after_packets=one"):
        with pytest.raises(ParameterError, match=r"fault injection:"):
            QzFaultInjection.parse(bad)
    with pytest.raises(ParameterError, match=r"qat_fault_injection: cannot use 1\.5"):
        QzFaultInjection.from_params(params(extra={"qat_fault_injection": 1.5}))


# ------------------------------------------------------------------------- software engines
def test_software_engine_is_the_byte_exact_producer():
    data = packets(1)[0]
    assert SoftwareQzEngine().compress(data, 1) == qzformat.compress(data, 1)


@pytest.mark.parametrize("level", [1, 5, 6, 9])
def test_isal_engine_output_is_gzip_ext_and_decodes_with_the_same_decoder(level):
    """ISA-L writes other deflate bytes (not byte-exact) in the same gzip-ext format."""
    pytest.importorskip("isal", reason="pip install isal to test the ISA-L engine")
    pkts = packets(6, seed=level)
    eng = IsalQzEngine()
    for p in pkts:
        out = eng.compress(p, level)
        (member,) = qzformat.inspect_members(out)
        assert member.header.is_gzip_ext and member.header.qz_src_sz == len(p)
        assert member.header.qz_dest_sz == member.deflate_len
        assert qzformat.decompress(out, max_output=len(p)) == p
    assert digest(send_and_receive(eng, pkts, level=level)) == digest(pkts)


def test_isal_engine_selected_through_params():
    pytest.importorskip("isal", reason="pip install isal to test the ISA-L engine")
    sel = select_backend(params(qat_backend="sw", extra={"qat_sw_engine": "isal"}))
    assert isinstance(sel.make_engine(0), IsalQzEngine)
    assert sel.to_json()["qat_sw_engine"] == "isal"


def test_isal_engine_refuses_bad_levels():
    pytest.importorskip("isal", reason="pip install isal to test the ISA-L engine")
    with pytest.raises(ParameterError, match=r"QATzip level must be between 1 and 9, not 10"):
        IsalQzEngine().compress(b"a" * PAGE, 10)


# ------------------------------------------------------------------------- end to end
def test_end_to_end_fault_at_packet_k_keeps_every_page(double):
    """A loopback migration on simulated hardware whose channel 1 fails from its packet 3."""
    from qatmig_engine.api import migrate_loopback

    lib, ctl = double
    s, d = fixture_tree("4xxx_pf_dc")
    p = params(multifd_channels=2, extra={
        "qat_sysfs_root": str(s), "qat_dev_root": str(d), "qat_library": str(lib),
        "qat_fault_injection": "after_packets=3,channel=1",
    })
    j = migrate_loopback(8 << 20, p, timeout=60).to_json()
    assert (j["status"], j["verified"], j["qat_backend"]) == ("completed", True, "hw")
    assert j["qat_fallback_reasons"] == []
    (event,) = j["qat_fallback_events"]
    assert (event["channel"], event["packet_num"]) == (1, 3)
    assert ctl.get("live_sessions") == 0


def test_end_to_end_auto_without_hardware_migrates_in_software():
    from qatmig_engine.api import migrate_loopback

    s, d = fixture_tree("no_device")
    p = params(extra={"qat_sysfs_root": str(s), "qat_dev_root": str(d), "qat_library": NO_LIB})
    j = migrate_loopback(4 << 20, p, timeout=60).to_json()
    assert (j["status"], j["verified"], j["qat_backend"]) == ("completed", True, "sw")
    assert any(r.startswith("no QAT device") for r in j["qat_fallback_reasons"])


# ------------------------------------------------------------------------- qatmig devices --probe
@pytest.mark.parametrize(("hw", "rc", "words"), [
    (1, 0, "session probe landed on a device"),
    (0, 3, "no hardware session (hw_session_stat QZ_NO_HW)"),
])
def test_cli_devices_probe(double, capsys, hw, rc, words):
    from qatmig_engine.cli import main

    lib, ctl = double
    ctl.set(hw=hw)
    assert main(["devices", "--fake-host", "4xxx_pf_dc", "--library", str(lib), "--probe"]) == rc
    out = capsys.readouterr().out
    assert words in out and "TEST DOUBLE" in out
    assert ctl.get("live_sessions") == 0
