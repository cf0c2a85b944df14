"""The demo stack as `make up` leaves it: real slapd, Dovecot x2, memcached under supervisord.

Run with the stack up (`make test` does `make up` first). Every check uses a real client.
"""

import imaplib
import poplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import ldap3
import pytest

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var"
PASSWORD = "demo-pass"
MBOX1, MBOX2 = "127.0.0.1", "127.0.0.2"

pytestmark = pytest.mark.skipif(
    not (VAR / "run" / "supervisor.sock").exists(), reason="demo stack is not up: run `make up`"
)


def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(VAR / "certs" / "ca.crt"))


# --- LDAP ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ldap():
    secret = (VAR / "ldap" / "admin.secret").read_text()
    conn = ldap3.Connection(ldap3.Server("ldap://127.0.0.1:10389"), "cn=admin,o=carbotui", secret,
                            auto_bind=True, raise_exceptions=True)
    yield conn
    conn.unbind()


def find(conn, flt, attrs=("zimbraMailHost", "zimbraMailDeliveryAddress", "zimbraId")):
    conn.search("o=carbotui", flt, attributes=list(attrs))
    return conn.entries


def test_ldap_user01_lives_on_mbox1(ldap):
    (entry,) = find(ldap, "(uid=user01@demo.test)")
    assert entry.zimbraMailHost.value == "mbox1.demo.test"
    assert entry.zimbraMailDeliveryAddress.value == "user01@demo.test"


def test_ldap_lookup_by_alias_is_case_insensitive(ldap):
    (entry,) = find(ldap, "(|(zimbraMailDeliveryAddress=NICK02@Demo.Test)(zimbraMailAlias=NICK02@Demo.Test))")
    assert entry.zimbraMailHost.value == "mbox2.demo.test"
    assert entry.entry_dn == "uid=user02@demo.test,ou=people,o=carbotui"


def test_ldap_servers_domains_and_config(ldap):
    servers = {e.cn.value: e for e in find(ldap, "(objectClass=zimbraServer)",
                                           ("cn", "zimbraImapBindPort", "zimbraReverseProxyLookupTarget",
                                            "zimbraReverseProxyMailMode"))}
    assert set(servers) == {"mbox1.demo.test", "mbox2.demo.test", "proxy.demo.test"}
    assert servers["mbox2.demo.test"].zimbraImapBindPort.value == 7143
    assert servers["mbox1.demo.test"].zimbraReverseProxyLookupTarget.value is True
    assert servers["proxy.demo.test"].zimbraReverseProxyMailMode.value == "redirect"
    (vip,) = find(ldap, "(zimbraVirtualIPAddress=127.0.0.3)", ("zimbraDomainName",))
    assert vip.zimbraDomainName.value == "corp.test"
    (cfg,) = find(ldap, "(objectClass=zimbraGlobalConfig)", ("zimbraDefaultDomainName",))
    assert cfg.zimbraDefaultDomainName.value == "demo.test"


def test_ldap_users_cannot_read_secrets():
    """A user can bind with the demo password but sees no password hashes or private keys."""
    conn = ldap3.Connection("ldap://127.0.0.1:10389", "uid=user01@demo.test,ou=people,o=carbotui",
                            PASSWORD, auto_bind=True, raise_exceptions=True)
    conn.search("o=carbotui", "(zimbraDomainName=demo.test)",
                attributes=["zimbraSSLCertificate", "zimbraSSLPrivateKey"])
    (domain,) = conn.response
    assert "BEGIN CERTIFICATE" in domain["attributes"]["zimbraSSLCertificate"]
    assert not domain["raw_attributes"].get("zimbraSSLPrivateKey")  # ldap3 lists it, empty
    conn.unbind()


# --- Dovecot mailbox servers --------------------------------------------------------------

def imap_inbox_subject(host: str, user: str, tls: bool = False) -> str:
    cls = (lambda: imaplib.IMAP4_SSL(host, 7993, ssl_context=tls_context())) if tls \
        else (lambda: imaplib.IMAP4(host, 7143))
    with cls() as imap:
        imap.login(user, PASSWORD)
        imap.select("INBOX", readonly=True)
        _, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        imap.logout()
    return data[0][1].decode().strip()


@pytest.mark.parametrize("user, host, short", [
    ("user01@demo.test", MBOX1, "mbox1"),
    ("user02@demo.test", MBOX2, "mbox2"),
    ("nick01@demo.test", MBOX1, "mbox1"),   # an alias logs in to the account's own mailbox
    ("boss@corp.test", MBOX1, "mbox1"),
    ("clerk@corp.test", MBOX2, "mbox2"),
])
def test_imap_login_on_own_server(user, host, short):
    assert imap_inbox_subject(host, user) == f"Subject: Welcome to {short}"


