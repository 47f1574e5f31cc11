"""Migration parameters, named and validated as QEMU's migrate-set-parameters does."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .constants import (
    DEFAULT_MIGRATE_MULTIFD_CHANNELS,
    DEFAULT_MIGRATE_MULTIFD_QATZIP_LEVEL,
    DEFAULT_MIGRATE_MULTIFD_ZLIB_LEVEL,
    DEFAULT_MIGRATE_MULTIFD_ZSTD_LEVEL,
    DEFAULT_MIGRATE_SET_DOWNTIME,
)
from .dialects import DEFAULT_DIALECT, METHOD_FLAGS, get_dialect
from .errors import ParameterError

SIZE_MAX = 2**64 - 1
MAX_MIGRATE_DOWNTIME_SECONDS = 2000

#: qatmig's default max-bandwidth: unlimited. QEMU's is MAX_THROTTLE (128 MiB/s), which also
#: throttles multifd and makes an unconfigured benchmark measure the throttle, not the codec.
DEFAULT_MAX_BANDWIDTH = 0


def _range_error(name: str, lo: int, hi: int) -> ParameterError:
    return ParameterError(f"Parameter '{name}' expects a value between {lo} and {hi}")


@dataclass
class MigrationParameters:
    """The multifd parameters QEMU exposes, with QEMU's defaults (attribute = QMP name with _)."""

    multifd_channels: int = DEFAULT_MIGRATE_MULTIFD_CHANNELS
    multifd_compression: str = "none"
    multifd_zlib_level: int = DEFAULT_MIGRATE_MULTIFD_ZLIB_LEVEL
    multifd_zstd_level: int = DEFAULT_MIGRATE_MULTIFD_ZSTD_LEVEL
    multifd_qatzip_level: int = DEFAULT_MIGRATE_MULTIFD_QATZIP_LEVEL
    zero_page_detection: str | None = None  # None = the dialect's default
    max_bandwidth: int = DEFAULT_MAX_BANDWIDTH
    downtime_limit: int = DEFAULT_MIGRATE_SET_DOWNTIME
    dialect: str = DEFAULT_DIALECT
    #: qatzip only: which QATzip backend compresses (auto = hardware when a ready dc device
    #: exists, else software) and whether a missing/failing device falls back to software.
    qat_backend: str = "auto"
    qat_fallback: bool = True
    #: QEMU's ``return-path`` capability (source side): MIG_CMD_OPEN_RETURN_PATH + PING after
    #: the header; the source completes only on the destination's MIG_RP_MSG_SHUT(0).
    return_path: bool = False
    #: QEMU's ``tls-creds``: here the directory QEMU's ``-object tls-creds-x509,dir=DIR``
    #: would load (ca-cert.pem, server-cert.pem/-key.pem, client-cert.pem/-key.pem); None =
    #: no TLS. ``tls-hostname``: the name the source checks in the destination's certificate
    #: (default the host it connects to). ``tls-authz``: the client certificate DNs the
    #: destination admits (QEMU's authz-list, exact match), None = any the CA signed.
    tls_creds: str | None = None
    tls_hostname: str | None = None
    tls_authz: tuple[str, ...] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ParameterError with QEMU's text for the first out-of-range value."""
        d = get_dialect(self.dialect)
        ch = self.multifd_channels
        if not isinstance(ch, int) or isinstance(ch, bool):
            raise ParameterError("Parameter 'multifd-channels' expects uint8_t")
        if ch > 255:
            raise ParameterError("Parameter 'multifd-channels' expects uint8_t")
        if ch < 1:
            raise _range_error("multifd_channels", 1, 255)
        if self.multifd_compression not in METHOD_FLAGS:
            raise ParameterError(
                f"Parameter 'multifd-compression' does not accept value "
                f"'{self.multifd_compression}'"
            )
        d.method_flag(self.multifd_compression)
        for name, lo, hi in (
            ("multifd_zlib_level", 0, 9),
            ("multifd_zstd_level", 0, 20),
            ("multifd_qatzip_level", 1, 9),
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise _range_error(name, lo, hi)
        zpd = self.zero_page_detection
        if zpd is not None:
            if zpd not in ("none", "legacy", "multifd"):
                raise ParameterError(
                    f"Parameter 'zero-page-detection' does not accept value '{zpd}'"
                )
            if zpd not in d.zero_page_detection:
                raise ParameterError(
                    f"zero-page-detection '{zpd}' is not available in the {d.name} dialect "
                    f"(it has {', '.join(d.zero_page_detection)}); use --dialect qemu-9.0 or later"
                )
        if self.qat_backend not in ("auto", "hw", "sw"):
            raise ParameterError(
                f"qat-backend must be auto, hw or sw, not '{self.qat_backend}'"
            )
        self._validate_tls()
        bw = self.max_bandwidth
        if not isinstance(bw, int) or not 0 <= bw <= SIZE_MAX:
            raise ParameterError(
                "Parameter 'max_bandwidth' expects an integer in the range of 0 to "
                f"{SIZE_MAX} bytes/second"
            )
        dl = self.downtime_limit
        if not isinstance(dl, int) or not 0 <= dl <= MAX_MIGRATE_DOWNTIME_SECONDS * 1000:
            raise ParameterError(
                "Parameter 'downtime_limit' expects an integer in the range of 0 to "
                f"{MAX_MIGRATE_DOWNTIME_SECONDS} seconds"
            )
        self._validate_extra()

    def _validate_extra(self) -> None:
        """The qatzip extras (``--qat-inject-fault`` ...) are checked whatever the method: a
        malformed one would otherwise pass silently with none/zlib/zstd (no qatzip backend)."""
        if not isinstance(self.extra, dict):
            raise ParameterError(f"extra must be a dict of engine options, not {self.extra!r}")
        if any(key.startswith("qat_") for key in self.extra if isinstance(key, str)):
            from .qat.backend import validate_extras  # light: cffi loads only with a library

            validate_extras(self.extra, self.multifd_channels)

    def _validate_tls(self) -> None:
        for name in ("tls_creds", "tls_hostname"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ParameterError(f"Parameter '{name.replace('_', '-')}' expects a string")
        authz = self.tls_authz
        if authz is not None:
            if isinstance(authz, str):
                authz = (authz,)
            if not all(isinstance(dn, str) and dn for dn in authz):
                raise ParameterError(
                    "Parameter 'tls-authz' expects distinguished names, e.g. "
                    "'CN=client,O=Example,C=GB'")
            self.tls_authz = tuple(authz)
        if not self.tls_creds:
            for name in ("tls_hostname", "tls_authz"):
                if getattr(self, name):
                    raise ParameterError(
                        f"{name.replace('_', '-')} is set but tls-creds is not: TLS is off "
                        "without tls-creds (give the credentials directory)")
            self.tls_creds = None

    # ---------------------------------------------------------------- helpers
    @property
    def effective_zero_page_detection(self) -> str:
        """zero-page-detection in force (the dialect's default when unset)."""
        return self.zero_page_detection or get_dialect(self.dialect).default_zero_page_detection

    @property
    def compression_level(self) -> int | None:
        """The level parameter of the selected method (None for none/qpl/uadk)."""
        return {
            "zlib": self.multifd_zlib_level,
            "zstd": self.multifd_zstd_level,
            "qatzip": self.multifd_qatzip_level,
        }.get(self.multifd_compression)

    def set(self, name: str, value: object) -> None:
        """migrate-set-parameters for one QMP-style name (``multifd-channels``) and validate."""
        attr = name.replace("-", "_")
        if attr not in {f.name for f in fields(self)} or attr in ("extra", "dialect"):
            raise ParameterError(f"Parameter '{name}' is unexpected")
        old = getattr(self, attr)
        setattr(self, attr, value)
        try:
            self.validate()
        except ParameterError:
            setattr(self, attr, old)
            raise

    def to_qmp(self) -> dict[str, object]:
        """The parameters as QMP names (``multifd-channels`` ...)."""
        out = {k.replace("_", "-"): v for k, v in asdict(self).items() if k not in ("extra",)}
        out["zero-page-detection"] = self.effective_zero_page_detection
        return out
