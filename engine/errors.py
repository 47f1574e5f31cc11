"""One small hierarchy for every error the project raises on purpose.

Callers catch :class:`QatmigError`; nothing else (``AssertionError``, ``IndexError``,
``struct.error``, ``zlib.error``) may escape from code that handles bytes from a peer.
"""

from __future__ import annotations


class QatmigError(Exception):
    """Base class of every deliberate pytest-qatmig error."""


class ParameterError(QatmigError, ValueError):
    """A migration parameter or capability is out of range (QEMU's wording where it has one)."""


def format_location(
    *, connection: int | None = None, channel: int | None = None,
    packet_num: int | None = None, field: str | None = None, offset: int | None = None,
) -> str:
    """``connection 2, channel 1, packet 42, byte 1416, field flags`` (unknown parts left out).

    ``offset`` is the byte offset in the connection's stream (source -> destination).
    """
    parts = [f"{name} {value}" for name, value in (
        ("connection", connection), ("channel", channel), ("packet", packet_num),
        ("byte", offset), ("field", field)) if value is not None]
    return ", ".join(parts)


class WireError(QatmigError):
    """Bytes from a peer violate the multifd wire format.

    ``channel``, ``packet_num`` and ``field`` locate the deviation when known.
    """

    def __init__(
        self,
        message: str,
        *,
        channel: int | None = None,
        packet_num: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.channel = channel
        self.packet_num = packet_num
        self.field = field

    def where(self) -> str:
        """Human-readable location, e.g. ``channel 1, packet 42, field flags``."""
        return format_location(channel=self.channel, packet_num=self.packet_num,
                               field=self.field)


class InitPacketError(WireError):
    """A MultiFDInit_t (channel init packet) was rejected."""


class PacketError(WireError):
    """A MultiFDPacket_t header (or its payload size) was rejected."""


class UnsupportedDialectFeature(WireError):
    """The peer used a feature the negotiated dialect does not have (e.g. 10.x device state)."""


class StreamError(WireError):
    """The main migration stream (QEVM file format) is malformed."""


class CodecError(QatmigError):
    """A payload could not be compressed or decompressed exactly."""

    def __init__(self, message: str, *, channel: int | None = None) -> None:
        super().__init__(message)
        self.channel = channel


class PayloadSizeError(CodecError):
    """A payload decompresses to more or fewer bytes than normal_pages x page_size."""


class MigrationError(QatmigError):
    """A migration failed (connection, peer, timeout); the destination is then ``failed``."""


class PeerTimeout(MigrationError):
    """The peer went silent for longer than the configured timeout."""


class ChannelClosed(MigrationError):
    """A channel was closed by the peer before the migration completed."""


class TLSError(MigrationError):
    """A TLS handshake or check failed: wrong CA, wrong hostname, a missing client
    certificate, a client certificate not in ``tls-authz``, or a peer without TLS."""


class QatError(QatmigError):
    """QAT hardware or libqatzip problem."""


class QatUnavailable(QatError):
    """Hardware path requested but not usable; ``reason`` names what is missing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class QatLibraryError(QatError):
    """libqatzip returned an error code (``rc``, with the library's name ``rc_name``)."""

    def __init__(self, call: str, rc: int, rc_name: str, detail: str = "") -> None:
        msg = f"{call} returned {rc_name} ({rc})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)
        self.call = call
        self.rc = rc
        self.rc_name = rc_name


class CorpusError(QatmigError):
    """A corpus file is missing, has the wrong size or the wrong sha256."""


class QemuError(QatmigError):
    """A QEMU process or its QMP monitor misbehaved (start failure, QMP error, wedged)."""


class QemuTimeout(QemuError):
    """QEMU (its QMP monitor, its start-up or a migration it runs) did not answer in time."""
