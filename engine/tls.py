"""TLS on the main and every multifd channel, as QEMU's ``tls-creds`` / ``tls-hostname`` /
``tls-authz`` migration parameters do it.

* Credentials: a directory laid out as QEMU's ``-object tls-creds-x509,dir=DIR``:
  ``ca-cert.pem`` (always), ``server-cert.pem`` + ``server-key.pem`` (destination),
  ``client-cert.pem`` + ``client-key.pem`` (source; optional as in QEMU, but a destination
  verifying its peer -- QEMU's default ``verify-peer=on``, always on here -- refuses a source
  without one). One directory may hold all five files.
* Every connection does its own handshake: the source is the TLS client, the destination the
  server. The source verifies the destination's certificate against ``ca-cert.pem`` and the
  host name ``tls-hostname`` (QEMU's default: the host of the migration URI), on the main
  channel and on every multifd channel alike.
* ``tls-authz``: the destination admits only client certificates whose distinguished name is
  in the list. QEMU hands ``authz-list``/``authz-simple`` the DN as gnutls'
  ``gnutls_x509_crt_get_dn`` prints it: the certificate's order (most general first, the
  reverse of RFC 4514's), RFC 4514 escaping: ``C=GB,O=Example,CN=client`` (what QEMU 7.2 and
  10.0 print in "TLS x509 authz check for ... is denied", and what ``openssl x509 -noout
  -subject -nameopt RFC2253,-dn_rev`` prints); :func:`distinguished_name` prints it the same
  way from Python's parsed certificate.
* A TLS channel cannot be peeked, so the destination takes the first connection as the main
  channel and the rest as multifd (QEMU 8.0+ does the same for non-peekable channels), and
  the source connects and finishes the main channel's handshake before it opens any multifd
  channel.
* End of a channel: the source sends close_notify on every multifd channel, as QEMU 10.0
  does (10.0 destinations treat a premature TLS end as an error unless the compat property
  ``multifd-clean-tls-termination`` is off); this source also closes only after the
  destination closed the main channel, so a 7.2 or 10.0 destination has read everything by
  then. A multifd channel that ends without close_notify at a packet boundary is accepted,
  as QEMU 7.2 sources close that way.
* The destination sends no TLS 1.3 session tickets: a QEMU source never reads its multifd
  channels, and closing a socket with unread bytes resets it, which cut off data still in
  flight from a QEMU 10.0 source (seen: "connection closed by peer after 131072 of ...").

Every handshake waits in short ticks under the migration's idle timeout and cancellation
(:class:`~qatmig_engine.transport.Activity`): nothing here waits without a bound.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .errors import ParameterError, TLSError
from .transport import Activity, Cancelled

CA_CERT = "ca-cert.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client-cert.pem"
CLIENT_KEY = "client-key.pem"

#: OpenSSL's attribute names -> the short names gnutls (and RFC 4514) print in a DN.
_DN_NAMES = {
    "commonName": "CN", "countryName": "C", "localityName": "L",
    "stateOrProvinceName": "ST", "organizationName": "O", "organizationalUnitName": "OU",
    "streetAddress": "STREET", "domainComponent": "DC", "userId": "UID",
    "emailAddress": "EMAIL",
}


def _escape_dn_value(value: str) -> str:
    """RFC 4514 section 2.4 escaping of one attribute value."""
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;' or (i == 0 and ch in "# ") or (i == len(value) - 1 and ch == " "):
            out.append("\\" + ch)
        elif ch == "\0":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def distinguished_name(subject: Sequence[Sequence[tuple[str, str]]]) -> str:
    """The DN of a certificate subject (``SSLSocket.getpeercert()['subject']``) in the form
    QEMU's ``tls-authz`` matches, as gnutls prints it: certificate order, RFC 4514 escaping
    (``C=GB,O=Example,CN=client``)."""
    rdns = []
    for rdn in subject:
        rdns.append("+".join(f"{_DN_NAMES.get(k, k)}={_escape_dn_value(v)}" for k, v in rdn))
    return ",".join(rdns)


@dataclass(frozen=True)
class TLSSettings:
    """One end's TLS: the credentials directory, the host name the source checks, and the
    destination's allow list of client DNs (None: any certificate signed by the CA)."""

    creds: str
    hostname: str | None = None
    authz: tuple[str, ...] | None = None

    def _path(self, name: str) -> str:
        return os.path.join(self.creds, name)

    def _need(self, name: str, why: str) -> str:
        path = self._path(name)
        if not os.path.isfile(path):
            raise ParameterError(
                f"tls-creds: {path} is missing ({why}); the directory is laid out as QEMU's "
                "tls-creds-x509 dir: ca-cert.pem, server-cert.pem + server-key.pem for a "
                "destination, client-cert.pem + client-key.pem for a source")
        return path

    def _load(self, ctx: ssl.SSLContext, cert: str | None, key: str | None) -> None:
        ca = self._need(CA_CERT, "the CA that signed the peer's certificate")
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise ParameterError(f"tls-creds: cannot load {ca}: {exc}") from None
        if cert is None or key is None:
            return
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise ParameterError(
                f"tls-creds: cannot load {cert} with {key}: {exc} (not a PEM certificate and "
                "its private key?)") from None

    def client_context(self) -> ssl.SSLContext:
        """The source's context: verifies the destination against ``ca-cert.pem`` and the
        host name; presents ``client-cert.pem`` when the directory has one."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        cert = self._path(CLIENT_CERT)
        if os.path.isfile(cert):
            self._load(ctx, cert, self._need(CLIENT_KEY, f"the key of {cert}"))
        else:
            self._load(ctx, None, None)
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """The destination's context: presents ``server-cert.pem`` and requires a client
        certificate signed by ``ca-cert.pem`` (QEMU's ``verify-peer=on``)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        # No TLS 1.3 session tickets: a QEMU source never reads its multifd channels, and
        # closing a socket with unread bytes (the tickets) resets the connection, which can
        # cut off the end of the data still in flight to us.
        ctx.num_tickets = 0
        ctx.options |= ssl.OP_NO_TICKET
        self._load(ctx, self._need(SERVER_CERT, "this destination's certificate"),
                   self._need(SERVER_KEY, "this destination's private key"))
        return ctx


def settings_from(params: object) -> TLSSettings | None:
    """The TLS settings of a ``MigrationParameters`` (None when ``tls-creds`` is unset)."""
    creds = getattr(params, "tls_creds", None)
    if not creds:
        return None
    authz = getattr(params, "tls_authz", None)
    return TLSSettings(str(creds), getattr(params, "tls_hostname", None) or None,
                       tuple(authz) if authz is not None else None)


# ------------------------------------------------------------------------------ messages
_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "unknown CA",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "certificate required",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "handshake failure",
    "TLSV1_ALERT_ACCESS_DENIED": "access denied",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate unknown",
    "TLSV1_ALERT_DECRYPT_ERROR": "decrypt error",
}


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or "")


