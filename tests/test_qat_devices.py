"""QAT discovery against the fake sysfs trees in qatmig_fixtures/sysfs (no hardware needed)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from qatmig_engine.cli import main
from qatmig_engine.errors import QatError
from qatmig_engine.qat.devices import (
    FAMILIES,
    discover,
    fixture_tree,
    fixture_trees,
    hardware_problem,
    parse_cfg_services,
)

REQUIRED_TREES = {"c62x_pf", "4xxx_pf_dc", "4xxx_sym_asym", "4xxx_vfs_vfio", "4xxx_down",
                  "no_device"}


def _expected(tree: str) -> dict:
    sys_root, _ = fixture_tree(tree)
    return json.loads((sys_root.parent / "expected.json").read_text())


def test_required_trees_are_shipped():
    assert REQUIRED_TREES <= set(fixture_trees())


@pytest.mark.parametrize("tree", fixture_trees())
def test_discovery_matches_expected_json(tree):
    sys_root, dev_root = fixture_tree(tree)
    got = {d.bdf: d.to_json() for d in discover(sys_root, dev_root)}
    want = _expected(tree)["devices"]
    assert sorted(got) == sorted(w["bdf"] for w in want)
    for w in want:
        g = got[w["bdf"]]
        for key, value in w.items():
            if key == "reason_contains":
                assert value in g["reason"], (w["bdf"], g["reason"])
            elif key == "vfio_node_endswith":
                assert g["vfio_node"] and g["vfio_node"].endswith(value)
            else:
                assert g[key] == value, (w["bdf"], key, g[key])
        # a verdict always comes with a reason, and only then
        assert bool(g["reason"]) == (not g["ready"])


@pytest.mark.parametrize("tree", fixture_trees())
def test_fixture_trees_hold_no_symlinks(tree):
    """Symlinks do not survive wheels; link files do (see fixtures/sysfs/README.md)."""
    sys_root, _ = fixture_tree(tree)
    for dirpath, dirnames, filenames in os.walk(sys_root.parent):
        for name in dirnames + filenames:
            assert not os.path.islink(os.path.join(dirpath, name))


def test_fixture_trees_work_as_installed_copies(tmp_path):
    """A wheel install copies regular files only: discovery must give the same answer."""
    for tree in fixture_trees():
        sys_root, dev_root = fixture_tree(tree)
        copy = tmp_path / tree
        shutil.copytree(sys_root.parent, copy, symlinks=False)
        a = [d.to_json() for d in discover(sys_root, dev_root)]
        b = [d.to_json() for d in discover(copy / "sys", copy / "dev")]
        for x in a + b:
            x.pop("vfio_node")
        assert a == b


def test_real_symlinks_and_link_files_read_the_same(tmp_path):
    """A real sysfs has symlinks: convert one tree's link files to symlinks and compare."""
    sys_root, dev_root = fixture_tree("4xxx_vfs_vfio")
    copy = tmp_path / "t"
    shutil.copytree(sys_root.parent, copy)
    converted = 0
    for dirpath, _dirs, files in os.walk(copy / "sys"):
        for name in files:
            if name in ("driver", "iommu_group", "physfn"):
                p = Path(dirpath, name)
                target = p.read_text().strip()
                p.unlink()
                p.symlink_to(target)
                converted += 1
    assert converted >= 10
    a = [d.to_json() for d in discover(sys_root, dev_root)]
    b = [d.to_json() for d in discover(copy / "sys", copy / "dev")]
    for x in a + b:
        x.pop("vfio_node")
    assert a == b


def test_order_is_pf_then_its_vfs():
    sys_root, dev_root = fixture_tree("4xxx_vfs_vfio")
    got = [(d.bdf, d.kind) for d in discover(sys_root, dev_root)]
    assert got == [("0000:6b:00.0", "pf"), ("0000:6b:00.1", "vf"), ("0000:6b:00.2", "vf"),
                   ("0000:6b:00.3", "vf"), ("0000:70:00.0", "pf"), ("0000:70:00.1", "vf")]


def _one_device(tmp_path, device_id, *, vendor=0x8086, driver=None, state=None, services=None):
    d = tmp_path / "sys/bus/pci/devices/0000:01:00.0"
    d.mkdir(parents=True)
    (d / "vendor").write_text(f"0x{vendor:04x}\n")
    (d / "device").write_text(f"0x{device_id:04x}\n")
    if driver:
        (d / "driver").symlink_to(f"../../../../bus/pci/drivers/{driver}")
    if state or services:
        (d / "qat").mkdir()
        if state:
            (d / "qat/state").write_text(state + "\n")
        if services:
            (d / "qat/cfg_services").write_text(services + "\n")
    return tmp_path / "sys"


@pytest.mark.parametrize("fam", FAMILIES, ids=[f.name for f in FAMILIES])
@pytest.mark.parametrize("kind", ["pf", "vf"])
def test_every_generation_id_is_recognised(tmp_path, fam, kind):
    dev_id = fam.pf_id if kind == "pf" else fam.vf_id
    sys_root = _one_device(tmp_path, dev_id)
    (d,) = discover(sys_root, tmp_path / "dev")
    assert (d.family, d.kind, d.generation) == (fam.name, kind, fam.generation)
    assert not d.ready and "no driver bound" in d.reason


def test_other_vendor_with_a_qat_id_is_ignored(tmp_path):
    assert discover(_one_device(tmp_path, 0x4940, vendor=0x1234), tmp_path) == []


