"""Passive QAT endpoint discovery from sysfs (no privileges, no library).

Scans ``<sysfs_root>/bus/pci/devices/*`` for PCI vendor 0x8086 with a QAT physical- or
virtual-function device id, reads the bound driver, ``qat/state``, ``qat/cfg_services``,
``numa_node``, the VF's ``physfn`` and ``iommu_group``, and checks ``<dev_root>/vfio/<group>``.
Each endpoint gets a verdict: can QATzip compress on it (``ready``) and, when not, why.

Links: in a real sysfs ``driver``, ``iommu_group`` and ``physfn`` are symlinks. The fake trees in
``qatmig_fixtures/sysfs`` store them as *link files*: a regular file of that name whose
content is the link target. Wheels and some installers do not preserve symlinks, link files
survive every install. A real sysfs never has a regular file with those names, so reading
"symlink, else link file" is unambiguous.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import QatError

INTEL_VENDOR_ID = 0x8086

#: Compression services (cfg_services entries) QATzip can compress with.
DC_SERVICES = frozenset({"dc", "dcc"})


@dataclass(frozen=True)
class QatFamily:
    """One row of the device-id table (spec qatzip.md §4)."""

    name: str  # device family as the kernel/driver names it: "4xxx", "c62x" ...
    generation: str  # "QAT 1.7", "QAT 2.0 (Gen4)" ...
    pf_id: int
    vf_id: int
    pf_module: str  # kernel module ("" = out-of-tree package only)
    pf_driver: str  # PCI driver name the module registers (basename of the ``driver`` link)
    vf_driver: str  # "vfio-pci" for families whose VFs qatlib drives from userspace
    in_tree_userspace: bool  # VFs usable through vfio-pci + qatlib


FAMILIES: tuple[QatFamily, ...] = (
    QatFamily("dh895xcc", "QAT 1.5/1.6", 0x0435, 0x0443, "qat_dh895xcc", "dh895xcc",
              "dh895xccvf", False),
    QatFamily("c62x", "QAT 1.7", 0x37C8, 0x37C9, "qat_c62x", "c6xx", "c6xxvf", False),
    QatFamily("c3xxx", "QAT 1.7", 0x19E2, 0x19E3, "qat_c3xxx", "c3xxx", "c3xxxvf", False),
    QatFamily("d15xx", "QAT 1.7", 0x6F54, 0x6F55, "", "d15xx", "d15xxvf", False),
    QatFamily("4xxx", "QAT 2.0 (Gen4)", 0x4940, 0x4941, "qat_4xxx", "4xxx", "vfio-pci", True),
    QatFamily("401xx", "QAT 2.0 (Gen4)", 0x4942, 0x4943, "qat_4xxx", "4xxx", "vfio-pci", True),
    QatFamily("402xx", "QAT 2.0 (Gen4)", 0x4944, 0x4945, "qat_4xxx", "4xxx", "vfio-pci", True),
    QatFamily("420xx", "QAT 2.0 (Gen4)", 0x4946, 0x4947, "qat_420xx", "420xx", "vfio-pci", True),
    QatFamily("6xxx", "QAT Gen6", 0x4948, 0x4949, "qat_6xxx", "6xxx", "vfio-pci", True),
)

#: device id -> (family, "pf" | "vf")
DEVICE_IDS: dict[int, tuple[QatFamily, str]] = {}
for _f in FAMILIES:
    DEVICE_IDS[_f.pf_id] = (_f, "pf")
    DEVICE_IDS[_f.vf_id] = (_f, "vf")
del _f


@dataclass(frozen=True)
class QatDevice:
    """One QAT PCI endpoint (PF or VF) and whether QATzip can compress on it."""

    bdf: str
    vendor: int
    device_id: int
    family: str
    generation: str
    kind: str  # "pf" | "vf"
    driver: str | None  # basename of the ``driver`` link; None = no driver bound
    state: str | None  # qat/state ("up"/"down"); None = not exposed (old kernel, gen 1.x, VF)
    cfg_services: tuple[str, ...] | None  # qat/cfg_services split on ';'; None = not exposed
    numa_node: int | None  # None when sysfs says -1 or has no numa_node
    iommu_group: int | None
    vfio_node: str | None  # /dev/vfio/<group> (or noiommu-<group>) when it exists
    physfn: str | None  # a VF's parent PF
    sriov_numvfs: int | None  # a PF's enabled VFs
    ready: bool
    reason: str  # why not ready ("" when ready)

    @property
    def dc(self) -> bool | None:
        """Compression service configured? None = sysfs does not say (gen 1.x, VF, old kernel)."""
        if self.cfg_services is None:
            return None
        return bool(DC_SERVICES.intersection(self.cfg_services))

    @property
    def pci_id(self) -> str:
        return f"{self.vendor:04x}:{self.device_id:04x}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["vendor"] = f"0x{self.vendor:04x}"
        d["device_id"] = f"0x{self.device_id:04x}"
        d["cfg_services"] = None if self.cfg_services is None else ";".join(self.cfg_services)
        d["dc"] = self.dc
        return d


# ------------------------------------------------------------------------- low-level reads
def read_link(path: Path) -> str | None:
    """Target of a sysfs link: a symlink, or a fixture *link file* holding the target."""
    try:
        if path.is_symlink():
            return os.readlink(path)
        if path.is_file():
            text = path.read_text(encoding="ascii", errors="replace").strip()
            return text or None
    except OSError:
        return None
    return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except (OSError, ValueError):
        return None


def _read_int(path: Path, base: int = 0) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def parse_cfg_services(text: str | None) -> tuple[str, ...] | None:
    """``"sym;dc"`` -> ``("sym", "dc")``; None stays None (attribute absent)."""
    if text is None:
        return None
    return tuple(s.strip() for s in text.split(";") if s.strip())


# ------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class _Raw:
    bdf: str
    vendor: int
    device_id: int
    family: QatFamily
    kind: str
    driver: str | None
    state: str | None
    cfg_services: tuple[str, ...] | None
    numa_node: int | None
    iommu_group: int | None
    vfio_node: str | None
    physfn: str | None
    sriov_numvfs: int | None


def _read_endpoint(dev: Path, dev_root: Path) -> _Raw | None:
    vendor = _read_int(dev / "vendor", 16)
    device_id = _read_int(dev / "device", 16)
    if vendor != INTEL_VENDOR_ID or device_id not in DEVICE_IDS:
        return None
    family, kind = DEVICE_IDS[device_id]
    link = read_link(dev / "driver")
    driver = os.path.basename(link.rstrip("/")) if link else None
    numa = _read_int(dev / "numa_node", 10)
    if numa is not None and numa < 0:
        numa = None
    group_link = read_link(dev / "iommu_group")
    group: int | None = None
    if group_link:
        try:
            group = int(os.path.basename(group_link.rstrip("/")))
        except ValueError:
            group = None
    vfio_node = None
    if group is not None:
        for name in (str(group), f"noiommu-{group}"):
            node = dev_root / "vfio" / name
            if node.exists():
                vfio_node = str(node)
                break
    physfn_link = read_link(dev / "physfn") if kind == "vf" else None
    physfn = os.path.basename(physfn_link.rstrip("/")) if physfn_link else None
    return _Raw(
        bdf=dev.name,
        vendor=vendor,
        device_id=device_id,
        family=family,
        kind=kind,
        driver=driver,
        state=_read_text(dev / "qat" / "state"),
        cfg_services=parse_cfg_services(_read_text(dev / "qat" / "cfg_services")),
        numa_node=numa,
        iommu_group=group,
        vfio_node=vfio_node,
        physfn=physfn,
        sriov_numvfs=_read_int(dev / "sriov_numvfs", 10) if kind == "pf" else None,
    )


def _is_qat_driver(name: str, family: QatFamily) -> bool:
    # in-tree and out-of-tree modules register the device name ("4xxx", "c6xx"); accept
    # "qat_*" too for drivers that register their module name.
    return name in (family.pf_driver, family.vf_driver) or name.startswith("qat")


def _pf_verdict(r: _Raw) -> str:
    """Empty string = ready; else the reason in words that say what to fix."""
    if r.driver is None:
        mod = r.family.pf_module or "the out-of-tree QAT driver"
        return f"no driver bound (load {mod})"
    if r.driver == "vfio-pci":
        return "PF bound to vfio-pci (passed through to a guest), not to a QAT driver"
    if not _is_qat_driver(r.driver, r.family):
        return f"bound to '{r.driver}', not to a QAT driver"
    if r.state is not None and r.state != "up":
        return f"device is {r.state} (qat/state); bring it up: echo up > qat/state"
    if r.cfg_services is not None:
        if not DC_SERVICES.intersection(r.cfg_services):
            have = ";".join(r.cfg_services) or "nothing"
            return (
                f"no dc service: cfg_services is '{have}', compression needs dc "
                "(e.g. 'dc' or 'sym;dc'; write it to qat/cfg_services while the device is down)"
            )
    return ""


def _vf_verdict(r: _Raw, pfs: dict[str, _Raw]) -> str:
    pf = pfs.get(r.physfn) if r.physfn else None
    if pf is not None:
        pf_problem = _pf_verdict(pf)
        if pf_problem:
            return f"parent PF {pf.bdf}: {pf_problem}"
    if r.driver is None:
        return "no driver bound (bind the VF to vfio-pci, e.g. with qat_init.sh)"
    if r.family.in_tree_userspace:
        if r.driver != "vfio-pci":
            return f"bound to '{r.driver}', qatlib needs the VF on vfio-pci"
        if r.iommu_group is None:
            return "no iommu_group (enable VT-d: intel_iommu=on)"
        if r.vfio_node is None:
            return f"/dev/vfio/{r.iommu_group} missing (vfio-pci not set up for this group)"
        return ""
    # QAT 1.x: vfio-pci refuses these ids (kernel denylist); the out-of-tree stack drives
    # the VF with its own VF driver (typically inside a guest).
    if r.driver == "vfio-pci":
        return "QAT 1.x VF on vfio-pci: these ids are on the vfio-pci denylist for userspace"
    if not _is_qat_driver(r.driver, r.family):
        return f"bound to '{r.driver}', not to a QAT VF driver"
    return ""


def discover(sysfs_root: str | os.PathLike[str] = "/sys",
             dev_root: str | os.PathLike[str] = "/dev") -> list[QatDevice]:
    """All QAT endpoints under ``<sysfs_root>/bus/pci/devices``, PFs before their VFs.

    A missing ``bus/pci/devices`` folder means no PCI devices (empty list). A ``sysfs_root``
    that does not exist at all is a usage error (:class:`QatError`).
    """
    root = Path(sysfs_root)
    if not root.is_dir():
        raise QatError(f"sysfs root {root} does not exist or is not a directory")
    devices_dir = root / "bus" / "pci" / "devices"
    raws: list[_Raw] = []
    if devices_dir.is_dir():
        for dev in sorted(devices_dir.iterdir(), key=lambda p: p.name):
            r = _read_endpoint(dev, Path(dev_root))
            if r is not None:
                raws.append(r)
    pfs = {r.bdf: r for r in raws if r.kind == "pf"}
    out = []
    for r in raws:
        reason = _pf_verdict(r) if r.kind == "pf" else _vf_verdict(r, pfs)
        out.append(QatDevice(
            bdf=r.bdf, vendor=r.vendor, device_id=r.device_id, family=r.family.name,
            generation=r.family.generation, kind=r.kind, driver=r.driver, state=r.state,
            cfg_services=r.cfg_services, numa_node=r.numa_node, iommu_group=r.iommu_group,
            vfio_node=r.vfio_node, physfn=r.physfn, sriov_numvfs=r.sriov_numvfs,
            ready=not reason, reason=reason,
        ))
    # PFs first, each followed by its VFs; orphan VFs (PF not visible, e.g. in a guest) last.
    order: list[QatDevice] = []
    for d in out:
        if d.kind == "pf":
            order.append(d)
            order.extend(v for v in out if v.kind == "vf" and v.physfn == d.bdf)
    order.extend(v for v in out if v.kind == "vf" and v.physfn not in pfs)
    return order


def hardware_problem(devices: list[QatDevice], sysfs_root: str | os.PathLike[str] = "/sys") -> str:
    """Why no endpoint can compress (empty string when at least one is ready).

    The text names what is missing: no device, device down, no dc service, driver.
    """
    if not devices:
        return (
            f"no QAT device: no PCI function with vendor 0x8086 and a QAT device id under "
            f"{Path(sysfs_root) / 'bus/pci/devices'}"
        )
    if any(d.ready for d in devices):
        return ""
    details = "; ".join(f"{d.bdf} ({d.family} {d.kind}): {d.reason}" for d in devices)
    return f"no QAT endpoint is ready for compression: {details}"


# ------------------------------------------------------------------------- fake hosts
def fixture_trees() -> list[str]:
    """Names of the fake sysfs trees shipped in ``qatmig_fixtures/sysfs``."""
    root = _fixtures_sysfs()
    return sorted(p.name for p in root.iterdir() if (p / "sys").is_dir())


def fixture_tree(name: str) -> tuple[Path, Path]:
    """``(sysfs_root, dev_root)`` of a shipped fake host, e.g. ``fixture_tree("4xxx_pf_dc")``."""
    root = _fixtures_sysfs() / name
    if not (root / "sys").is_dir():
        raise QatError(
            f"no fake sysfs tree '{name}' (have: {', '.join(fixture_trees()) or 'none'})"
        )
    return root / "sys", root / "dev"


def _fixtures_sysfs() -> Path:
    # importlib.resources.files() fails on Python 3.11 for the data-only namespace package
    # qatmig_fixtures under an editable install (its __path__ holds a non-directory finder
    # hook), so walk __path__ ourselves and keep the first real directory.
    import importlib

    try:
        pkg = importlib.import_module("qatmig_fixtures")
    except ImportError as exc:
        raise QatError("qatmig_fixtures is not installed (pip install pytest-qatmig)") from exc
    for entry in list(getattr(pkg, "__path__", [])):
        p = Path(str(entry)) / "sysfs"
        if p.is_dir():
            return p
    try:
        from importlib.resources import files

        return Path(str(files("qatmig_fixtures") / "sysfs"))
    except (ImportError, NotADirectoryError, TypeError) as exc:
        raise QatError("cannot locate qatmig_fixtures/sysfs") from exc
