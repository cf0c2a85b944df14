"""carbotui.admin.changes: validation (pure) and validated writes.

The pure part needs nothing. `TestWritesToDemoLdap` writes to the demo slapd
(`make up`, ldap://127.0.0.1:10389, o=carbotui) and puts every value back.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import ldap3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from carbotui.admin import changes as admin

from carbotui.core import certs
from carbotui.admin.changes import AdminError
from carbotui.backends.directory import Domain

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    cert, key = certs.make_ca("test CA")
    d = tmp_path_factory.mktemp("ca")
    certs.write_pair(cert, key, d / "ca.crt", d / "ca.key")
    return d, cert, key


def pem_pair(cert, key) -> tuple[str, str]:
    return certs.cert_to_pem(cert).decode(), certs.key_to_pem(key).decode()


def short_lived(ca_cert, ca_key, names, days_before: int, days_after: int):
    """A leaf valid from now-days_before to now+days_after (negative: expired)."""
    key = certs._new_key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=days_before))
            .not_valid_after(now + dt.timedelta(days=days_after))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .sign(ca_key, hashes.SHA256()))
    return pem_pair(cert, key)


# --- pure validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("mail.example.com", "mail.example.com"),
    ("Mail.Example.COM.", "mail.example.com"),
    ("a-b.c-d.example", "a-b.c-d.example"),
    ("x1.io", "x1.io"),
])
def test_fqdn_accepted_and_normalised(name, expected):
    assert admin.validate_fqdn(name) == expected


@pytest.mark.parametrize("name,reason", [
    ("", "required"),
    ("localhost", "not fully qualified"),
    ("mail..example.com", "empty label"),
    ("-mail.example.com", "letters, digits"),
    ("mail-.example.com", "letters, digits"),
    ("ma_il.example.com", "letters, digits"),
    ("*.example.com", "letters, digits"),
    ("mail example.com", "letters, digits"),
    ("10.0.0.1", "IP address"),
    ("a" * 64 + ".example.com", "longer than 63"),
    (("a" * 60 + ".") * 5 + "com", "at most 253"),
])
def test_fqdn_refused_with_reason(name, reason):
    with pytest.raises(AdminError, match=reason):
        admin.validate_fqdn(name)


def test_mail_mode():
    assert admin.validate_mail_mode(" Redirect ") == "redirect"
    assert admin.validate_mail_mode("https") == "https"
    with pytest.raises(AdminError, match="one of https, redirect"):
        admin.validate_mail_mode("http")


def test_ip():
    assert admin.validate_ip(" 127.0.0.3 ") == "127.0.0.3"
    assert admin.validate_ip("::1") == "::1"
    with pytest.raises(AdminError, match="not an IPv4 or IPv6"):
        admin.validate_ip("127.0.0.300")


DOMAINS = [Domain("demo.test", virtual_hostnames=("mail.demo.test",), virtual_ips=("127.0.0.1",)),
           Domain("corp.test", virtual_ips=("127.0.0.3",))]


def test_duplicate_vhost_refused_across_domains():
    with pytest.raises(AdminError, match="already a virtual hostname of domain demo.test"):
        admin.check_vhost_free("mail.demo.test", "corp.test", DOMAINS)
    with pytest.raises(AdminError, match="of this domain"):
        admin.check_vhost_free("mail.demo.test", "demo.test", DOMAINS)
    admin.check_vhost_free("mail.corp.test", "corp.test", DOMAINS)


def test_duplicate_vip_refused_across_domains():
    with pytest.raises(AdminError, match="already the virtual IP of domain demo.test"):
        admin.check_vip_free("127.0.0.1", "corp.test", DOMAINS)
    admin.check_vip_free("127.0.0.1", "demo.test", DOMAINS)     # its own: a no-op change


def test_certificate_checks(ca):
    _, ca_cert, ca_key = ca
    cert, key = pem_pair(*certs.issue(ca_cert, ca_key, ["mail.corp.test", "www.corp.test"]))
    ok = admin.check_certificate(cert, key, ["mail.corp.test"])
    assert ok.names == ("mail.corp.test", "www.corp.test") and not ok.warnings
    assert ok.days_left > 800

    _, other_key = pem_pair(*certs.issue(ca_cert, ca_key, ["mail.corp.test"]))
    with pytest.raises(AdminError, match="does not belong"):
        admin.check_certificate(cert, other_key, ["mail.corp.test"])
    with pytest.raises(AdminError, match="does not cover imap.corp.test"):
        admin.check_certificate(cert, key, ["mail.corp.test", "imap.corp.test"])
    with pytest.raises(AdminError, match="not a PEM X.509"):
        admin.check_certificate("junk", key, [])
    with pytest.raises(AdminError, match="not an unencrypted PEM key"):
        admin.check_certificate(cert, "junk", [])


def test_expired_refused_and_expiring_flagged(ca):
    _, ca_cert, ca_key = ca
    cert, key = short_lived(ca_cert, ca_key, ["old.corp.test"], 400, -1)
    with pytest.raises(AdminError, match="expired on"):
        admin.check_certificate(cert, key, ["old.corp.test"])
    cert, key = short_lived(ca_cert, ca_key, ["soon.corp.test"], 10, 12)
    check = admin.check_certificate(cert, key, ["soon.corp.test"])
    assert check.warnings and "expires in 11 days" in check.warnings[0]


def test_generate_certificate_from_ca(ca):
    ca_dir, ca_cert, _ = ca
    cert_pem, key_pem = admin.generate_certificate(ca_dir, ["a.corp.test", "b.corp.test"])
    cert = certs.load_cert(cert_pem)
    assert certs.is_signed_by(cert, ca_cert)
    assert admin.check_certificate(cert_pem, key_pem, ["a.corp.test", "b.corp.test"])
    with pytest.raises(AdminError, match="cannot read the CA"):
        admin.generate_certificate(ca_dir / "missing", ["a.corp.test"])


# --- Admin against an in-memory directory (validation order, change shape) ----------------------

class MemoryDirectory:
    """The three Directory methods Admin uses, over a list of Domain objects."""

    def __init__(self, domains, servers=("proxy.demo.test",)):
        self._domains = list(domains)
        self.servers = set(servers)
        self.writes = []

    def domains(self):
        return list(self._domains)

    def entry_dn(self, object_class, attr, value):
        if object_class == "zimbraServer":
            return f"cn={value},ou=servers" if value in self.servers else ""
        return f"zimbraDomainName={value},ou=domains" if any(
            d.name == value for d in self._domains) else ""

    def modify(self, dn, changes):
        self.writes.append((dn, changes))


def test_admin_add_vhost_needs_a_covering_certificate(ca):
    ca_dir, ca_cert, ca_key = ca
    memory = MemoryDirectory(DOMAINS)
    a = admin.Admin(memory, ca_dir=ca_dir)
    with pytest.raises(AdminError, match="has no certificate for mail.corp.test"):
        a.add_vhost("corp.test", "mail.corp.test")
    with pytest.raises(AdminError, match="already a virtual hostname of domain demo.test"):
        a.add_vhost("corp.test", "mail.demo.test", generate=True)
    with pytest.raises(AdminError, match="not fully qualified"):
        a.add_vhost("corp.test", "mail", generate=True)
    with pytest.raises(AdminError, match="domain nope.test not found"):
        a.add_vhost("nope.test", "mail.nope.test", generate=True)
    assert memory.writes == []                      # nothing written when refused

    result = a.add_vhost("corp.test", "mail.corp.test", generate=True)
    assert "added virtual hostname mail.corp.test with a new certificate" in str(result)
    dn, changes = memory.writes[-1]
    assert dn == "zimbraDomainName=corp.test,ou=domains"
    assert changes["zimbraVirtualHostname"] == [(ldap3.MODIFY_ADD, ["mail.corp.test"])]
    written = certs.load_cert(changes["zimbraSSLCertificate"][0][1][0])
    assert certs.covers(written, "mail.corp.test")


def test_admin_mode_vip_remove(ca):
    memory = MemoryDirectory(DOMAINS)
    a = admin.Admin(memory)
    assert "mail mode is now https" in str(a.set_mail_mode("proxy.demo.test", "https"))
    with pytest.raises(AdminError, match="server nope.demo.test not found"):
        a.set_mail_mode("nope.demo.test", "https")
    with pytest.raises(AdminError, match="already the virtual IP"):
        a.set_vip("corp.test", "127.0.0.1")
    assert "virtual IP is now 127.0.0.9" in str(a.set_vip("corp.test", "127.0.0.9"))
    with pytest.raises(AdminError, match="is not a virtual hostname of corp.test"):
        a.remove_vhost("corp.test", "mail.demo.test")
    a.remove_vhost("demo.test", "MAIL.demo.test")
    assert memory.writes[-1][1] == {"zimbraVirtualHostname": [(ldap3.MODIFY_DELETE,
                                                                ["mail.demo.test"])]}


# --- writes to the demo slapd ------------------------------------------------------------------
