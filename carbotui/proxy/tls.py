"""TLS contexts: one server context whose SNI callback picks the certificate.

Every mail TLS listener (IMAPS, POP3S, STARTTLS upgrades) shares the front
context; the HTTPS and admin listeners share ``web``, the same but offering ALPN
``h2`` and ``http/1.1`` (RFC 7301; ``[web] h2 = false``: ``http/1.1`` only), as
does each virtual host's context the SNI callback switches a web handshake to (the
ALPN choice is made with the context in force after SNI). A certificate loaded
after a reload is used by the next handshake everywhere, and live sessions keep the
one they negotiated.

The implicit-TLS mail listeners (IMAPS, POP3S) run their handshakes through
carbotui/proxy/tlsbio.py (listeners.implicit_tls), STARTTLS and the web listeners through
uvloop's own TLS (loop.start_tls, create_server(ssl=...)); both use these contexts and
the same SNI callback (it gets uvloop's ssl.SSLObject, or tlsbio's _ssl._SSLSocket, the
C object beneath one: both have the ``context`` setter it uses).
"""
from __future__ import annotations

import logging
import ssl
from pathlib import Path

from carbotui.core.settings import Settings

log = logging.getLogger("carbotui.proxy.tls")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class DirectSSLObject(ssl.SSLObject):
    """The SSLObject uvloop's TLS gets from our contexts (``sslobject_class``). uvloop
    calls ``read``, ``write`` and ``pending`` per TLS record; ssl.SSLObject's are Python
    methods that only call the same-named methods of the C object beneath (an
    interpreted frame each: 3 per HTTPS keep-alive request). This one holds the C
    object's own bound methods under those names, so uvloop calls OpenSSL's wrappers
    directly, with the same arguments, results and errors. Everything else (handshake,
    ``unwrap``, ``getpeercert``, the SNI callback's ``context`` setter) is
    ssl.SSLObject's. (A caller passing ``buffer=None`` explicitly would need the Python
    wrapper; uvloop passes a size, or a size and a buffer.)"""

    @classmethod
    def _create(cls, *args, **kwargs):
        self = super()._create(*args, **kwargs)
        native = self._sslobj
        self.read, self.write, self.pending = native.read, native.write, native.pending
        return self


def _server_context(settings: Settings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[settings.tls_min_version]
    ctx.set_ciphers(settings.tls_ciphers)
    # No resumption: workers share no ticket key and no session cache, so a reconnecting
    # client would rarely land where its session is. OP_NO_TICKET alone still sends two
    # TLS 1.3 tickets per handshake (kept in a per-worker cache): -12% IMAPS CPU without.
    # nginx's mail module (bench/run.py: ssl_session_tickets off, its default
    # ssl_session_cache none) does send those two, never stored: its handshake costs ~100k
    # instructions more than ours, with the same version, cipher, group (X25519, the
    # client's key share), signature scheme and certificate (openssl s_client -trace).
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.num_tickets = 0
    ctx.sslobject_class = DirectSSLObject
    return ctx


def web_alpn(settings: Settings) -> list[str]:
    return ["h2", "http/1.1"] if settings.web.h2 else ["http/1.1"]


class TlsContexts:
    def __init__(self, settings: Settings):
        self.front = _server_context(settings)
        self.web = _server_context(settings)
        self.by_name: dict[str, ssl.SSLContext] = {}
        self.web_by_name: dict[str, ssl.SSLContext] = {}
        self.load(settings)

    def load(self, settings: Settings, vhosts: dict[str, tuple[Path, Path]] | None = None) -> None:
        """(Re)load the default certificate and the per-hostname ones."""
        alpn = web_alpn(settings)
        for front in (self.front, self.web):
            front.load_cert_chain(settings.tls_certificate, settings.tls_private_key)
        self.web.set_alpn_protocols(alpn)
        by_name, web_by_name = {}, {}
        for name, (cert, key) in (vhosts or {}).items():
            for table, web in ((by_name, False), (web_by_name, True)):
                ctx = _server_context(settings)
                ctx.load_cert_chain(cert, key)
                if web:
                    ctx.set_alpn_protocols(alpn)
                table[name.lower()] = ctx
        self.by_name, self.web_by_name = by_name, web_by_name
        # The SNI callback is a Python call in every handshake: only where a name has a
        # certificate of its own to pick.
        self.front.sni_callback = self._pick if by_name else None
        self.web.sni_callback = self._pick if web_by_name else None

    def for_listener(self, kind: str) -> ssl.SSLContext:
        """The context of a TLS listener: ``web`` for https and admin, else ``front``."""
        return self.web if kind in ("https", "admin") else self.front

    def _pick(self, sslobj, server_name: str | None, ctx) -> None:
        if server_name:
            table = self.web_by_name if ctx is self.web else self.by_name
            picked = table.get(server_name.lower())
            if picked is not None:
                sslobj.context = picked
        return None


def upstream_context(cafile: str | None = None) -> ssl.SSLContext:
    """For TLS to the mailbox servers (the seed warns plaintext is LAN-only): always
    verified, against ``cafile`` or the system's CAs."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.sslobject_class = DirectSSLObject
    return ctx
