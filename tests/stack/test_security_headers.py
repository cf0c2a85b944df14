"""HTTPS responses carry zimbraReverseProxyResponseHeaders (Carbonio's default set when
unset, per domain when the domain sets it), never over a header the mailbox server set,
never on plain HTTP; a change in LDAP is served within seconds. Real curl, real slapd."""
from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
import time

import ldap3
import pytest

from carbotui.admin.changes import Admin
from carbotui.backends.directory import Directory
from carbotui.protocols import webheaders
from tests.stack.conftest import CA, HOST, REPO, SETTINGS, WEB_PORTS, wait_for, worker_stats

HTTPS, HTTP, ADMIN = WEB_PORTS["https"], WEB_PORTS["http"], WEB_PORTS["admin"]
DEFAULT_NAMES = ["Strict-Transport-Security", "Permissions-Policy", "Referrer-Policy",
                 "X-Content-Type-Options", "X-Robots-Tag", "X-XSS-Protection",
                 "X-Frame-Options", "Expect-CT", "Content-Security-Policy"]


def curl_head(url: str, *args: str, host: str = "", version: str = "--http1.1") -> str:
    """The response head curl got (HTTP/1.1 unless ``version`` says otherwise), as text
    ("" when it got none: a new virtual host's certificate not served yet, say)."""
    resolve = ["--resolve", f"{host}:{HTTPS}:{HOST}", "--resolve", f"{host}:{HTTP}:{HOST}"] \
        if host else []
    out = subprocess.run(["curl", "-sS", version, "--max-time", "10", "--cacert", str(CA),
                          "-o", "/dev/null", "-D", "-", *resolve, *args, url],
                         capture_output=True, timeout=20)
    return out.stdout.decode("latin-1")


def values(head: str, name: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"(?im)^{re.escape(name)}:[ \t]*(.*?)\r?$", head)]


def _versions() -> list[str]:
    try:
        return [w["config"]["version"] for w in worker_stats()]
    except (OSError, ValueError, KeyError):          # a worker restarting
        return []


def settled(what: str = "every worker on the same LDAP settings") -> str:
    """The settings version every worker reports, once they all report the same."""
    return wait_for(lambda: (v := _versions()) and len(set(v)) == 1 and v[0], 15,
                    interval=0.1, what=what)


def every_worker(predicate, what: str, after: str = "", timeout: float = 15.0) -> float:
    """Wait until every worker applied LDAP settings other than version ``after`` (each
    polls LDAP on its own clock), then until ``predicate`` holds for six requests in a
    row (whichever workers take them); the seconds it took."""
    t0 = time.monotonic()
    if after:
        wait_for(lambda: (v := _versions()) and len(set(v)) == 1 and v[0] != after, timeout,
                 interval=0.1, what=f"{what}: a new settings version on every worker")
    wait_for(lambda: all(predicate() for _ in range(6)), timeout, interval=0.2, what=what)
    return time.monotonic() - t0


@contextlib.contextmanager
def scratch_domain(name: str, vhost: str):
    """A domain of this test's own, with one virtual hostname and a demo-CA certificate,
    written through the admin path; removed from LDAP afterwards whatever happened."""
    d = Directory(SETTINGS)
    conn = ldap3.Connection(ldap3.Server(SETTINGS.ldap_urls[0]), SETTINGS.ldap_bind_dn,
                            SETTINGS.ldap_password(), auto_bind=True)
    dn = f"zimbraDomainName={name},ou=domains,{SETTINGS.ldap_base}"
    conn.delete(dn)                                   # left by an interrupted run
    assert conn.add(dn, ["zimbraDomain"], {"zimbraDomainName": name}), conn.result
    try:
        Admin(d, ca_dir=REPO / "var/certs").add_vhost(name, vhost, generate=True)
        yield d
    finally:
        conn.delete(dn)
        conn.unbind()
        d.close()


def test_https_gets_hsts_and_carbonios_default_set_once_each():
    head = curl_head(f"https://mail.demo.test:{HTTPS}/health", host="mail.demo.test")
    assert head.startswith("HTTP/1.1 200")
    for name in DEFAULT_NAMES:
        assert len(values(head, name)) == 1, (name, head)
    assert values(head, "Strict-Transport-Security") == [
        "max-age=31536000; includeSubDomains; preload"]
    assert values(head, "X-Frame-Options") == ["sameorigin"]
    assert values(head, "X-Demo-Server")                 # the server's own headers kept


def test_http2_responses_get_them_too():
    head = curl_head(f"https://mail.demo.test:{HTTPS}/health", host="mail.demo.test",
                     version="--http2")
    assert head.startswith("HTTP/2 200")
    assert [len(values(head, n)) for n in DEFAULT_NAMES] == [1] * len(DEFAULT_NAMES)


def test_the_admin_listener_and_the_proxys_own_error_pages_get_them_too():
    head = curl_head(f"https://{HOST}:{ADMIN}/health")
    assert head.startswith("HTTP/1.1 200") and values(head, "Strict-Transport-Security")
    # a login form over login_body_limit: the proxy answers 413 itself
    big = "username=" + "x" * (SETTINGS.web.login_body_limit + 10)
    head = curl_head(f"https://{HOST}:{HTTPS}/login", "--data-binary", big)
    assert head.startswith("HTTP/1.1 413")
    assert [len(values(head, n)) for n in DEFAULT_NAMES] == [1] * len(DEFAULT_NAMES)


def test_plain_http_gets_none():
    head = curl_head(f"http://mail.demo.test:{HTTP}/mail?x", host="mail.demo.test")
    assert head.startswith(("HTTP/1.1 301", "HTTP/1.1 403"))
    for name in DEFAULT_NAMES:
        assert not values(head, name), (name, head)