def explain_client_error(exc: BaseException, what: str, tls: TLSSettings, host: str) -> TLSError:
    """The source's one-line message for a failed handshake or a refusal read after it."""
    hostname = tls.hostname or host
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = exc.verify_message or str(exc)
        if "mismatch" in msg.lower():
            return TLSError(
                f"{what}: TLS: the destination's certificate does not match the host name "
                f"'{hostname}' ({msg}); set tls-hostname to a name in its certificate")
        return TLSError(
            f"{what}: TLS: the destination's certificate failed verification: {msg} "
            f"(is it signed by the CA in {tls._path(CA_CERT)}?)")
    reason = _reason(exc)
    if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED" or (
            reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
            and not os.path.isfile(tls._path(CLIENT_CERT))):
        return TLSError(
            f"{what}: TLS: the destination requires a client certificate and this source "
            f"has none: put client-cert.pem and client-key.pem in {tls.creds}")
    if reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
                  "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "TLSV1_ALERT_DECRYPT_ERROR"):
        return TLSError(
            f"{what}: TLS: the destination rejected this source's client certificate "
            f"(alert: {_ALERTS[reason]}): is {tls._path(CLIENT_CERT)} signed by the CA the "
            "destination trusts?")
    if reason == "TLSV1_ALERT_ACCESS_DENIED":
        return TLSError(
            f"{what}: TLS: the destination denied this source's client certificate (not in "
            "its tls-authz list?)")
    if reason in ("WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING",
                  "PACKET_LENGTH_TOO_LONG") or isinstance(exc, (ssl.SSLEOFError,
                                                                ConnectionError)):
        return TLSError(
            f"{what}: TLS handshake with {host} failed ({reason or exc}): does the "
            "destination use TLS (tls-creds) too?")
    return TLSError(f"{what}: TLS handshake failed: {reason or exc}")


