"""Every option in its CLI and its ini form, precedence, and clear usage errors."""

from __future__ import annotations

import pytest

# Inline pytester runs drop the modules they imported; numpy (imported when a corpus option is
# checked) refuses to load twice in one process, so import it here, outside the nested runs.
import qatmig_engine.silesia.image  # noqa: F401

pytest_plugins = ["pytester"]

CHECK = """
import pytest
from pytest_qatmig.fixtures import get_state

@pytest.mark.parametrize(("attr", "expected"), {cases!r})
def test_setting(request, attr, expected):
    settings = get_state(request.config).settings
    assert getattr(settings, attr) == expected
"""

# (option name, value given, Settings attribute, expected resolved value)
CASES = [
    ("impl", "pytest_qatmig.testing:loopback_copy", "impl", "pytest_qatmig.testing:loopback_copy"),
    ("devices", "0000:6b:00.0,0000:70:00.0", "devices", "0000:6b:00.0,0000:70:00.0"),
    ("guest_size", "16M", "guest_size", 16 << 20),
    ("corpus", "corp", "corpus", "corp"),
    ("sysfs_root", "fake/sys", "sysfs_root", "fake/sys"),
    ("peer", "pytest_qatmig.testing:loopback_copy", "peer", "pytest_qatmig.testing:loopback_copy"),
    ("matrix", "full", "matrix", "full"),
]


@pytest.mark.parametrize("form", ["cli", "ini"])
def test_every_option_cli_and_ini(pytester: pytest.Pytester, form: str) -> None:
    """Each option, given on the command line or as its ini key, reaches the settings."""
    pytester.makepyfile(CHECK.format(cases=[(attr, exp) for _, _, attr, exp in CASES]))
    for bdf in ("0000:6b:00.0", "0000:70:00.0"):
        (pytester.path / "fake" / "sys" / "bus" / "pci" / "devices" / bdf).mkdir(parents=True)
    (pytester.path / "corp").mkdir()
    (pytester.path / "corp" / "text").write_bytes(b"some corpus file " * 1000)
    if form == "cli":
        args = [f"--qatmig-{name.replace('_', '-')}={value}" for name, value, _, _ in CASES]
        result = pytester.runpytest("-p", "qatmig", *args)
    else:
        lines = "".join(f"qatmig_{name} = {value}\n" for name, value, _, _ in CASES)
        pytester.makeini(f"[pytest]\n{lines}")
        result = pytester.runpytest("-p", "qatmig")
    result.assert_outcomes(passed=len(CASES))


@pytest.mark.parametrize("form", ["cli", "ini"])
def test_profile_option(pytester: pytest.Pytester, form: str) -> None:
    prof = pytester.path / "host.yaml"
    prof.write_text("name: tiny\nperf:\n  defaults: {min_mbps: 1}\n")
    pytester.makepyfile("""
        from pytest_qatmig.fixtures import get_state

        def test_profile(request):
            state = get_state(request.config)
            assert state.profile.name == "tiny"
            assert state.profile.defaults == {"min_mbps": 1.0}
    """)
    if form == "cli":
        result = pytester.runpytest("--qatmig-profile", str(prof))
    else:
        pytester.makeini(f"[pytest]\nqatmig_profile = {prof}\n")
        result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["qatmig: host profile tiny (*"])


def test_defaults_and_cli_beats_ini(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        from pytest_qatmig.fixtures import get_state

        def test_defaults(request):
            s = get_state(request.config).settings
            assert (s.impl, s.devices, s.profile, s.corpus) == ("reference", "sw", None, "stand-in")
            assert (s.guest_size, s.sysfs_root) == (64 << 20, "/sys")
    """)
    pytester.makeini("[pytest]\nqatmig_devices = 0000:6b:00.0\n")
    pytester.runpytest("--qatmig-devices=sw").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--qatmig-guest-size=12345"], "*not a positive multiple of the 4 KiB page size*"),
        (["--qatmig-guest-size=lots"], "*cannot parse 'lots'*"),
        (["--qatmig-devices=gpu0"], "*'gpu0' is not a PCI address like 0000:6b:00.0*"),
        (["--qatmig-impl=no_such_engine"], "*no implementation of that name*reference*"),
        (["--qatmig-impl=no_such_module:make"], "*cannot import module 'no_such_module'*"),
        (["--qatmig-impl=pytest_qatmig.testing:nothing"], "*has no attribute 'nothing'*"),
        (["--qatmig-impl=os:getcwd"], "*is not an Implementation*"),
        (["--qatmig-sysfs-root=/nonexistent/sys"], "*/nonexistent/sys is not a directory*"),
        (["--qatmig-profile=/nonexistent.yaml"], "*cannot read host profile /nonexistent.yaml*"),
        (["--qatmig-devices=0000:99:00.0"],
         "ERROR: --qatmig-devices: no PCI device 0000:99:00.0 under /sys/bus/pci/devices; QAT "
         "endpoints there: *(`qatmig devices` lists them; use 'auto' or 'sw'*"),
        (["--qatmig-corpus=/nonexistent/corpus"],
         "ERROR: --qatmig-corpus /nonexistent/corpus: corpus '/nonexistent/corpus' is neither*"),
    ],
)
def test_bad_values_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_real_corpus_missing_is_a_usage_error_naming_the_pytest_option(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QATMIG_CACHE_DIR", str(pytester.path / "cache"))
    monkeypatch.delenv("QATMIG_SILESIA", raising=False)
    pytester.makepyfile("def test_x(silesia_guest_memory): pass")
    result = pytester.runpytest("-p", "qatmig", "--qatmig-corpus=silesia")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: --qatmig-corpus silesia: the real Silesia corpus is not available: set "
        "QATMIG_SILESIA*or use --qatmig-corpus stand-in"
    ])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nperf:\n  defaults: {min_speed: 3}\n", "*unknown threshold(s) min_speed*"),
        ("name: x\ndevices:\n  expected: 3\n", "*devices.expected must be a list*"),
        ("- a\n- b\n", "*must be a YAML mapping*"),
        ("name: [unclosed\n", "*is not valid YAML*"),
        ("name: x\nperf:\n  defaults: {min_mbps: fast}\n", "*min_mbps must be a number*"),
    ],
)
def test_bad_profiles_are_usage_errors(pytester: pytest.Pytester, text: str, message: str) -> None:
    prof = pytester.path / "bad.yaml"
    prof.write_text(text)
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(f"--qatmig-profile={prof}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_shipped_host_profiles_load() -> None:
    from pathlib import Path

    from pytest_qatmig.profile import load_profile

    hosts = Path(__file__).resolve().parents[1] / "fixtures" / "hosts"
    profiles = sorted(hosts.glob("*.yaml"))
    assert profiles, f"no host profiles in {hosts}"
    for path in profiles:
        profile = load_profile(path)
        assert profile.name == path.stem


def test_a_shipped_profile_is_usable_by_name(pytester: pytest.Pytester) -> None:
    """`--qatmig-profile software-only` / `qatmig certify --profile software-only` work in any
    folder; a name that is neither a file nor shipped lists the shipped ones."""
    pytester.makepyfile("""
        from pytest_qatmig.fixtures import get_state

        def test_profile(request):
            assert get_state(request.config).profile.name == "software-only"
    """)
    pytester.runpytest("--qatmig-profile=software-only").assert_outcomes(passed=1)
    result = pytester.runpytest("--qatmig-profile=no-such-host")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cannot read host profile no-such-host: No such file or "
                                 "directory (shipped profiles, usable by name: *software-only)"])