def test_per_domain_override_and_the_servers_own_header_wins():
    name = f"hdr{secrets.token_hex(3)}.test"
    vhost = f"www.{name}"
    with scratch_domain(name, vhost) as d:
        admin = Admin(d)
        before = settled()
        # X-Demo-Server is a header the mailbox server (demo/mailbox_web.py) sets itself
        admin.set_response_headers(name, "=", ["X-Demo-Server: proxy", "X-Frame-Options: DENY",
                                               f"X-Scratch: {name}"])
        admin.set_csp_header(name, "Content-Security-Policy: default-src 'none'")
        url = f"https://{vhost}:{HTTPS}/health"
        took = every_worker(lambda: values(curl_head(url, host=vhost), "X-Scratch") == [name],
                            "the domain's headers on every worker", after=before)
        head = curl_head(url, host=vhost)
        assert values(head, "X-Demo-Server") in (["mbox1"], ["mbox2"])   # once, the server's
        assert values(head, "X-Frame-Options") == ["DENY"]
        assert values(head, "Content-Security-Policy") == ["default-src 'none'"]
        assert not values(head, "Strict-Transport-Security")   # the domain's list replaces
        # the other virtual host keeps the global (default) set
        other = curl_head(f"https://mail.demo.test:{HTTPS}/health", host="mail.demo.test")
        assert values(other, "X-Frame-Options") == ["sameorigin"] and \
            not values(other, "X-Scratch")
        print(f"per-domain headers served by every worker after {took:.1f} s")


def test_a_global_change_applies_within_seconds_and_a_bad_value_is_skipped():
    d = Directory(SETTINGS)
    dn = d.entry_dn("zimbraGlobalConfig", "cn", "config")
    probe = secrets.token_hex(6)
    url = f"https://{HOST}:{HTTPS}/health"
    logs = sorted((REPO / "var/log").glob("proxy_*.log"))
    sizes = {p: p.stat().st_size for p in logs}
    before = settled()
    try:
        # what a hand-made LDAP change could hold: prov would refuse the third value
        d.modify(dn, {webheaders.HEADERS_ATTR: [(ldap3.MODIFY_REPLACE, [
            *webheaders.DEFAULT_HEADERS, f"X-Probe: {probe}",
            "X-Bad: a\r\nX-Injected: 1"])]})
        took = every_worker(lambda: values(curl_head(url), "X-Probe") == [probe],
                            "the new global header on every worker", after=before)
        head = curl_head(url)
        assert "X-Injected" not in head and "X-Bad" not in head
        assert values(head, "Strict-Transport-Security")
        wait_for(lambda: any("response header skipped: 'X-Bad: a\\r\\nX-Injected: 1' holds "
                             "a CR" in p.read_bytes()[sizes[p]:].decode("utf-8", "replace")
                             for p in logs), 10, what="the skipped value logged, escaped")
        assert b"X-Injected: 1\n" not in b"".join(p.read_bytes()[sizes[p]:] for p in logs)
        # prov (the admin path) refuses the same value
        done = subprocess.run([str(REPO / ".venv/bin/carbotui"), "prov", "modifyConfig",
                               "+zimbraReverseProxyResponseHeaders", "X-Bad: a\r\nX-Injected: 1"],
                              cwd=REPO, capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and "holds a CR" in done.stderr
        print(f"a global header change served by every worker after {took:.1f} s")
    finally:
        Admin(d).set_response_headers(None, "=", [])
        d.close()
    every_worker(lambda: not values(curl_head(url), "X-Probe"), "the default set back")
    assert values(curl_head(url), "X-Frame-Options") == ["sameorigin"]


def test_prov_changes_the_global_list_and_back():
    probe = secrets.token_hex(6)
    prov = [str(REPO / ".venv/bin/carbotui"), "prov"]
    url = f"https://{HOST}:{HTTPS}/health"
    before = settled()
    try:
        for args in (["modifyConfig", "zimbraReverseProxyResponseHeaders",
                      "Strict-Transport-Security: max-age=600",
                      "zimbraReverseProxyResponseHeaders", f"X-Probe: \"{probe}\""],
                     ["modifyConfig", "carbonioReverseProxyResponseCSPHeader",
                      "Content-Security-Policy: default-src 'self'"]):
            done = subprocess.run(prov + args, cwd=REPO, capture_output=True, text=True,
                                  timeout=30)
            assert done.returncode == 0, done.stderr
        shown = subprocess.run(prov + ["getConfig"], cwd=REPO, capture_output=True, text=True,
                               timeout=30).stdout
        assert f"zimbraReverseProxyResponseHeaders: X-Probe: \"{probe}\"" in shown
        every_worker(lambda: (h := curl_head(url)) and values(h, "X-Probe") == [probe]
                     and values(h, "Content-Security-Policy") == ["default-src 'self'"],
                     "prov's two changes", after=before)
        head = curl_head(url)
        assert values(head, "Strict-Transport-Security") == ["max-age=600"]
        assert values(head, "Content-Security-Policy") == ["default-src 'self'"]
        assert not values(head, "X-Frame-Options")          # not in the list any more
    finally:
        for args in (["modifyConfig", "zimbraReverseProxyResponseHeaders", ""],
                     ["modifyConfig", "carbonioReverseProxyResponseCSPHeader", ""]):
            subprocess.run(prov + args, cwd=REPO, capture_output=True, timeout=30, check=True)
    every_worker(lambda: values(curl_head(url), "X-Frame-Options") == ["sameorigin"],
                 "the default set back")
