"""Implementation adapters: loading by entry point / module:factory / qemu:PATH, the reference
engine's adapter, and the real-QEMU adapter (skips without qemu-system-x86_64)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pytest_qatmig.adapters import (
    Implementation,
    ImplementationError,
    PairSpec,
    ReferenceImplementation,
    codec_access,
    entry_point_names,
    load_implementation,
)
from pytest_qatmig.devices import software_device
from pytest_qatmig.testing import LoopbackCopyImplementation

pytest_plugins = ["pytester"]

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(
    QEMU is None, reason="needs qemu-system-x86_64: apt-get install qemu-system-x86"
)


def test_reference_is_an_entry_point() -> None:
    assert "reference" in entry_point_names()
    impl = load_implementation("reference")
    assert isinstance(impl, ReferenceImplementation) and isinstance(impl, Implementation)


def test_module_factory_spec() -> None:
    impl = load_implementation("pytest_qatmig.testing:loopback_copy")
    assert isinstance(impl, LoopbackCopyImplementation)
    assert codec_access(impl, "zstd") is None  # black box: no codec access


def test_unknown_name_lists_the_entry_points() -> None:
    match = r"entry points in 'qatmig.implementations': .*reference"
    with pytest.raises(ImplementationError, match=match):
        load_implementation("nope")


def test_reference_capabilities_and_codec_access() -> None:
    impl = ReferenceImplementation()
    caps = impl.capabilities()
    assert {"none", "zlib", "zstd", "qatzip", "dialect:qemu-7.2", "dialect:qemu-9.2"} <= caps
    assert "tls" not in caps
    codec = codec_access(impl, "zlib")
    assert codec is not None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (PairSpec(channels=0), "multifd_channels"),
        (PairSpec(compression="lz4"), "multifd-compression"),
        (PairSpec(compression="zstd", level=99), "multifd_zstd_level"),
        (PairSpec(compression="none", level=3), "has no level"),
        (PairSpec(compression="qatzip", dialect="qemu-7.2"), "qemu-7.2"),
    ],
)
def test_reference_rejects_bad_parameters(spec: PairSpec, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        ReferenceImplementation().pair(spec, device=software_device(), workdir=tmp_path)


def test_reference_pair_migrates(tmp_path: Path) -> None:
    guest = tmp_path / "g.img"
    guest.write_bytes(bytes(range(256)) * 16 * 64 + bytes(4096 * 64))
    pair = ReferenceImplementation().pair(
        PairSpec(channels=2, compression="zstd", level=1), device=software_device(),
        workdir=tmp_path,
    )
    result = pair.migrate(guest, timeout=30)
    pair.close()
    assert result.verified and result.status == "completed"
    assert result.multifd_compression == "zstd" and result.zero_pages == 64


@needs_qemu
def test_qemu_spec_loads_the_binary() -> None:
    impl = load_implementation(f"qemu:{QEMU}")
    assert impl.name == "qemu"
    caps = impl.capabilities()
    assert {"none", "zlib", "zstd"} <= caps and any(c.startswith("dialect:") for c in caps)
    with pytest.raises(ValueError, match="none, zlib or zstd"):
        impl.pair(PairSpec(compression="qatzip"), device=software_device(), workdir=Path("."))
    with pytest.raises(ValueError, match="multifd_channels"):
        impl.pair(PairSpec(channels=0), device=software_device(), workdir=Path("."))


def test_qemu_spec_with_a_missing_binary_is_clear() -> None:
    with pytest.raises(ImplementationError, match="not found or not executable; install it"):
        load_implementation("qemu:/nonexistent/qemu-system-x86_64")


@needs_qemu
def test_qemu_black_box_through_the_plugin(pytester: pytest.Pytester) -> None:
    """QEMU -> QEMU over loopback, verified by comparing the RAM files, leak-checked."""
    pytester.makepyfile("""
        import os
        import pytest

        @pytest.fixture
        def guest(tmp_path):
            path = tmp_path / "guest.img"
            path.write_bytes((os.urandom(4096) + bytes(4096)) * 128)  # 1 MiB
            return path

        @pytest.mark.qatmig_requires("dialect:qemu-7.2")
        @pytest.mark.parametrize("method", ["none", "zstd"])
        def test_qemu(multifd_pair, guest, method):
            result = multifd_pair(channels=2, compression=method).migrate(guest, timeout=60)
            assert result.status == "completed" and result.verified is True
            assert result.pages_per_second > 0 and result.qemu_transferred_bytes > 0
            # 7.2 counts compressed pages at their uncompressed size: no wire figure then.
            assert (result.transferred_bytes is None) == (method != "none")
    """)
    result = pytester.runpytest(f"--qatmig-impl=qemu:{QEMU}", "--qatmig-devices=sw")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["qatmig: implementation qemu (*QEMU emulator version*"])


def test_reference_qatzip_judges_the_same_host_the_plugin_allocated_from(tmp_path, monkeypatch):
    from qatmig_engine.resources import fixtures_dir

    from pytest_qatmig.devices import discover

    root = fixtures_dir("sysfs", "4xxx_pf_dc", "sys")
    device = next(d for d in discover(root) if d.ready)
    impl = ReferenceImplementation()
    params = impl.parameters(PairSpec(compression="qatzip", channels=1), device)
    assert params.qat_backend == "auto"
    assert params.extra["qat_sysfs_root"] == str(root)
    # Without libqatzip the engine must fall back on that host and say why.
    monkeypatch.setenv("QATMIG_LIBQATZIP", str(tmp_path / "no" / "libqatzip.so.3"))
    pair = impl.pair(PairSpec(compression="qatzip", channels=1), device=device, workdir=tmp_path)
    image = tmp_path / "guest.img"
    image.write_bytes(bytes(range(256)) * 4096 * 4)
    result = pair.migrate(image, timeout=60)
    pair.close()
    assert result.verified
    assert result.qat_backend == "sw"
    assert any("library not found" in r for r in result.qat_fallback_reasons)