def explain_server_error(exc: BaseException, what: str, tls: TLSSettings) -> TLSError:
    """The destination's one-line message for a failed handshake."""
    reason = _reason(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = exc.verify_message or str(exc)
        return TLSError(
            f"{what}: TLS: the source's client certificate failed verification: {msg} (is it "
            f"signed by the CA in {tls._path(CA_CERT)}?)")
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return TLSError(
            f"{what}: TLS: the source presented no client certificate (its tls-creds "
            "directory has no client-cert.pem); this destination requires one")
    if reason == "TLSV1_ALERT_UNKNOWN_CA":
        return TLSError(
            f"{what}: TLS: the source rejected this destination's certificate (alert: unknown "
            f"CA): the source does not trust the CA that signed {tls._path(SERVER_CERT)}")
    if reason in ("SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"):
        return TLSError(
            f"{what}: TLS: the source rejected this destination's certificate (alert: "
            f"{_ALERTS[reason]}): does the source's tls-hostname (or the host it connects to) "
            f"appear in {tls._path(SERVER_CERT)}?")
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL",
                  "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"):
        return TLSError(
            f"{what}: TLS handshake failed ({reason}): the source does not use TLS "
            "(set tls-creds on both ends)")
    if isinstance(exc, (ssl.SSLEOFError, ConnectionError)) or \
            reason == "UNEXPECTED_EOF_WHILE_READING":
        return TLSError(
            f"{what}: TLS handshake failed: the source closed the connection ({reason or exc})"
            "; see the source's error")
    return TLSError(f"{what}: TLS handshake failed: {reason or exc}")


# ------------------------------------------------------------------------------ handshakes
def _handshake(sock: ssl.SSLSocket, act: Activity, what: str) -> None:
    act.touch()
    while True:
        try:
            sock.do_handshake()
            act.touch()
            return
        except TimeoutError:
            act.check(f"{what} (TLS handshake)")
        except InterruptedError:
            pass


def _shake(act: Activity, what: str, wrap: Callable[[], ssl.SSLSocket],
           explain: Callable[[BaseException], TLSError]) -> ssl.SSLSocket:
    """``wrap()`` a socket and shake hands; the one except ladder of both ends: Cancelled
    when the migration was cancelled meanwhile, else ``explain(exc)`` for a TLS or connection
    error, else a TLSError quoting the OS error."""
    try:
        sock = wrap()
        _handshake(sock, act, what)
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        if act.cancel.is_set():
            raise Cancelled(f"{what}: migration cancelled") from None
        if isinstance(exc, (ssl.SSLError, ConnectionError)):
            raise explain(exc) from None
        raise TLSError(f"{what}: TLS handshake failed: {exc}") from None
    return sock


def client_handshake(raw: socket.socket, ctx: ssl.SSLContext, tls: TLSSettings, host: str,
                     act: Activity, what: str) -> ssl.SSLSocket:
    """Wrap a connected socket as the TLS client (the source) and shake hands; TLSError
    with a clear one-line reason when the destination's certificate does not pass."""
    hostname = tls.hostname or host
    return _shake(
        act, what,
        lambda: ctx.wrap_socket(raw, server_hostname=hostname, do_handshake_on_connect=False),
        lambda exc: explain_client_error(exc, what, tls, host))


