"""ACME HTTP-01 on port 80 and certbot's deploy hook, end to end without Let's Encrypt: a
token written where `certbot --webroot -w var/acme` writes it is fetched by curl through
port 10080 in the redirect and https mail modes; hostile names get a 4xx and the worker
goes on; etc/certbot/carbotui-deploy-hook stores a certificate in LDAP through prov and
every worker serves it by SNI within seconds."""
from __future__ import annotations

import os
import secrets
import socket
import ssl
import subprocess
import time

import pytest

from carbotui.admin.changes import Admin
from carbotui.backends.directory import Directory
from carbotui.core import certs
from tests.stack.conftest import CA, HOST, REPO, SETTINGS, WEB_PORTS, wait_for, worker_stats
from tests.stack.test_security_headers import every_worker, scratch_domain, settled

HTTP, HTTPS = WEB_PORTS["http"], WEB_PORTS["https"]
CHALLENGES = SETTINGS.web.acme_webroot / ".well-known" / "acme-challenge"
HOOK = REPO / "etc/certbot/carbotui-deploy-hook"


def curl(path: str, *args: str) -> tuple[int, bytes]:
    out = subprocess.run(["curl", "-sS", "--path-as-is", "--max-time", "10", "-o", "-",
                          "-w", "\n%{http_code}", "--resolve", f"mail.demo.test:{HTTP}:{HOST}",
                          *args, f"http://mail.demo.test:{HTTP}{path}"],
                         capture_output=True, timeout=20)
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code or 0), body


def raw(request: bytes) -> bytes:
    """What port 80 answers to bytes curl would not send (a NUL in the target)."""
    with socket.create_connection((HOST, HTTP), timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.fixture
def token():
    """A token file as certbot's webroot plugin writes it (root, 0644); removed after."""
    name = secrets.token_urlsafe(32)                   # 43 base64url characters, as LE's
    path = CHALLENGES / name
    content = f"{name}.{secrets.token_urlsafe(32)}".encode()
    path.write_bytes(content)
    os.chmod(path, 0o644)
    yield name, content
    path.unlink(missing_ok=True)


def set_mode(mode: str) -> None:
    d = Directory(SETTINGS)
    try:
        Admin(d).set_mail_mode(SETTINGS.node_name, mode)
    finally:
        d.close()
    wait_for(lambda: all(w["config"]["mail_mode"] == mode for w in worker_stats()), 10,
             what=f"mail mode {mode} on every worker")


@pytest.mark.parametrize("mode", ["redirect", "https"])
def test_a_token_certbot_wrote_is_served_on_port_80_in_any_mail_mode(token, mode):
    name, content = token
    before = Directory(SETTINGS).servers()[SETTINGS.node_name].mail_mode or "redirect"
    try:
        if mode != before:
            set_mode(mode)
        for _ in range(4):                              # whichever worker answers
            assert curl(f"/.well-known/acme-challenge/{name}") == (200, content)
        head = subprocess.run(["curl", "-sS", "-I", f"http://{HOST}:{HTTP}/.well-known/"
                               f"acme-challenge/{name}"], capture_output=True, timeout=20).stdout
        assert head.startswith(b"HTTP/1.1 200") and \
            b"Content-Length: %d\r\n" % len(content) in head
        assert b"Strict-Transport-Security" not in head          # plain HTTP: none
        # everything else on port 80 still follows the mail mode
        assert curl("/mail")[0] == (301 if mode == "redirect" else 403)
    finally:
        if mode != before:
            set_mode(before)


@pytest.mark.parametrize("path, status", [
    ("/.well-known/acme-challenge/no-such-token", 404),
    ("/.well-known/acme-challenge/", 404),
    ("/.well-known/acme-challenge/../../ldap/admin.secret", 400),
    ("/.well-known/acme-challenge/..", 400),
    ("/.well-known/acme-challenge/%2e%2e%2f%2e%2e%2fldap%2fadmin.secret", 400),
    ("/.well-known/acme-challenge/..%2Fcerts%2Fca.key", 400),
    ("/.well-known/acme-challenge/a/b", 400),
    ("/.well-known/acme-challenge/tok%00", 400),
    ("/.well-known/acme-challenge/tok.en", 400),
    ("/.well-known/acme-challenge/tok=", 400),
    ("/.well-known/acme-challenge/" + "a" * 129, 400),
])
def test_hostile_names_get_a_clear_4xx(path, status):
    code, body = curl(path)
    assert code == status and b"admin" not in body and b"PRIVATE" not in body


def test_a_symlink_a_nul_a_post_and_a_big_file_are_refused_and_the_worker_goes_on(token):
    name, content = token
    link = CHALLENGES / f"link{secrets.token_hex(4)}"
    big = CHALLENGES / f"big{secrets.token_hex(4)}"
    link.symlink_to(REPO / "var/ldap/proxy.secret")
    big.write_bytes(b"x" * 5000)
    big.chmod(0o644)
    try:
        assert curl(f"/.well-known/acme-challenge/{link.name}")[0] == 404
        assert curl(f"/.well-known/acme-challenge/{big.name}")[0] == 404
        assert curl(f"/.well-known/acme-challenge/{name}", "-X", "POST", "-d", "x")[0] == 405
        reply = raw(b"GET /.well-known/acme-challenge/a\x00b HTTP/1.1\r\nHost: x\r\n"
                    b"Connection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400")
    finally:
        link.unlink()
        big.unlink()
    assert curl(f"/.well-known/acme-challenge/{name}") == (200, content)


def sni_serial(servername: str) -> int:
    """The serial of the certificate served for ``servername``, verified against the demo CA."""
    ctx = ssl.create_default_context(cafile=str(CA))
    with socket.create_connection((HOST, HTTPS), timeout=5) as raw_sock:
        with ctx.wrap_socket(raw_sock, server_hostname=servername) as tls:
            der = tls.getpeercert(binary_form=True)
    return certs.load_cert(ssl.DER_cert_to_PEM_cert(der)).serial_number


def lineage(tmp_path, names, key_of=None):
    """A certbot live/<name>/ folder: fullchain.pem (leaf, then the CA) and privkey.pem."""
    ca_cert, ca_key = certs.read_pair(REPO / "var/certs/ca.crt", REPO / "var/certs/ca.key")
    cert, key = certs.issue(ca_cert, ca_key, names, days=90)
    d = tmp_path / "live" / names[0]
    d.mkdir(parents=True)
    (d / "fullchain.pem").write_bytes(certs.cert_to_pem(cert) + certs.cert_to_pem(ca_cert))
    (d / "privkey.pem").write_bytes(certs.key_to_pem(key_of or key))
    return d, cert, key


def hook(lineage_dir, names) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "RENEWED_LINEAGE": str(lineage_dir),
           "RENEWED_DOMAINS": " ".join(names)}
    return subprocess.run([str(HOOK)], env=env, cwd="/", capture_output=True, text=True,
                          timeout=60)


