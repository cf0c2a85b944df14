"""Review M6: the LDAP link is verified TLS, and lookups use a read-only bind.

Private slapd instances (temporary directories, free ports) serve ldaps:// and ldap://
with StartTLS, each with its own certificate: one signed by the demo CA
(var/certs/ca.crt) for 127.0.0.1, one from a CA nobody configured (what an active
man in the middle would present), and one from the demo CA for another name. Before the
fix ldap3 ran with CERT_NONE: the admin bind (DN and password) reached any of them.
Now only the first gets a bind; slapd's own log shows which binds arrived.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import subprocess
from pathlib import Path

import ldap3
import pytest
from ldap3.core.exceptions import LDAPConnectionIsReadOnlyError

from carbotui.core import certs
from carbotui.core import settings as config
from demo import stack
from carbotui.backends.directory import Directory, DirectoryUnavailable

from .conftest import CA, REPO, SETTINGS, wait_for

BASE = "o=tlstest"
ADMIN = f"cn=admin,{BASE}"
READER = f"cn=reader,{BASE}"

ACCESS = """\
access to attrs=userPassword
    by anonymous auth
    by * none
access to *
    by dn.exact="{reader}" read
    by * none
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Slapd:
    """slapd on ldaps://127.0.0.1:<ldaps> and ldap://127.0.0.1:<ldap>, with `cert`."""

    def __init__(self, root: Path, cert, key, admin_pw: str, reader_pw: str):
        self.dir = root
        (root / "data").mkdir(parents=True)
        certs.write_pair(cert, key, root / "server.crt", root / "server.key")
        conf = root / "slapd.conf"
        conf.write_text(stack.slapd_conf(
            schema=REPO / "etc/ldap/carbotui.schema", run=root, suffix=BASE, admin=ADMIN,
            rootpw=stack.ssha(admin_pw), directory=root / "data", maxsize=10485760,
            tls=(root / "server.crt", root / "server.key")) + ACCESS.format(reader=READER))
        seed = root / "seed.ldif"
        seed.write_text("\n".join([
            stack.ldif_entry(BASE, [("objectClass", "organization"), ("o", "tlstest")]),
            stack.ldif_entry(f"cn=config,{BASE}", [("objectClass", "zimbraGlobalConfig"),
                                                   ("cn", "config"),
                                                   ("zimbraDefaultDomainName", "tls.test")]),
            stack.ldif_entry(READER, [("objectClass", "organizationalRole"),
                                     ("objectClass", "simpleSecurityObject"), ("cn", "reader"),
                                     ("userPassword", stack.ssha(reader_pw))])]))
        subprocess.run(["slapadd", "-q", "-f", str(conf), "-l", str(seed)], check=True,
                       capture_output=True)
        self.ldaps, self.ldap = _free_port(), _free_port()
        self.log = open(root / "slapd.log", "wb")
        self.proc = subprocess.Popen(
            ["/usr/sbin/slapd", "-d", "stats", "-f", str(conf), "-h",
             f"ldaps://127.0.0.1:{self.ldaps}/ ldap://127.0.0.1:{self.ldap}/"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: (_open(self.ldaps) and _open(self.ldap)) or self.proc.poll() is not None,
                 10, what="private slapd listening")
        assert self.proc.poll() is None, (root / "slapd.log").read_text()

    def binds(self) -> list[str]:
        """The DNs slapd saw a simple bind for (from its -d stats log)."""
        self.log.flush()
        text = (self.dir / "slapd.log").read_text(errors="replace")
        return [line.split('dn="', 1)[1].split('"', 1)[0]
                for line in text.splitlines() if ' BIND dn="' in line and " method=" in line]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def slapds(tmp_path_factory):
    if not os.path.exists("/usr/sbin/slapd"):
        pytest.skip("slapd is not installed")
    demo_ca, demo_key = certs.read_pair(CA, CA.with_suffix(".key"))
    rogue_ca, rogue_key = certs.make_ca("not the configured CA")
    admin_pw, reader_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    root = tmp_path_factory.mktemp("slapd")
    made = {}
    try:
        for name, (ca, ca_key, names, ips) in {
            "good": (demo_ca, demo_key, ["localhost"], ["127.0.0.1"]),
            "rogue": (rogue_ca, rogue_key, ["localhost"], ["127.0.0.1"]),
            "other-name": (demo_ca, demo_key, ["ldap.elsewhere.test"], []),
        }.items():
            cert, key = certs.issue(ca, ca_key, names, ips)
            made[name] = Slapd(root / name, cert, key, admin_pw, reader_pw)
        (root / "admin.secret").write_text(admin_pw)
        (root / "reader.secret").write_text(reader_pw)
        yield made, root
    finally:
        for s in made.values():
            s.stop()


def settings(root: Path, url: str, **ldap):
    fields = dict(url=url, bind_dn=ADMIN, password_file=root / "admin.secret", base=BASE,
                  timeout=3, ca_file=CA, start_tls=False, lookup_bind_dn="",
                  lookup_password_file=None)
    fields.update(ldap)
    fields["urls"] = config.parse_ldap_urls(fields.pop("url"), "ldap.url")
    return dataclasses.replace(SETTINGS, **{f"ldap_{k}": v for k, v in fields.items()})


def lookup(s) -> str:
    d = Directory(s)
    try:
        return d.default_domain()
    finally:
        d.close()


@pytest.mark.parametrize("start_tls", [False, True], ids=["ldaps", "starttls"])
def test_a_certificate_from_the_configured_ca_for_the_host_is_accepted(slapds, start_tls):
    made, root = slapds
    good = made["good"]
    url = (f"ldap://127.0.0.1:{good.ldap}" if start_tls else f"ldaps://127.0.0.1:{good.ldaps}")
    before = len(good.binds())
    assert lookup(settings(root, url, start_tls=start_tls)) == "tls.test"
    wait_for(lambda: good.binds()[before:] == [ADMIN], 5, what="the bind in slapd's log")


@pytest.mark.parametrize("server", ["rogue", "other-name"])
@pytest.mark.parametrize("start_tls", [False, True], ids=["ldaps", "starttls"])
def test_any_other_certificate_is_refused_before_the_bind(slapds, server, start_tls):
    made, root = slapds
    peer = made[server]
    url = (f"ldap://127.0.0.1:{peer.ldap}" if start_tls else f"ldaps://127.0.0.1:{peer.ldaps}")
    with pytest.raises(DirectoryUnavailable, match="(?i)certificate|verif|hostname|match"):
        lookup(settings(root, url, start_tls=start_tls))
    # slapd got the handshake (it logs the connection) but never a bind
    wait_for(lambda: "ACCEPT" in (peer.dir / "slapd.log").read_text(errors="replace"), 5,
             what="slapd seeing the connection")
    assert peer.binds() == []


def test_lookups_bind_read_only_and_changes_bind_as_admin(slapds):
    made, root = slapds
    good = made["good"]
    s = settings(root, f"ldaps://127.0.0.1:{good.ldaps}", lookup_bind_dn=READER,
                 lookup_password_file=root / "reader.secret")
    d = Directory(s)
    try:
        assert d.default_domain() == "tls.test"
        assert d._connection().extend.standard.who_am_i() == f"dn:{READER}"
        with pytest.raises(LDAPConnectionIsReadOnlyError):    # refused before it is sent
            d._connection().modify(f"cn=config,{BASE}", {
                "zimbraDefaultDomainName": [(ldap3.MODIFY_REPLACE, ["x.test"])]})
        assert d._admin is None                               # lookups never bind as admin
        d.modify(f"cn=config,{BASE}",
                 {"zimbraDefaultDomainName": [(ldap3.MODIFY_REPLACE, ["changed.test"])]})
        assert d._admin.extend.standard.who_am_i() == f"dn:{ADMIN}"
        assert d.default_domain() == "changed.test"
    finally:
        d.modify(f"cn=config,{BASE}",
                 {"zimbraDefaultDomainName": [(ldap3.MODIFY_REPLACE, ["tls.test"])]})
        d.close()


def test_settings_keys(tmp_path):
    from carbotui.core import settings as config
    base = (REPO / "carbotui.toml").read_text().replace('var_dir = "var"',
                                                        f'var_dir = "{REPO / "var"}"')
    for name in ("certificate", "private_key", "password_file", "upstream_ca"):
        base = base.replace(f'{name} = "var/', f'{name} = "{REPO}/var/')
    ours = ("url", "start_tls", "ca_file", "lookup_bind_dn", "lookup_password_file")
    base = "\n".join(line for line in base.splitlines()
                     if line.split("=")[0].strip() not in ours)

    def load(extra: str):
        (tmp_path / "c.toml").write_text(base.replace("[ldap]\n", "[ldap]\n" + extra, 1))
        return config.load(tmp_path / "c.toml")

    s = load('url = "ldap://127.0.0.1:10389"\nstart_tls = true\nca_file = "ca.pem"\n'
             'lookup_bind_dn = "cn=proxy,o=carbotui"\nlookup_password_file = "proxy.secret"\n')
    assert s.ldap_start_tls and s.ldap_ca_file == tmp_path / "ca.pem"
    assert (s.ldap_lookup_bind_dn, s.ldap_lookup_password_file) == (
        "cn=proxy,o=carbotui", tmp_path / "proxy.secret")
    s = load('url = "ldaps://127.0.0.1:10636"\n')
    assert (s.ldap_start_tls, s.ldap_ca_file, s.ldap_lookup_bind_dn) == (False, None, "")
    with pytest.raises(config.ConfigError, match="start_tls"):
        load('url = "ldaps://127.0.0.1:10636"\nstart_tls = true\n')
    with pytest.raises(config.ConfigError, match="lookup"):
        load('url = "ldap://127.0.0.1:10389"\nlookup_bind_dn = "cn=proxy,o=carbotui"\n')


def test_the_demo_workers_lookup_dn_reads_keys_and_cannot_write():
    """The demo's [ldap] lookup_bind_dn: what the workers bind as. slapd itself refuses
    its writes (not only the read-only connection), and it still reads what they need."""
    if not SETTINGS.ldap_lookup_bind_dn:
        pytest.skip("carbotui.toml sets no lookup_bind_dn")
    d = Directory(SETTINGS)
    try:
        assert d._connection().extend.standard.who_am_i() == f"dn:{SETTINGS.ldap_lookup_bind_dn}"
        demo_test = next(x for x in d.domains() if x.name == "demo.test")
        assert "PRIVATE KEY" in demo_test.private_key_pem and d.servers()
        assert d.find_account("user01@demo.test") is not None
    finally:
        d.close()
    raw = ldap3.Connection(ldap3.Server(SETTINGS.ldap_urls[0]), user=SETTINGS.ldap_lookup_bind_dn,
                           password=SETTINGS.ldap_lookup_password(), auto_bind=True)
    try:
        assert not raw.modify(f"cn=config,{SETTINGS.ldap_base}", {
            "zimbraDefaultDomainName": [(ldap3.MODIFY_REPLACE, ["evil.test"])]})
        assert raw.result["description"] == "insufficientAccessRights"
        raw.search(SETTINGS.ldap_base, "(uid=user01@demo.test)", attributes=["userPassword"])
        assert raw.response[0]["raw_attributes"].get("userPassword") in (None, [])
    finally:
        raw.unbind()
