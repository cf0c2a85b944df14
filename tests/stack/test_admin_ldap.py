"""Validated admin changes written to the demo's real slapd (needs `make up`); the pure
checks are in tests/unit/test_admin.py."""
from __future__ import annotations

from pathlib import Path

import ldap3
import pytest

from carbotui.admin import changes as admin
from carbotui.core import certs
from carbotui.admin.changes import AdminError
from tests.unit.test_admin import ca, pem_pair, short_lived  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_directory():
    from carbotui.core import settings as config
    from carbotui.backends.directory import Directory, DirectoryUnavailable
    settings = config.load(ROOT / "carbotui.toml")
    directory = Directory(settings)
    try:
        directory.domains()
    except (DirectoryUnavailable, config.ConfigError) as exc:
        pytest.fail(f"the demo slapd must be running (make up): {exc}")
    yield settings, directory
    directory.close()


class TestWritesToDemoLdap:
    def test_mail_mode_round_trip(self, demo_directory):
        settings, directory = demo_directory
        a = admin.Admin(directory)
        before = directory.servers()[settings.node_name].mail_mode
        other = "https" if before == "redirect" else "redirect"
        try:
            a.set_mail_mode(settings.node_name, other)
            assert directory.servers()[settings.node_name].mail_mode == other
        finally:
            a.set_mail_mode(settings.node_name, before or "redirect")

    def test_vhost_with_generated_certificate_then_removed(self, demo_directory):
        settings, directory = demo_directory
        a = admin.Admin(directory, ca_dir=settings.var_dir / "certs")
        corp = next(d for d in directory.domains() if d.name == "corp.test")
        try:
            a.add_vhost("corp.test", "webmail.corp.test", generate=True)
            after = next(d for d in directory.domains() if d.name == "corp.test")
            assert "webmail.corp.test" in after.virtual_hostnames
            assert certs.covers(certs.load_cert(after.certificate_pem), "webmail.corp.test")
            with pytest.raises(AdminError, match="already a virtual hostname of domain corp"):
                a.add_vhost("demo.test", "webmail.corp.test", generate=True)
            a.remove_vhost("corp.test", "webmail.corp.test")
            assert "webmail.corp.test" not in next(
                d for d in directory.domains() if d.name == "corp.test").virtual_hostnames
        finally:
            dn = directory.entry_dn("zimbraDomain", "zimbraDomainName", "corp.test")
            restore = {"zimbraVirtualHostname": [(ldap3.MODIFY_REPLACE,
                                                  list(corp.virtual_hostnames))],
                       "zimbraSSLCertificate": [(ldap3.MODIFY_REPLACE,
                                                 [corp.certificate_pem] if corp.certificate_pem
                                                 else [])],
                       "zimbraSSLPrivateKey": [(ldap3.MODIFY_REPLACE,
                                                [corp.private_key_pem] if corp.private_key_pem
                                                else [])]}
            directory.modify(dn, restore)

    def test_vip_duplicate_refused_then_set_and_restored(self, demo_directory):
        _, directory = demo_directory
        a = admin.Admin(directory)
        with pytest.raises(AdminError, match="already the virtual IP of domain demo.test"):
            a.set_vip("corp.test", "127.0.0.1")
        a.set_vip("corp.test", "127.0.0.4")
        try:
            assert next(d for d in directory.domains()
                        if d.name == "corp.test").virtual_ips == ("127.0.0.4",)
        finally:
            a.set_vip("corp.test", "127.0.0.3")


class TestProvModifyCommands:
    """`carbotui prov modifyServer/modifyDomain` against the demo slapd."""

    def run(self, capsys, *argv):
        from carbotui.cli import prov
        code = prov.main(list(argv), str(ROOT / "carbotui.toml"))
        out, err = capsys.readouterr()
        return code, out, err

    def test_mail_mode(self, demo_directory, capsys):
        settings, directory = demo_directory
        before = directory.servers()[settings.node_name].mail_mode or "redirect"
        other = "https" if before == "redirect" else "redirect"
        try:
            code, out, _ = self.run(capsys, "modifyServer", settings.node_name,
                                    "zimbraReverseProxyMailMode", other)
            assert code == 0 and f"mail mode is now {other}" in out
            code, _, err = self.run(capsys, "modifyServer", settings.node_name,
                                    "zimbraReverseProxyMailMode", "http")
            assert code == 1 and "one of https, redirect" in err
        finally:
            self.run(capsys, "modifyServer", settings.node_name,
                     "zimbraReverseProxyMailMode", before)

    def test_vhost_refusals_and_usage(self, demo_directory, capsys):
        code, _, err = self.run(capsys, "modifyDomain", "corp.test", "+zimbraVirtualHostName",
                                "mail.demo.test", "--generate-cert")
        assert code == 1 and "already a virtual hostname of domain demo.test" in err
        code, _, err = self.run(capsys, "modifyDomain", "corp.test", "zimbraVirtualIPAddress",
                                "127.0.0.1")
        assert code == 1 and "already the virtual IP" in err
        code, _, err = self.run(capsys, "modifyDomain", "corp.test", "frob", "x")
        assert code == 2 and err.startswith("usage: carbotui prov modifyDomain")

    def test_vhost_add_with_imported_pem_files_then_remove(self, demo_directory, capsys,
                                                           tmp_path):
        settings, directory = demo_directory
        corp = next(d for d in directory.domains() if d.name == "corp.test")
        names = [*corp.virtual_hostnames, "pop.corp.test"]
        cert, key = admin.generate_certificate(settings.var_dir / "certs", names)
        (tmp_path / "c.pem").write_text(cert)
        (tmp_path / "k.pem").write_text(key)
        try:
            code, out, _ = self.run(capsys, "modifyDomain", "corp.test",
                                    "+zimbraVirtualHostName", "pop.corp.test",
                                    "--cert", str(tmp_path / "c.pem"),
                                    "--key", str(tmp_path / "k.pem"))
            assert code == 0 and "added virtual hostname pop.corp.test" in out
            code, out, _ = self.run(capsys, "modifyDomain", "corp.test",
                                    "-zimbraVirtualHostName", "pop.corp.test")
            assert code == 0 and "removed virtual hostname pop.corp.test" in out
        finally:
            dn = directory.entry_dn("zimbraDomain", "zimbraDomainName", "corp.test")
            directory.modify(dn, {
                "zimbraVirtualHostname": [(ldap3.MODIFY_REPLACE, list(corp.virtual_hostnames))],
                "zimbraSSLCertificate": [(ldap3.MODIFY_REPLACE, [corp.certificate_pem]
                                          if corp.certificate_pem else [])],
                "zimbraSSLPrivateKey": [(ldap3.MODIFY_REPLACE, [corp.private_key_pem]
                                         if corp.private_key_pem else [])]})