@pytest.mark.parametrize("user, host", [("user02@demo.test", MBOX1), ("user01@demo.test", MBOX2)])
def test_imap_login_fails_on_the_other_server(user, host):
    with imaplib.IMAP4(host, 7143) as imap, pytest.raises(imaplib.IMAP4.error):
        imap.login(user, PASSWORD)


def test_imap_wrong_password_fails():
    with imaplib.IMAP4(MBOX1, 7143) as imap, pytest.raises(imaplib.IMAP4.error):
        imap.login("user01@demo.test", "not-the-password")


@pytest.mark.parametrize("host, short", [(MBOX1, "mbox1"), (MBOX2, "mbox2")])
def test_imaps_certificate_verifies(host, short):
    """The mboxN certificate chains to the demo CA and names the server's IP."""
    user = "user01@demo.test" if short == "mbox1" else "user02@demo.test"
    assert imap_inbox_subject(host, user, tls=True) == f"Subject: Welcome to {short}"


def pop3_login(host: str, user: str, tls: bool = False) -> poplib.POP3:
    pop = poplib.POP3_SSL(host, 7995, context=tls_context()) if tls else poplib.POP3(host, 7110)
    pop.user(user)
    pop.pass_(PASSWORD)
    return pop


@pytest.mark.parametrize("user, host, short, tls", [
    ("user01@demo.test", MBOX1, "mbox1", False),
    ("user02@demo.test", MBOX2, "mbox2", False),
    ("user01@demo.test", MBOX1, "mbox1", True),
    ("user02@demo.test", MBOX2, "mbox2", True),
])
def test_pop3_login_on_own_server(user, host, short, tls):
    pop = pop3_login(host, user, tls)
    try:
        count, _ = pop.stat()
        assert count == 1
        assert f"Subject: Welcome to {short}".encode() in pop.retr(1)[1]
    finally:
        pop.quit()


def test_pop3_login_fails_on_the_other_server():
    with pytest.raises(poplib.error_proto):
        pop3_login(MBOX1, "user02@demo.test").quit()
    with pytest.raises(poplib.error_proto):
        pop3_login(MBOX2, "user01@demo.test").quit()


# --- memcached ----------------------------------------------------------------------------

def test_memcached_answers_version():
    with socket.create_connection(("127.0.0.1", 12211), timeout=2) as s:
        s.sendall(b"version\r\n")
        assert s.recv(100).startswith(b"VERSION ")


# --- supervisord --------------------------------------------------------------------------

def supervisorctl(*args: str) -> subprocess.CompletedProcess:
    """From the repo root with an (almost) empty environment: no variable is needed."""
    return subprocess.run([str(ROOT / ".venv/bin/supervisorctl"), "-c", "supervisord.conf", *args],
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def status() -> dict[str, str]:
    out = supervisorctl("status").stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("program", ["memcached", "slapd", "mbox1", "mbox2"])
def test_backend_running(status, program):
    assert status.get(program) == "RUNNING", f"{program}: see var/log/{program}.log"


def test_proxy_workers_running(status):
    numprocs = int((VAR / "run" / "supervisor-workers.conf").read_text().split("numprocs=")[1])
    workers = {k: v for k, v in status.items() if k.startswith("proxy:")}
    assert sorted(workers) == [f"proxy:proxy_{n:02d}" for n in range(numprocs)]
    assert set(workers.values()) == {"RUNNING"}, f"{workers}: see var/log/proxy_00.log"


def test_setup_is_idempotent():
    before = {p: p.stat().st_mtime_ns for p in (VAR / "certs").iterdir()}
    out = subprocess.run([sys.executable, "-m", "demo.stack", "setup"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "up to date" in out
    assert before == {p: p.stat().st_mtime_ns for p in (VAR / "certs").iterdir()}


def test_restart_one_mailbox_server():
    """`supervisorctl restart mbox1` works and mbox1 serves again; mbox2 is untouched."""
    assert supervisorctl("restart", "mbox1").returncode == 0
    deadline = time.monotonic() + 15
    while True:
        try:
            assert imap_inbox_subject(MBOX1, "user01@demo.test") == "Subject: Welcome to mbox1"
            break
        except (OSError, imaplib.IMAP4.error):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert imap_inbox_subject(MBOX2, "user02@demo.test") == "Subject: Welcome to mbox2"
