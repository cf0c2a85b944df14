import pytest

from carbotui import config

BASE = """
[node]
name = "Proxy.Demo.Test"
[listen]
imap = ["127.0.0.1:10143", "[::1]:10143"]
[tls]
certificate = "c.crt"
private_key = "c.key"
[ldap]
url = "ldap://127.0.0.1:10389"
base = "o=carbotui"
"""


def load(tmp_path, text):
    p = tmp_path / "carbotui.toml"
    p.write_text(text)
    return config.load(p)


def test_demo_settings_load():
    s = config.load("carbotui.toml")
    assert s.node_name == "proxy.demo.test"
    assert [str(e) for e in s.listen["imaps"]] == ["127.0.0.1:10993"]
    assert s.hosts["mbox2.demo.test"] == "127.0.0.2"
    assert s.audit_log.name == "audit.log" and s.audit_log.parent.name == "log"


def test_relative_paths_follow_the_file(tmp_path):
    s = load(tmp_path, BASE)
    assert s.tls_certificate == tmp_path / "c.crt"
    assert s.node_name == "proxy.demo.test"
    assert s.listen["imap"][1].host == "::1"
    assert s.mail.auth_wait == 10.0      # Carbonio's default when unset
    # Unlisted kinds take the seed's production ports on IPv4 and IPv6.
    assert [str(e) for e in s.listen["imaps"]] == ["0.0.0.0:993", "[::]:993"]
    assert [str(e) for e in s.listen["https"]] == ["0.0.0.0:443", "[::]:443"]


@pytest.mark.parametrize("extra, key", [
    ('[mail]\nstarttls = "maybe"', "mail.starttls"),
    ('[mail]\nmax_line = 0', "mail.max_line"),
    ('[mail]\nauth_wait = "slow"', "mail.auth_wait"),
    ('[memcached]\nservers = ["nohost"]', "memcached.servers"),
    ('[hosts]\n"mbox1" = "not-an-ip"', "hosts.mbox1"),
])
def test_bad_values_name_the_key(tmp_path, extra, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        load(tmp_path, BASE + extra)


def test_bad_listener_and_missing_key(tmp_path):
    with pytest.raises(config.ConfigError, match="listen.imap"):
        load(tmp_path, BASE.replace("127.0.0.1:10143", "127.0.0.1:99999"))
    with pytest.raises(config.ConfigError, match="ldap.base: required"):
        load(tmp_path, BASE.replace('base = "o=carbotui"', ""))
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        load(tmp_path, "[node")
