"""Dashboard actions on the running demo, checked from outside with real clients:
the mail mode seen by curl on port 80, a new virtual host seen by openssl s_client."""
from __future__ import annotations

import subprocess
from pathlib import Path

import ldap3
import pytest

from carbotui.core import certs

from carbotui.backends.directory import Directory
from carbotui.tui.widgets.keyed_table import KeyedTable

from tests.support.tui import drive, settle
from .conftest import flip_mail_mode, live_source

ROOT = Path(__file__).resolve().parents[2]
HTTP, HTTPS = 10080, 10443


def http_status(url: str) -> bytes:
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                          "--max-time", "10", url], capture_output=True, timeout=20)
    return out.stdout


def served_names(servername: str) -> list[str]:
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{HTTPS}",
                          "-servername", servername], input=b"", capture_output=True,
                         timeout=20).stdout
    pem = b"-----BEGIN CERTIFICATE-----" + out.split(b"-----BEGIN CERTIFICATE-----")[1] \
        .split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    return certs.san_names(certs.load_cert(pem))


def test_mail_mode_from_the_keyboard_changes_what_curl_gets(stack):
    url = f"http://127.0.0.1:{HTTP}/mail"

    async def check(app, pilot, directory, after):
        status = b"403" if after == "https" else b"301"
        # Every worker (whichever takes the request) answers the new way within seconds.
        await settle(pilot, until=lambda a: all(http_status(url) == status
                                                for _ in range(4)), timeout=10)

    flip_mail_mode(stack, check)


def test_a_virtual_host_added_from_the_keyboard_is_served_by_sni(stack):
    directory = Directory(stack)
    dn = directory.entry_dn("zimbraDomain", "zimbraDomainName", "demo.test")
    old = next(d for d in directory.domains() if d.name == "demo.test")
    assert "webmail.demo.test" not in old.virtual_hostnames

    async def test(app, pilot):
        await pilot.press("6")
        await settle(pilot, until=lambda a: a.snapshot.directory is not None)
        table = app.screen.query_one("#domains", KeyedTable)
        while table.selected_key != "demo.test":
            await pilot.press("down")
        await pilot.press("a")
        await pilot.pause()
        await pilot.press(*"webmail.demo.test", "enter")        # generate a certificate
        await settle(pilot, until=lambda a: "webmail.demo.test" in served_names(
            "webmail.demo.test"), timeout=15)

    try:
        drive(test, source=live_source(stack), refresh=0.5)
        assert "mail.demo.test" in served_names("mail.demo.test")   # still covered
    finally:
        directory.modify(dn, {
            "zimbraVirtualHostname": [(ldap3.MODIFY_REPLACE, list(old.virtual_hostnames))],
            "zimbraSSLCertificate": [(ldap3.MODIFY_REPLACE, [old.certificate_pem])],
            "zimbraSSLPrivateKey": [(ldap3.MODIFY_REPLACE, [old.private_key_pem])]})
        directory.close()