@pytest.mark.parametrize(
    ("services", "ready"),
    [("dc", True), ("dcc", True), ("sym;dc", True), ("asym;dc", True), ("sym;asym", False),
     ("sym", False), ("asym", False), ("decomp", False), ("", False)],
)
def test_cfg_services_verdict(tmp_path, services, ready):
    sys_root = _one_device(tmp_path, 0x4940, driver="4xxx", state="up", services=services or " ")
    (d,) = discover(sys_root, tmp_path)
    assert d.ready is ready
    if not ready:
        assert "no dc service" in d.reason


def test_pf_on_a_foreign_driver_is_not_ready(tmp_path):
    (d,) = discover(_one_device(tmp_path, 0x4940, driver="vfio-pci", state="up", services="dc"),
                    tmp_path)
    assert not d.ready and "vfio-pci" in d.reason


def test_parse_cfg_services():
    assert parse_cfg_services("sym;dc\n") == ("sym", "dc")
    assert parse_cfg_services(None) is None
    assert parse_cfg_services("") == ()


def test_missing_sysfs_root_is_a_typed_error(tmp_path):
    with pytest.raises(QatError, match="does not exist"):
        discover(tmp_path / "nope")


def test_unknown_fake_host_names_the_known_ones():
    with pytest.raises(QatError, match="4xxx_pf_dc"):
        fixture_tree("no_such_tree")


@pytest.mark.parametrize(
    ("tree", "words"),
    [("no_device", "no QAT device"), ("4xxx_sym_asym", "no dc service"),
     ("4xxx_down", "device is down"), ("401xx_no_driver", "no driver bound"),
     ("4xxx_pf_dc", ""), ("c62x_pf", ""), ("4xxx_vfs_vfio", "")],
)
def test_hardware_problem_names_what_is_missing(tree, words):
    sys_root, dev_root = fixture_tree(tree)
    problem = hardware_problem(discover(sys_root, dev_root), sys_root)
    if words:
        assert words in problem
    else:
        assert problem == ""


def test_this_host_scans_without_error():
    """The real /sys: whatever is there, discovery must not raise (this machine has no QAT)."""
    if not Path("/sys/bus/pci").is_dir():
        pytest.skip("no /sys/bus/pci on this host (container without sysfs)")
    for d in discover():
        assert d.ready == (not d.reason)


# ------------------------------------------------------------------------- CLI
def test_cli_devices_json_on_fake_host(capsys, monkeypatch):
    monkeypatch.setenv("QATMIG_LIBQATZIP", "/nonexistent/libqatzip.so.3")
    rc = main(["devices", "--fake-host", "4xxx_vfs_vfio", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 3  # devices ready, but no library
    assert out["library"]["loaded"] is False
    assert "library not found" in out["library"]["error"]
    assert [d["ready"] for d in out["devices"]] == [True, True, False, False, False, False]
    assert out["problem"] == ""
    assert out["usable"] is False


def test_cli_devices_table_no_device(capsys, monkeypatch):
    monkeypatch.setenv("QATMIG_LIBQATZIP", "/nonexistent/libqatzip.so.3")
    rc = main(["devices", "--fake-host", "no_device"])
    out = capsys.readouterr().out
    assert rc == 3
    assert "no QAT devices under" in out
    assert "libqatzip: not loadable" in out
    assert "software (fallback)" in out


def test_cli_devices_table_columns(capsys, monkeypatch):
    monkeypatch.setenv("QATMIG_LIBQATZIP", "/nonexistent/libqatzip.so.3")
    main(["devices", "--fake-host", "4xxx_sym_asym"])
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:4] == ["BDF", "KIND", "FAMILY", "GENERATION"]
    assert "sym;asym" in out and "no dc service" in out


def test_cli_devices_sysfs_root_option(capsys, monkeypatch):
    monkeypatch.setenv("QATMIG_LIBQATZIP", "/nonexistent/libqatzip.so.3")
    sys_root, dev_root = fixture_tree("4xxx_down")
    main(["devices", "--sysfs-root", str(sys_root), "--dev-root", str(dev_root), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["devices"][0]["state"] == "down"
    assert "device is down" in out["problem"]


def test_cli_devices_rejects_both_roots(capsys):
    assert main(["devices", "--fake-host", "no_device", "--sysfs-root", "/sys"]) == 1
    assert "either --fake-host or --sysfs-root" in capsys.readouterr().err


# ------------------------------------------------------------------------- fuzz
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_text = st.one_of(st.none(), st.text(max_size=40), st.sampled_from(
    ["0x8086", "0x4940", "0x4941", "up", "down", "dc", "sym;asym", "-1", "0", "\n", ";;"]))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vendor=_text, device=_text, state=_text, services=_text, numa=_text, driver=_text,
       group=_text)
def test_discovery_survives_any_attribute_content(tmp_path_factory, vendor, device, state,
                                                  services, numa, driver, group):
    root = tmp_path_factory.mktemp("fuzz")
    d = root / "sys/bus/pci/devices/0000:01:00.0"
    (d / "qat").mkdir(parents=True)
    for name, value in (("vendor", vendor), ("device", device), ("qat/state", state),
                        ("qat/cfg_services", services), ("numa_node", numa),
                        ("driver", driver), ("iommu_group", group), ("physfn", group)):
        if value is not None:
            (d / name).write_text(value, encoding="utf-8")
    for dev in discover(root / "sys", root / "dev"):
        assert dev.ready == (not dev.reason)
