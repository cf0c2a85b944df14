"""Cluster-wide settings from LDAP, applied by every worker without a restart.

Every few seconds the worker reads this node's server entry (mail mode),
the mailbox servers and the domains (virtual hostnames, certificates). When
anything changed it applies it: new TLS contexts for the next handshakes,
new upstream sets, the new mail mode. ``version`` and ``applied_at`` are
reported in the stats, so the dashboard can show when each worker applied a
change.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import stat
import time
from typing import TYPE_CHECKING

from carbotui.backends.directory import DirectoryUnavailable
from carbotui.protocols import webheaders

if TYPE_CHECKING:
    from carbotui.proxy.context import SessionServices

log = logging.getLogger("carbotui.proxy.live")

POLL_INTERVAL = 2.0
DEFAULT_MAIL_MODE = "redirect"       # Carbonio's global default (reference §6)


class LiveConfig:
    def __init__(self, services: SessionServices):
        self.services = services
        self.mail_mode = DEFAULT_MAIL_MODE
        self.version = ""
        self.applied_at = 0.0
        self.vhosts: dict[str, str] = {}     # virtual hostname -> domain
        self.response_headers = webheaders.ResponseHeaders()   # added on HTTPS (web.py)
        self.error = ""

    @property
    def https_port(self) -> int:
        eps = self.services.settings.listen.get("https") or ()
        return eps[0].port if eps else 443

    def _read(self):
        d = self.services.directory
        return d.servers(), d.domains(), d.response_headers()

    async def refresh(self) -> bool:
        """Read LDAP once; apply if changed. False when LDAP could not be read."""
        try:
            servers, domains, headers = await asyncio.to_thread(self._read)
        except DirectoryUnavailable as exc:
            if not self.error:
                log.warning("cluster settings not refreshed (LDAP): %s; keeping the last ones",
                            exc)
            self.error = str(exc)
            return False
        if self.error:
            log.warning("LDAP answers again; cluster settings refresh resumed")
            self.error = ""
        me = servers.get(self.services.settings.node_name)
        mode = (me.mail_mode if me and me.mail_mode else DEFAULT_MAIL_MODE).lower()
        digest = hashlib.sha256(repr((sorted(servers.items()), sorted(
            (d.name, d.virtual_hostnames, d.virtual_ips, d.certificate_pem, d.private_key_pem)
            for d in domains), mode, headers)).encode()).hexdigest()[:12]
        if digest == self.version:
            return True
        self._apply(servers, domains, mode)
        self._apply_headers(headers)
        self.version, self.applied_at = digest, time.time()
        log.info("cluster settings %s applied: mail mode %s, %d virtual host(s), %d server(s)",
                 digest, mode, len(self.vhosts), len(servers))
        return True

    def _apply(self, servers, domains, mode) -> None:
        services = self.services
        settings = services.settings
        if mode not in ("redirect", "https"):
            log.warning("zimbraReverseProxyMailMode %r is not redirect|https; using redirect",
                        mode)
            mode = DEFAULT_MAIL_MODE
        self.mail_mode = mode
        services.use_servers(servers)
        certs, vhosts = {}, {}
        cert_dir = settings.run_dir / "vhosts"
        cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in domains:
            for name in d.virtual_hostnames:
                vhosts[name] = d.name
            if not (d.certificate_pem and d.private_key_pem and d.virtual_hostnames):
                continue
            # The domain name becomes a file name: anything but a DNS name ("../x", "a/b")
            # could write outside the directory.
            if not is_fqdn(d.name):
                log.error("domain %r is not a DNS name; its certificate is not used", d.name)
                continue
            # ssl loads certificates from files only; keep them private to this worker.
            crt = cert_dir / f"{d.name}.{services.index}.crt"
            key = cert_dir / f"{d.name}.{services.index}.key"
            try:
                _write_private(crt, d.certificate_pem)
                _write_private(key, d.private_key_pem)
            except OSError as exc:
                log.error("certificate of %s not written (%s); not used", d.name, exc)
                continue
            for name in d.virtual_hostnames:
                certs[name] = (crt, key)
        try:
            services.tls.load(settings, certs)
        except (OSError, ValueError) as exc:
            # One bad certificate must not take HTTPS down: keep the previous set.
            log.error("virtual host certificates not applied (%s); previous ones stay", exc)
        self.vhosts = vhosts

    def _apply_headers(self, attrs) -> None:
        """zimbraReverseProxyResponseHeaders & co. (global, per domain) -> what web.py
        adds to HTTPS responses; a bad value is skipped and logged (escaped)."""
        problems: list[str] = []
        self.response_headers = webheaders.build(attrs.values, attrs.csp, attrs.domains,
                                                 self.vhosts, problems)
        for problem in dict.fromkeys(problems):
            log.warning("response header %s", problem)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            await self.refresh()


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def is_fqdn(name: str) -> bool:
    """A fully qualified DNS name: two or more labels of letters, digits and inner hyphens
    (IDNs as xn--), at most 253 characters, no trailing dot."""
    if not isinstance(name, str) or not 0 < len(name) <= 253:
        return False
    labels = name.lower().split(".")
    return len(labels) >= 2 and all(_LABEL.fullmatch(label) for label in labels)


def _write_private(path, text: str) -> None:
    """Owner-only, whatever was there: no symlink followed (O_NOFOLLOW), a file left by an
    earlier run gets 0600 before the key is written (fchmod), only a regular file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
                 | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.fchmod(fd, 0o600)
        f.write(text)
