"""The validated change path for response headers and for certificates from files
(carbotui/admin/changes.py, what `prov modifyConfig/modifyDomain/deployCertificate` and
certbot's deploy hook use), against an in-memory directory: refusals write nothing."""
from __future__ import annotations

import datetime as dt

import ldap3
import pytest

from carbotui.admin import changes as admin
from carbotui.admin.changes import AdminError
from carbotui.backends.directory import Domain, ResponseHeaderAttrs
from carbotui.core import certs
from carbotui.protocols import webheaders

GLOBAL_DN = "cn=config"


class MemoryDirectory:
    """The Directory methods Admin uses; modify applies the change, as slapd would."""

    def __init__(self, domains):
        self._domains = {d.name: d for d in domains}
        self.attrs = {GLOBAL_DN: {}} | {f"zimbraDomainName={d.name}": {} for d in domains}
        self.writes = []

    def domains(self):
        return list(self._domains.values())

    def entry_dn(self, object_class, attr, value):
        if object_class == "zimbraGlobalConfig":
            return GLOBAL_DN
        return f"zimbraDomainName={value}" if value in self._domains else ""

    def response_headers(self):
        g = self.attrs[GLOBAL_DN]
        domains = {dn.split("=", 1)[1]: (tuple(a.get(admin.HEADERS_ATTR, ())),
                                         (a.get(admin.CSP_ATTR) or [""])[0])
                   for dn, a in self.attrs.items() if dn != GLOBAL_DN
                   and (a.get(admin.HEADERS_ATTR) or a.get(admin.CSP_ATTR))}
        return ResponseHeaderAttrs(tuple(g.get(admin.HEADERS_ATTR, ())),
                                   (g.get(admin.CSP_ATTR) or [""])[0], domains)

    def modify(self, dn, changes):
        self.writes.append((dn, changes))
        entry = self.attrs[dn]
        for attr, ops in changes.items():
            for op, values in ops:
                now = entry.setdefault(attr, [])
                if op == ldap3.MODIFY_REPLACE:
                    entry[attr] = list(values)
                elif op == ldap3.MODIFY_ADD:
                    assert not set(values) & set(now), "slapd: value exists"
                    now.extend(values)
                else:
                    assert set(values) <= set(now), "slapd: no such value"
                    entry[attr] = [v for v in now if v not in values]


@pytest.fixture
def memory():
    return MemoryDirectory([Domain("demo.test", virtual_hostnames=("mail.demo.test",)),
                            Domain("corp.test")])


def test_global_list_replace_add_remove(memory):
    a = admin.Admin(memory)
    assert "2 response header(s) set" in str(a.set_response_headers(
        None, "=", ["X-Frame-Options: DENY", "Strict-Transport-Security: max-age=60"]))
    a.set_response_headers(None, "+", ["X-Robots-Tag: none"])
    assert memory.writes[-1] == (GLOBAL_DN, {admin.HEADERS_ATTR: [(ldap3.MODIFY_REPLACE, [
        "X-Frame-Options: DENY", "Strict-Transport-Security: max-age=60", "X-Robots-Tag: none"])]})
    a.set_response_headers(None, "-", ["X-Frame-Options: DENY"])
    assert memory.response_headers().values == ("Strict-Transport-Security: max-age=60",
                                                 "X-Robots-Tag: none")
    result = a.set_response_headers(None, "=", [])
    assert "removed (Carbonio default set)" in str(result)
    assert memory.response_headers().values == ()


def test_adding_to_an_unset_list_keeps_what_was_in_force(memory):
    a = admin.Admin(memory)
    a.set_response_headers(None, "+", ["X-Extra: 1"])        # unset: Carbonio's default set
    assert memory.response_headers().values == (*webheaders.DEFAULT_HEADERS, "X-Extra: 1")
    a.set_response_headers("demo.test", "-", ["X-Extra: 1"])  # unset: the global list
    assert memory.response_headers().domains["demo.test"][0] == webheaders.DEFAULT_HEADERS
    a.set_response_headers(None, "-", ["X-Robots-Tag: noindex, nofollow"])
    assert "X-Robots-Tag: noindex, nofollow" not in memory.response_headers().values
    with pytest.raises(AdminError, match="given twice"):
        a.set_response_headers("corp.test", "+", ["x-frame-options: DENY"])


@pytest.mark.parametrize("values, reason", [
    (["X-Evil: a\r\nSet-Cookie: s=1"], "holds a CR"),
    (["X-Evil: a\nb"], "holds a LF"),
    (["X-Evil: a\x00"], "holds a NUL"),
    (["Content-Length: 5"], "frames or routes"),
    (["X-A: 1", "X-a: 2"], "given twice"),
    (["X-A " + "x" * 10_000], "expected 'Name: value'|longer than"),
    ([f"X-{i}: v" for i in range(33)], "at most 32"),
])
def test_a_bad_list_is_refused_and_nothing_written(memory, values, reason):
    with pytest.raises(AdminError, match=reason) as exc:
        admin.Admin(memory).set_response_headers(None, "=", values)
    assert "\r" not in str(exc.value) and "\n" not in str(exc.value)
    assert memory.writes == []


