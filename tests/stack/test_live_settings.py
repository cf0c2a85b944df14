"""Cluster settings changed in LDAP reach every worker without a restart."""
from __future__ import annotations

import subprocess

import ldap3
import pytest

from carbotui.core import certs
from carbotui.backends.directory import Directory
from tests.stack.conftest import (CA, HOST, PASSWORD, REPO, SETTINGS, WEB_PORTS,
                                        first_subject_imap, imap_login, process_pid,
                                        supervisorctl, wait_for, worker_stats)

pytestmark = pytest.mark.usefixtures("proxy_up")
HTTPS = WEB_PORTS["https"]


def curl(*args: str) -> bytes:
    out = subprocess.run(["curl", "-sS", "--http1.1", "-i", "--max-time", "10", "--cacert", str(CA),
                          "--resolve", f"mail.demo.test:{WEB_PORTS['http']}:{HOST}",
                          "--resolve", f"mail.demo.test:{HTTPS}:{HOST}", *args],
                         capture_output=True, timeout=20)
    return out.stdout


def set_mail_mode(mode: str) -> None:
    d = Directory(SETTINGS)
    dn = d.entry_dn("zimbraServer", "cn", SETTINGS.node_name)
    d.modify(dn, {"zimbraReverseProxyMailMode": [(ldap3.MODIFY_REPLACE, [mode])]})
    d.close()


def wait_every_worker_applied(mode: str) -> None:
    """Workers poll LDAP on their own clocks: until each reports the mode, a few requests in a
    row may all reach the one that already switched."""
    wait_for(lambda: all(w["config"]["mail_mode"] == mode for w in worker_stats()), 10,
             what=f"mail mode {mode} applied by every worker")


def test_mail_mode_switches_at_runtime_on_every_worker():
    pids = [process_pid(l.split()[0]) for l in supervisorctl("status").splitlines()
            if l.startswith("proxy:")]
    url = f"http://mail.demo.test:{WEB_PORTS['http']}/mail?x=1"
    try:
        set_mail_mode("https")
        wait_every_worker_applied("https")
        # Every request (whichever worker takes it) now gets the HTTPS-only error.
        wait_for(lambda: all(curl(url).startswith(b"HTTP/1.1 403") for _ in range(6)), 5,
                 what="https mode on every worker")
        set_mail_mode("redirect")
        wait_every_worker_applied("redirect")
        wait_for(lambda: all(curl(url).startswith(b"HTTP/1.1 301") for _ in range(6)), 5,
                 what="redirect mode on every worker")
        assert f"Location: https://mail.demo.test:{HTTPS}/mail?x=1".encode() in curl(url)
    finally:
        set_mail_mode("redirect")
    assert [process_pid(l.split()[0]) for l in supervisorctl("status").splitlines()
            if l.startswith("proxy:")] == pids          # no restart


def serial_seen(servername: str) -> int:
    out = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{HTTPS}", "-servername",
                          servername], input=b"", capture_output=True, timeout=20)
    pem = out.stdout.split(b"-----BEGIN CERTIFICATE-----")[1].split(b"-----END")[0]
    cert = certs.load_cert(b"-----BEGIN CERTIFICATE-----" + pem + b"-----END CERTIFICATE-----\n")
    return cert.serial_number


def test_a_certificate_changed_in_ldap_is_served_without_dropping_sessions():
    d = Directory(SETTINGS)
    dn = d.entry_dn("zimbraDomain", "zimbraDomainName", "demo.test")
    old = next(x for x in d.domains() if x.name == "demo.test")
    ca_cert, ca_key = certs.read_pair(REPO / "var/certs/ca.crt", REPO / "var/certs/ca.key")
    cert, key = certs.issue(ca_cert, ca_key, ["mail.demo.test"], [], 30)
    live = imap_login("user19@demo.test")
    try:
        d.modify(dn, {"zimbraSSLCertificate": [(ldap3.MODIFY_REPLACE,
                                                [certs.cert_to_pem(cert).decode()])],
                      "zimbraSSLPrivateKey": [(ldap3.MODIFY_REPLACE,
                                               [certs.key_to_pem(key).decode()])]})
        wait_for(lambda: all(serial_seen("mail.demo.test") == cert.serial_number
                             for _ in range(4)), 10, interval=0.2, what="the new certificate")
        assert first_subject_imap(live) == "Subject: Welcome to mbox1"   # session kept
    finally:
        d.modify(dn, {"zimbraSSLCertificate": [(ldap3.MODIFY_REPLACE, [old.certificate_pem])],
                      "zimbraSSLPrivateKey": [(ldap3.MODIFY_REPLACE, [old.private_key_pem])]})
        d.close()
        live.logout()
    wait_for(lambda: serial_seen("mail.demo.test") != cert.serial_number, 10, interval=0.2,
             what="the old certificate back")


def test_admin_console_routes_by_admin_token(tmp_path):
    jar = tmp_path / "jar"
    subprocess.run(["curl", "-sS", "--http1.1", "--cacert", str(CA), "-c", str(jar), "-d",
                    f"username=user02@demo.test&password={PASSWORD}",
                    f"https://{HOST}:{HTTPS}/login"], capture_output=True, timeout=20)
    token = next(l.split("\t")[-1] for l in jar.read_text().splitlines()
                 if "ZM_AUTH_TOKEN" in l)
    for _ in range(6):
        head = subprocess.run(["curl", "-sS", "--http1.1", "-i", "--cacert", str(CA), "-b",
                               f"ZM_ADMIN_AUTH_TOKEN={token}",
                               f"https://{HOST}:{WEB_PORTS['admin']}/health"],
                              capture_output=True, timeout=20).stdout
        assert head.startswith(b"HTTP/1.1 200") and b"X-Demo-Server: mbox2" in head


def test_tls_to_the_mailbox_servers_is_verified(custom_worker, memcached):
    w = custom_worker(port_base=25000, upstream_tls="true")
    conn = imap_login("user03@demo.test", port=w.ports["imaps"])
    assert first_subject_imap(conn) == "Subject: Welcome to mbox1"
    conn.logout()
    # The route was looked up for the TLS port of the server (Carbonio's imapssl keys).
    assert memcached.get(b"route:proto=imapssl;user=user03@demo.test") == b"127.0.0.1:7993"
    # The web front too ([web] upstream_tls): to the servers' 8443, verified the same way.
    seen = set()
    for _ in range(6):
        head = subprocess.run(["curl", "-sS", "--http1.1", "-i", "--cacert", str(CA),
                               f"https://{HOST}:{w.ports['https']}/health"],
                              capture_output=True, timeout=20).stdout
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        seen.add(head.split(b"X-Demo-Server: ")[1][:5])
    assert seen == {b"mbox1", b"mbox2"}