def test_the_deploy_hook_stores_the_certificate_and_every_worker_serves_it(tmp_path):
    name = f"acme{secrets.token_hex(3)}.test"
    vhost = f"mail.{name}"
    with scratch_domain(name, vhost):
        every_worker(lambda: _serial_or_0(vhost) != 0, "the scratch virtual host served")
        old = sni_serial(vhost)
        before = settled()
        issued, cert, key = lineage(tmp_path, [vhost, "proxy.demo.test"])
        t0 = time.monotonic()
        done = hook(issued, [vhost, "proxy.demo.test"])
        assert done.returncode == 0, done.stderr
        assert f"{name}: installed the certificate" in done.stdout
        assert "proxy.demo.test: no domain's virtual hostname" in done.stdout
        every_worker(lambda: _serial_or_0(vhost) == cert.serial_number,
                     "the deployed certificate on every worker", after=before)
        took = time.monotonic() - t0
        assert old != cert.serial_number
        # a lineage whose key is not the certificate's: refused, nothing changes
        _, other_key = certs.issue(*certs.read_pair(REPO / "var/certs/ca.crt",
                                                     REPO / "var/certs/ca.key"), [vhost])
        bad, _, _ = lineage(tmp_path / "bad", [vhost], key_of=other_key)
        done = hook(bad, [vhost])
        assert done.returncode == 1 and "does not belong to the certificate" in done.stderr
        # no names, no lineage: usage, exit 2
        assert subprocess.run([str(HOOK)], env={"PATH": os.environ["PATH"]},
                              capture_output=True, timeout=30).returncode == 2
        assert sni_serial(vhost) == cert.serial_number
        print(f"deploy hook to every worker serving the certificate: {took:.1f} s")


def _serial_or_0(vhost: str) -> int:
    try:
        return sni_serial(vhost)
    except (OSError, ssl.SSLError):
        return 0