def server_handshake(raw: socket.socket, ctx: ssl.SSLContext, tls: TLSSettings,
                     act: Activity, what: str) -> ssl.SSLSocket:
    """Wrap an accepted socket as the TLS server (the destination), shake hands and apply
    ``tls-authz``; TLSError naming the reason (and the refused DN) otherwise."""
    sock = _shake(
        act, what,
        lambda: ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False),
        lambda exc: explain_server_error(exc, what, tls))
    if tls.authz is not None:
        cert = sock.getpeercert() or {}
        dn = distinguished_name(cert.get("subject", ()))  # type: ignore[arg-type]
        if dn not in tls.authz:
            bye(sock)
            raise TLSError(
                f"{what}: TLS x509 authz check for {dn} is denied: the source's client "
                f"certificate is not in tls-authz ({len(tls.authz)} DN"
                f"{'s' if len(tls.authz) != 1 else ''} allowed)")
    return sock


def bye(sock: object, wait: float = 0.05) -> None:
    """Send close_notify (gnutls_bye(GNUTLS_SHUT_WR)): a clean end of this channel's TLS.

    Waits at most ``wait`` s for the peer's own close_notify; reading may go on after."""
    if not isinstance(sock, ssl.SSLSocket):
        return
    old = sock.gettimeout()
    try:
        sock.settimeout(wait)
        sock.unwrap()
    except (OSError, ValueError):
        pass
    finally:
        try:
            sock.settimeout(old)
        except OSError:
            pass


def wait_readable(socks: Iterable[object], timeout: float) -> list[object]:
    """select() that knows TLS: a socket with decrypted bytes pending is readable now."""
    socks = list(socks)
    ready = [s for s in socks if isinstance(s, ssl.SSLSocket) and s.pending()]
    if ready:
        return ready
    r, _, _ = select.select(socks, [], [], timeout)
    return list(r)


def refusal(sock: object, what: str, tls: TLSSettings, host: str,
            wait: float = 1.0) -> TLSError | None:
    """After a failure on a TLS migration's setup: did the destination refuse us?

    With TLS 1.3 the client finishes its handshake before the server has checked the client
    certificate; a destination that refuses it sends an alert (or, for tls-authz, just closes)
    afterwards. Reads what the main channel holds (up to ``wait`` s) and names the refusal,
    or returns None when the main channel is still open and silent."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    deadline = time.monotonic() + wait
    try:
        sock.settimeout(0.05)
    except OSError:
        return None
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except ssl.SSLError as exc:
            return explain_client_error(exc, what, tls, host)
        except OSError:
            data = b""
        if not data:
            return closed_early(what, tls)
        return None
    return None


def closed_early(what: str, tls: TLSSettings) -> TLSError:
    """The source's message when the destination closed the main channel after the TLS
    handshake and before the migration started (no alert to name the reason)."""
    if not os.path.isfile(tls._path(CLIENT_CERT)):
        return TLSError(
            f"{what}: the destination closed the TLS connection before the migration "
            f"started: this source has no client certificate (no client-cert.pem in "
            f"{tls.creds}), which a destination verifying its peer (QEMU's "
            "verify-peer=on) refuses; see the destination's error")
    return TLSError(
        f"{what}: the destination closed the TLS connection before the migration "
        "started: it refused this source (client certificate not in its tls-authz list, "
        "or not accepted) or failed; see the destination's error")


__all__ = ["CA_CERT", "CLIENT_CERT", "CLIENT_KEY", "SERVER_CERT", "SERVER_KEY", "TLSSettings",
           "bye", "client_handshake", "closed_early", "distinguished_name", "explain_client_error",
           "explain_server_error", "refusal", "server_handshake", "settings_from",
           "wait_readable"]
