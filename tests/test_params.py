"""Parameters: QEMU's names, defaults and validation texts (migrate-set-parameters)."""

from __future__ import annotations

import re

import pytest
from qatmig_engine.dialects import DIALECTS, get_dialect
from qatmig_engine.errors import ParameterError
from qatmig_engine.params import MigrationParameters


def test_defaults_are_qemus():
    p = MigrationParameters()
    assert p.multifd_channels == 2
    assert p.multifd_compression == "none"
    assert (p.multifd_zlib_level, p.multifd_zstd_level, p.multifd_qatzip_level) == (1, 1, 1)
    assert p.downtime_limit == 300
    assert p.effective_zero_page_detection == "multifd"
    assert MigrationParameters(dialect="qemu-7.2").effective_zero_page_detection == "legacy"


ZLIB_TEXT = "Parameter 'multifd_zlib_level' expects a value between 0 and 9"


@pytest.mark.parametrize(
    "name,value,text",
    [
        ("multifd_channels", 0, "Parameter 'multifd_channels' expects a value between 1 and 255"),
        ("multifd_channels", 256, "Parameter 'multifd-channels' expects uint8_t"),
        ("multifd_zlib_level", 10, ZLIB_TEXT),
        ("multifd_zlib_level", -1, ZLIB_TEXT),
        ("multifd_zstd_level", 21,
         "Parameter 'multifd_zstd_level' expects a value between 0 and 20"),
        ("multifd_qatzip_level", 0,
         "Parameter 'multifd_qatzip_level' expects a value between 1 and 9"),
        ("multifd_qatzip_level", 10,
         "Parameter 'multifd_qatzip_level' expects a value between 1 and 9"),
        ("multifd_compression", "lz4",
         "Parameter 'multifd-compression' does not accept value 'lz4'"),
        ("zero_page_detection", "auto",
         "Parameter 'zero-page-detection' does not accept value 'auto'"),
        ("max_bandwidth", -1, "Parameter 'max_bandwidth' expects an integer in the range of 0 to"),
        ("downtime_limit", 2_000_001,
         "Parameter 'downtime_limit' expects an integer in the range of 0 to 2000 seconds"),
    ],
)
def test_out_of_range_values_use_qemus_text(name, value, text):
    with pytest.raises(ParameterError) as ei:
        MigrationParameters(**{name: value})
    assert str(ei.value).startswith(text)


@pytest.mark.parametrize("level", [0, 9])
def test_zlib_level_edges_accepted(level):
    assert MigrationParameters(multifd_zlib_level=level).multifd_zlib_level == level


def test_zstd_level_zero_is_valid_not_none():
    assert MigrationParameters(multifd_zstd_level=0).compression_level is None  # method none
    p = MigrationParameters(multifd_compression="zstd", multifd_zstd_level=0)
    assert p.compression_level == 0


def test_set_uses_qmp_names_and_keeps_old_value_on_error():
    p = MigrationParameters()
    p.set("multifd-channels", 8)
    assert p.multifd_channels == 8
    with pytest.raises(ParameterError, match=r"Parameter 'multifd_channels' expects a value bet"):
        p.set("multifd-channels", 0)
    assert p.multifd_channels == 8
    with pytest.raises(ParameterError, match="unexpected"):
        p.set("no-such-thing", 1)


def test_methods_per_dialect():
    for method in ("qatzip", "qpl", "uadk"):
        with pytest.raises(ParameterError, match="qemu-9.2"):
            MigrationParameters(multifd_compression=method, dialect="qemu-7.2")
        MigrationParameters(multifd_compression=method, dialect="qemu-9.2")
    assert set(DIALECTS["qemu-7.2"].methods) == {"none", "zlib", "zstd"}


def test_zero_page_detection_multifd_needs_9_0():
    with pytest.raises(ParameterError, match="not available in the qemu-7.2 dialect"):
        MigrationParameters(zero_page_detection="multifd", dialect="qemu-7.2")
    assert MigrationParameters(zero_page_detection="multifd", dialect="qemu-9.0")


def test_dialect_masks():
    assert get_dialect("qemu-7.2").compression_mask == 0x0E
    assert get_dialect("qemu-9.0").compression_mask == 0x0E
    assert get_dialect("qemu-9.2").compression_mask == 0x3E
    with pytest.raises(ParameterError, match="unknown dialect"):
        get_dialect("qemu-1.0")


def test_to_qmp_names():
    q = MigrationParameters(multifd_channels=4).to_qmp()
    assert q["multifd-channels"] == 4 and q["zero-page-detection"] == "multifd"


@pytest.mark.parametrize("method", ["none", "zlib", "zstd", "qatzip"])
@pytest.mark.parametrize(
    ("extra", "text"),
    [({"qat_fault_injection": "after_packets=x"}, "bad value for after_packets: 'x'"),
     ({"qat_fault_injection": 1.5}, "qat_fault_injection: cannot use 1.5"),
     ({"qat_fault_injection": {"after_packets": 1, "colour": "red"}}, "unknown key 'colour'"),
     ({"qat_fault_injection": {"after_packets": 1, "channel": "1"}},
      "channel must be an integer >= 0"),
     ({"qat_fault_injection": "after_packets=0,channel=2"}, "names no channel"),
     ({"qat_sw_engine": "lz4"}, "qat_sw_engine must be one of zlib, isal, not 'lz4'"),
     ({"qat_sysfs_root": ""}, "--qat-sysfs-root expects a directory"),
     ({"qat_library": 3}, "--qat-library expects the path of libqatzip.so.3, not 3")],
)
def test_qat_extras_are_validated_whatever_the_method(method, extra, text):
    """Only the qatzip backend reads these; validation must not depend on it being built."""
    with pytest.raises(ParameterError) as ei:
        MigrationParameters(multifd_compression=method, extra=extra)
    assert text in str(ei.value)
    assert "\n" not in str(ei.value)
    p = MigrationParameters(multifd_compression=method)
    p.extra.update(extra)
    with pytest.raises(ParameterError, match="^" + re.escape(str(ei.value)) + "$"):
        p.validate()


def test_qat_extras_validation_leaves_qemus_parameters_first():
    """A QEMU parameter out of range is still reported with QEMU's text, before the extras."""
    with pytest.raises(ParameterError, match="^Parameter 'multifd_zlib_level' expects"):
        MigrationParameters(multifd_zlib_level=10, extra={"qat_fault_injection": "x"})
    ok = MigrationParameters(multifd_compression="zstd", extra={
        "qat_fault_injection": "after_packets=2,channel=1,rc=QZ_FAIL", "qat_sw_engine": "zlib",
        "qat_sysfs_root": "/nonexistent", "qat_library": "/nonexistent/libqatzip.so.3"})
    assert ok.extra["qat_fault_injection"] == "after_packets=2,channel=1,rc=QZ_FAIL"
