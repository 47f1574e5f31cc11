"""multifd_pair (results, recording, leak checks), qatmig_impl, and the guest image fixture."""

from __future__ import annotations

import os
import signal

import pytest

# Inline pytester runs drop the modules they imported; numpy (used by the Silesia images)
# refuses to load twice in one process, so import it here, outside the nested runs.
import qatmig_engine.silesia.image  # noqa: F401

pytest_plugins = ["pytester"]

LOOPBACK = "--qatmig-impl=pytest_qatmig.testing:loopback_copy"

MIGRATE = """
import os
import pytest

@pytest.fixture
def guest(tmp_path):
    path = tmp_path / "guest.img"
    path.write_bytes(os.urandom(64 * 1024) + bytes(64 * 1024))
    return path

def test_migrate(multifd_pair, guest, qatmig_impl, record_property):
    pair = multifd_pair(channels=2)
    result = pair.migrate(guest)
    assert result.verified is True and result.status == "completed"
    assert result.transferred_bytes == 128 * 1024
    assert (result.normal_pages, result.zero_pages) == (16, 16)
    assert result.throughput_mbps > 0 and result["pages_per_second"] > 0
    assert qatmig_impl.name == "loopback-copy"
    with pytest.raises(AttributeError, match="no field 'bogus'"):
        result.bogus
"""


def test_multifd_pair_migrates_and_records(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(MIGRATE)
    junit = f"--junitxml={pytester.path}/j.xml"
    result = pytester.runpytest(LOOPBACK, "--qatmig-devices=sw", junit)
    result.assert_outcomes(passed=1)
    xml = (pytester.path / "j.xml").read_text()
    assert 'name="qatmig_migration"' in xml and "loopback-copy" in xml


@pytest.mark.parametrize(
    ("leak", "message"),
    [
        ("thread", "*thread 'leaked' (daemon=True) still running*"),
        ("socket", "*file descriptor * -> socket:*"),
        ("file", "*file(s) left in the pair's work directory: left-behind.img*"),
        ("process", "*child process pid * -c import time; time.sleep(30)*"),
    ],
)
def test_teardown_fails_on_leaks(pytester: pytest.Pytester, leak: str, message: str) -> None:
    pytester.makepyfile(MIGRATE.replace('== "loopback-copy"', ".startswith('loopback-copy')"))
    result = pytester.runpytest(f"--qatmig-impl=pytest_qatmig.testing:leaky_{leak}",
                                "--qatmig-devices=sw")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*multifd_pair teardown: the implementation left resources behind:*", message,
    ])
    if leak == "process":  # the inner run was in this process: end the leaked child by pid
        line = next(x for x in result.outlines if "child process pid" in x)
        pid = int(line.split("child process pid ")[1].split()[0])
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_bad_parameters_raise_before_anything_starts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        def test_bad(multifd_pair):
            with pytest.raises(ValueError, match="multifd-channels"):
                multifd_pair(channels=0)
            with pytest.raises(ValueError, match="cannot compress"):
                multifd_pair(compression="zstd")
    """)
    pytester.runpytest(LOOPBACK, "--qatmig-devices=sw").assert_outcomes(passed=1)


def test_guest_argument_is_checked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        def test_bad_guest(multifd_pair):
            with pytest.raises(TypeError, match="takes a guest image"):
                multifd_pair().migrate(12345)
    """)
    pytester.runpytest(LOOPBACK, "--qatmig-devices=sw").assert_outcomes(passed=1)


def test_guest_memory_from_a_corpus_directory(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QATMIG_CACHE_DIR", str(pytester.mkdir("cache")))
    corpus = pytester.mkdir("mycorpus")
    (corpus / "a.txt").write_bytes(b"the quick brown fox " * 5000)
    (corpus / "b.bin").write_bytes(os.urandom(50_000))
    pytester.makepyfile(f"""
        import os

        def test_guest(silesia_guest_memory, multifd_pair):
            assert silesia_guest_memory.corpus == {"dir:" + str(corpus.resolve())!r}
            assert silesia_guest_memory.size == os.path.getsize(silesia_guest_memory) == 1 << 20
            assert silesia_guest_memory.pages == 256
            result = multifd_pair(compression="zlib", level=1).migrate(silesia_guest_memory)
            assert result.verified and result.compression_ratio > 1
    """)
    result = pytester.runpytest("--qatmig-devices=sw", f"--qatmig-corpus={corpus}",
                                "--qatmig-guest-size=1M")
    result.assert_outcomes(passed=1)
