"""TLS contexts: one server context whose SNI callback picks the certificate.

Every TLS listener (IMAPS, POP3S, STARTTLS upgrades, later HTTPS) shares the
front context, so a certificate loaded after a reload is used by the next
handshake everywhere, and live sessions keep the one they negotiated.
"""
from __future__ import annotations

import logging
import ssl
from pathlib import Path

from carbotui.core.settings import Settings

log = logging.getLogger("carbotui.proxy.tls")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def _server_context(settings: Settings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[settings.tls_min_version]
    ctx.set_ciphers(settings.tls_ciphers)
    # No resumption: workers share no ticket key and no session cache, so a reconnecting
    # client would rarely land where its session is. OP_NO_TICKET alone still sends two
    # TLS 1.3 tickets per handshake (kept in a per-worker cache): -12% IMAPS CPU without.
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.num_tickets = 0
    return ctx


class TlsContexts:
    def __init__(self, settings: Settings):
        self.front = _server_context(settings)
        self.by_name: dict[str, ssl.SSLContext] = {}
        self.front.sni_callback = self._pick
        self.load(settings)

    def load(self, settings: Settings, vhosts: dict[str, tuple[Path, Path]] | None = None) -> None:
        """(Re)load the default certificate and the per-hostname ones."""
        self.front.load_cert_chain(settings.tls_certificate, settings.tls_private_key)
        by_name = {}
        for name, (cert, key) in (vhosts or {}).items():
            ctx = _server_context(settings)
            ctx.load_cert_chain(cert, key)
            by_name[name.lower()] = ctx
        self.by_name = by_name

    def _pick(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx) -> None:
        if server_name:
            ctx = self.by_name.get(server_name.lower())
            if ctx is not None:
                sslobj.context = ctx
        return None


def upstream_context(cafile: str | None = None) -> ssl.SSLContext:
    """For TLS to the mailbox servers (the seed warns plaintext is LAN-only): always
    verified, against ``cafile`` or the system's CAs."""
    return ssl.create_default_context(cafile=cafile)