def test_add_checks_the_resulting_list(memory):
    a = admin.Admin(memory)
    a.set_response_headers(None, "=", ["X-A: 1"])
    with pytest.raises(AdminError, match="given twice"):
        a.set_response_headers(None, "+", ["x-a: 2"])
    with pytest.raises(AdminError, match="has no zimbraReverseProxyResponseHeaders value"):
        a.set_response_headers(None, "-", ["X-B: 1"])
    assert len(memory.writes) == 1


def test_per_domain_list_and_csp(memory):
    a = admin.Admin(memory)
    a.set_response_headers("Demo.Test", "=", ["X-Frame-Options: DENY"])
    a.set_csp_header("demo.test", "Content-Security-Policy: default-src 'none'")
    assert memory.response_headers().domains == {
        "demo.test": (("X-Frame-Options: DENY",), "Content-Security-Policy: default-src 'none'")}
    with pytest.raises(AdminError, match="not X-Frame-Options"):
        a.set_csp_header("demo.test", "X-Frame-Options: DENY")
    with pytest.raises(AdminError, match="holds a LF"):
        a.set_csp_header(None, "Content-Security-Policy: a\nb")
    with pytest.raises(AdminError, match="domain nope.test not found"):
        a.set_response_headers("nope.test", "=", ["X-A: 1"])
    a.set_csp_header("demo.test", "")
    assert memory.writes[-1][1] == {admin.CSP_ATTR: [(ldap3.MODIFY_REPLACE, [])]}


# --- certificates from files (certbot's deploy hook) ----------------------------------------

@pytest.fixture(scope="module")
def ca():
    return certs.make_ca("test CA")


def pair(ca, names, days=90, start=None):
    cert, key = certs.issue(*ca, names, days=days, start=start)
    return certs.cert_to_pem(cert).decode(), certs.key_to_pem(key).decode()


def test_install_certificate_for_the_domains_of_the_names(ca):
    memory = MemoryDirectory([
        Domain("demo.test", virtual_hostnames=("mail.demo.test", "www.demo.test")),
        Domain("corp.test", virtual_hostnames=("mail.corp.test",)),
        Domain("other.test", virtual_hostnames=("mail.other.test",))])
    cert_pem, key_pem = pair(ca, ["proxy.example", "mail.demo.test", "www.demo.test",
                                  "mail.corp.test"])
    result = admin.Admin(memory).install_certificate(
        ["proxy.example", "mail.demo.test", "www.demo.test", "mail.corp.test"], cert_pem, key_pem)
    assert "demo.test, corp.test: installed the certificate" in str(result)
    assert "proxy.example: no domain's virtual hostname" in str(result)
    assert [dn for dn, _ in memory.writes] == ["zimbraDomainName=demo.test",
                                               "zimbraDomainName=corp.test"]
    assert memory.writes[0][1] == {"zimbraSSLCertificate": [(ldap3.MODIFY_REPLACE, [cert_pem])],
                                   "zimbraSSLPrivateKey": [(ldap3.MODIFY_REPLACE, [key_pem])]}


def test_install_certificate_refusals_write_nothing(ca):
    memory = MemoryDirectory([
        Domain("demo.test", virtual_hostnames=("mail.demo.test", "www.demo.test")),
        Domain("corp.test", virtual_hostnames=("mail.corp.test",))])
    a = admin.Admin(memory)
    good_cert, good_key = pair(ca, ["mail.demo.test", "www.demo.test", "mail.corp.test"])
    _, other_key = pair(ca, ["mail.demo.test"])
    partial = pair(ca, ["mail.demo.test", "mail.corp.test"])          # www.demo.test missing
    old = pair(ca, ["mail.demo.test", "www.demo.test", "mail.corp.test"], days=1,
               start=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3))
    cases = [
        (["nothing.test"], good_cert, good_key, "none of nothing.test is a virtual hostname"),
        ([" "], good_cert, good_key, "no names given"),
        (["mail.demo.test"], good_cert, other_key, "does not belong to the certificate"),
        (["mail.demo.test", "mail.corp.test"], *partial, "domain demo.test: the certificate "
                                                          "does not cover www.demo.test"),
        (["mail.corp.test"], *old, "expired"),
        (["mail.corp.test"], "not a pem", good_key, "not a PEM X.509 certificate"),
    ]
    for names, cert_pem, key_pem, reason in cases:
        with pytest.raises(AdminError, match=reason):
            a.install_certificate(names, cert_pem, key_pem)
    assert memory.writes == []
