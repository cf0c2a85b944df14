"""`carbotui check` as an admin runs it before a reload: real subprocesses of
.venv/bin/carbotui against the demo's slapd, memcached and running workers, and against
private TLS slapds (test_ldap_tls). Each bad input is one clear line and exit 1; nothing
is started (the file's var_dir stays empty), and nothing answering costs a few seconds.
"""
from __future__ import annotations

import datetime as dt
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path

import ldap3
import pytest

from carbotui.core import certs

from .conftest import CA, REPO, SETTINGS, read_stats, wait_for
from .test_ldap_failover import Hung
from .test_ldap_tls import ADMIN, BASE, READER, slapds  # noqa: F401 (fixture)

CARBOTUI = REPO / ".venv/bin/carbotui"
DEMO = REPO / "carbotui.toml"
CA_CERT, CA_KEY = certs.read_pair(CA, CA.with_suffix(".key"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_file(tmp_path: Path, body: str = "", *, own_var: bool = True) -> Path:
    """A node file that includes the demo's and overrides ``body``; its own var_dir (so
    no running worker is found) unless ``own_var`` is false."""
    head = f'include = "{DEMO}"\n'
    if own_var:
        head += f'[node]\nvar_dir = "{tmp_path / "var"}"\n'
    path = tmp_path / "node.toml"
    path.write_text(head + body)
    return path


def run(path: Path, *args: str, timeout: float = 60):
    start = time.monotonic()
    p = subprocess.run([str(CARBOTUI), "check", "--config", str(path), *args], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
    p.seconds = time.monotonic() - start
    p.lines = p.stderr.splitlines()
    if path != DEMO:
        # nothing started: no log, socket or state file anywhere under the file's var_dir
        assert not (path.parent / "var").exists()
    return p


def demo_workers(lines: list[str]) -> list[str]:
    """The lines about the demo's own workers. (Other tests may run a worker of their own
    with the demo's run_dir, say proxy_90 on other ports; check rightly reports it too.)"""
    return [line for line in lines if "proxy_00" in line or "proxy_01" in line]


def pair(tmp_path: Path, names=("proxy.demo.test",), **kw) -> str:
    cert, key = certs.issue(CA_CERT, CA_KEY, list(names), **kw)
    certs.write_pair(cert, key, tmp_path / "n.crt", tmp_path / "n.key")
    return f'[tls]\ncertificate = "{tmp_path / "n.crt"}"\nprivate_key = "{tmp_path / "n.key"}"\n'


def offline_seconds(path: Path) -> float:
    """What the same command costs without probes (Python's start-up on a loaded machine)."""
    p = run(path, "--offline")
    assert p.returncode == 0 and p.stdout.startswith(f"{path}: OK"), p.stderr
    return p.seconds


def both_demo_workers_up() -> None:
    """Both demo workers answer on their stats sockets (someone may be restarting them)."""
    def up():
        try:
            return all(read_stats(str(REPO / f"var/run/proxy_0{i}.sock")) for i in (0, 1))
        except OSError:
            return False
    wait_for(up, 60, what="proxy_00 and proxy_01 answering")


def test_the_demo_node_passes_every_probe():
    both_demo_workers_up()
    p = run(DEMO)
    assert (p.returncode, p.stderr) == (0, "")
    assert p.stdout.startswith(f"{DEMO}: OK (node proxy.demo.test")
    for seen in ("LDAP 1/1", "memcached 1/1", "the [tls] certificate",
                 "1 virtual host certificate"):
        assert seen in p.stdout
    assert re.search(r"; listeners of \d+ workers", p.stdout)
    # far from the probes' deadline (26.5 s here): none of them waited on a timeout
    assert p.seconds < offline_seconds(DEMO) + 10


def test_a_broken_file_is_its_file_and_line(tmp_path):
    path = node_file(tmp_path, '[mail]\nauth_wait = 1\nstarttls = "only\n')
    p = run(path)
    assert (p.returncode, p.stdout) == (1, "")
    assert p.lines == [f"{path}:6:17: not valid TOML: Illegal character '\\n'"]


def test_an_unknown_key_is_named(tmp_path):
    p = run(node_file(tmp_path, '[ldap]\nlookup_bind = "cn=x"\n'))
    assert p.returncode == 1
    assert p.lines == [f"{tmp_path / 'node.toml'}: ldap.lookup_bind: unknown key "
                       "(did you mean lookup_bind_dn?)"]


@pytest.mark.parametrize("case, expected", [
    ("key of another certificate", "the private key does not match the certificate"),
    ("expired", "expired on "),
    ("for another name", "does not cover proxy.demo.test (it names other.demo.test)"),
])
def test_a_bad_node_certificate_is_one_line(tmp_path, case, expected):
    if case == "key of another certificate":
        body = pair(tmp_path)
        other = certs.issue(CA_CERT, CA_KEY, ["proxy.demo.test"])
        certs.write_pair(*other, tmp_path / "o.crt", tmp_path / "n.key")
    elif case == "expired":
        body = pair(tmp_path, days=2, start=dt.datetime.now(dt.timezone.utc)
                    - dt.timedelta(days=30))
    else:
        body = pair(tmp_path, names=("other.demo.test",))
    p = run(node_file(tmp_path, body))
    assert p.returncode == 1 and p.stdout == ""
    (line,) = p.lines
    prefix = f"{tmp_path / 'node.toml'}: tls.certificate {tmp_path / 'n.crt'}: "
    if case == "expired":
        assert line.startswith(prefix + expected) and line.endswith(" days ago)")
    else:
        assert line == prefix + expected


def test_unreachable_ldap_is_an_error_alone_and_a_warning_next_to_a_working_one(tmp_path):
    p = run(node_file(tmp_path, '[ldap]\nurl = "ldap://127.0.0.1:1"\n'))
    assert p.returncode == 1
    assert p.lines == [f"{tmp_path / 'node.toml'}: ldap.url ldap://127.0.0.1:1: unreachable "
                       "([Errno 111] Connection refused)"]
    p = run(node_file(tmp_path, f'[ldap]\nurl = "ldap://127.0.0.1:1 {SETTINGS.ldap_urls[0]}"\n'))
    assert p.returncode == 0 and "LDAP 1/2" in p.stdout and "1 warning" in p.stdout
    assert p.lines == [f"{tmp_path / 'node.toml'}: warning: ldap.url ldap://127.0.0.1:1: "
                       "unreachable ([Errno 111] Connection refused); the other servers answer"]


def test_a_wrong_bind_password_names_the_dn_and_the_server(tmp_path):
    (tmp_path / "wrong.secret").write_text(secrets.token_urlsafe(12))
    p = run(node_file(tmp_path, f'[ldap]\nlookup_password_file = "{tmp_path / "wrong.secret"}"\n'))
    assert p.returncode == 1
    assert p.lines == [f"{tmp_path / 'node.toml'}: ldap.lookup_bind_dn "
                       f"{SETTINGS.ldap_lookup_bind_dn}: {SETTINGS.ldap_urls[0]} refused the "
                       "bind (invalidCredentials)"]
    assert (tmp_path / "wrong.secret").read_text() not in p.stderr + p.stdout


def test_memcached_down_is_an_error(tmp_path):
    port = free_port()
    p = run(node_file(tmp_path, f'[memcached]\nservers = ["127.0.0.1:{port}"]\n'))
    assert p.returncode == 1
    assert p.lines == [f"{tmp_path / 'node.toml'}: memcached.servers 127.0.0.1:{port}: "
                       f"unreachable ([Errno 111] Connect call failed ('127.0.0.1', {port}))"]


def test_everything_unreachable_at_once_is_a_line_each_within_seconds(tmp_path):
    hung = Hung()                          # accepts TCP, never answers: the slow case
    try:
        port = free_port()
        body = (f'[ldap]\nurl = "ldap://127.0.0.1:1 {hung.url}"\ntimeout = 1\n'
                f'[memcached]\nservers = ["127.0.0.1:{port}"]\ntimeout = 0.5\n')
        path = node_file(tmp_path, body + pair(tmp_path, names=("other.demo.test",)))
        p = run(path)
    finally:
        hung.close()
    # ldap.timeout (1 s) once (the hung server is not asked again for the admin bind), on
    # top of what the command costs without probes; unbounded, the hung one holds it for ever
    assert p.returncode == 1 and p.seconds < offline_seconds(path) + 1 + 3
    text = "\n".join(p.lines)
    assert len(p.lines) == 4
    for seen in ("ldap.url ldap://127.0.0.1:1: unreachable", f"ldap.url {hung.url}: unreachable",
                 f"memcached.servers 127.0.0.1:{port}: unreachable",
                 "does not cover proxy.demo.test"):
        assert seen in text


def test_a_listener_change_is_a_warning_per_listener_against_the_running_workers(tmp_path):
    both_demo_workers_up()
    free = free_port()
    body = f'[listen]\nimap = ["127.0.0.1:{free}"]\n'
    p = run(node_file(tmp_path, body, own_var=False))     # the demo's var: its workers
    assert p.returncode == 0, p.stderr
    new, gone = demo_workers(p.lines)
    assert new.startswith(f"{tmp_path / 'node.toml'}: warning: listen.imap: 127.0.0.1:{free} "
                          "is not listened on by the running proxy_00, proxy_01")
    assert new.endswith(": it needs a restart of the workers (SIGHUP does not bind)")
    assert gone.startswith(f"{tmp_path / 'node.toml'}: warning: listen: 127.0.0.1:10143 is "
                           "listened on by the running proxy_00, proxy_01")
    assert gone.endswith(" but is not in the file: it stays open until the workers restart")
    assert re.search(r"; \d+ warnings\)$", p.stdout.strip())


# --- TLS to LDAP, and virtual host certificates in LDAP, on a private slapd --------------------

def tls_node(tmp_path: Path, root: Path, url: str, ca: Path) -> Path:
    start_tls = "true" if url.startswith("ldap://") else "false"
    return node_file(tmp_path, (
        f'[ldap]\nurl = "{url}"\nbase = "{BASE}"\nca_file = "{ca}"\nstart_tls = {start_tls}\n'
        f'bind_dn = "{ADMIN}"\npassword_file = "{root / "admin.secret"}"\n'
        f'lookup_bind_dn = "{READER}"\nlookup_password_file = "{root / "reader.secret"}"\n'))


@pytest.mark.parametrize("start_tls", [False, True], ids=["ldaps", "starttls"])
def test_tls_verified_with_the_configured_ca_and_refused_with_another(slapds, tmp_path,
                                                                      start_tls):
    made, root = slapds
    good = made["good"]
    url = f"ldap://127.0.0.1:{good.ldap}" if start_tls else f"ldaps://127.0.0.1:{good.ldaps}"
    p = run(tls_node(tmp_path, root, url, CA))
    assert p.returncode == 0, p.stderr
    assert p.lines == [f"{tmp_path / 'node.toml'}: warning: node.name proxy.demo.test: no "
                       "zimbraServer entry with that zimbraServiceHostname; the workers use "
                       "mail mode redirect"]
    assert {READER, ADMIN} <= set(good.binds())
    other_ca, _ = certs.make_ca("somebody else's CA")
    (tmp_path / "other-ca.pem").write_bytes(certs.cert_to_pem(other_ca))
    before = len(good.binds())
    p = run(tls_node(tmp_path, root, url, tmp_path / "other-ca.pem"))
    assert p.returncode == 1
    (line,) = p.lines
    assert line.startswith(f"{tmp_path / 'node.toml'}: ldap.url {url}: TLS verification "
                           f"failed against ldap.ca_file {tmp_path / 'other-ca.pem'}: ")
    assert "certificate verify failed" in line
    assert len(good.binds()) == before                  # no DN or password was sent


def test_a_virtual_host_certificate_in_ldap_is_checked(slapds, tmp_path):
    made, root = slapds
    good = made["good"]
    url = f"ldaps://127.0.0.1:{good.ldaps}"
    cert, _ = certs.issue(CA_CERT, CA_KEY, ["mail.tls.test"])
    _, other_key = certs.issue(CA_CERT, CA_KEY, ["mail.tls.test"])
    dn = f"zimbraDomainName=tls.test,{BASE}"
    admin = ldap3.Connection(ldap3.Server(f"ldap://127.0.0.1:{good.ldap}"), ADMIN,
                             (root / "admin.secret").read_text(), auto_bind=True)
    try:
        assert admin.add(dn, ["zimbraDomain"], {
            "zimbraDomainName": "tls.test", "zimbraVirtualHostname": ["mail.tls.test",
                                                                      "webmail.tls.test"],
            "zimbraSSLCertificate": certs.cert_to_pem(cert).decode(),
            "zimbraSSLPrivateKey": certs.key_to_pem(other_key).decode()}), admin.result
        p = run(tls_node(tmp_path, root, url, CA))
    finally:
        admin.delete(dn)
        admin.unbind()
    assert p.returncode == 1
    prefix = f"{tmp_path / 'node.toml'}: domain tls.test: zimbraSSLCertificate: "
    assert prefix + "the private key does not match the certificate" in p.lines
    assert prefix + "does not cover webmail.tls.test (it names mail.tls.test)" in p.lines

