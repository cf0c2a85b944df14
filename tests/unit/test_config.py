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
    ('[web]\nsend_timeout = 0', "web.send_timeout"),
    ('[web]\nmax_connections_per_ip = -1', "web.max_connections_per_ip"),
    ('[web]\nbody_min_rate = -5', "web.body_min_rate"),
    ('[web]\nlogin_body_limit = 0', "web.login_body_limit"),
    ('[web]\nextend_forwarded_for = "yes"', "web.extend_forwarded_for"),
])
def test_bad_values_name_the_key(tmp_path, extra, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        load(tmp_path, BASE + extra)


def test_web_hardening_defaults(tmp_path):
    web = load(tmp_path, BASE).web
    assert (web.send_timeout, web.body_min_rate, web.max_connections_per_ip,
            web.login_body_limit, web.extend_forwarded_for) == (60.0, 500, 1000, 65536, False)
    assert load(tmp_path, BASE + "[web]\nmax_connections_per_ip = 0").web.max_connections_per_ip == 0


def test_bad_listener_and_missing_key(tmp_path):
    with pytest.raises(config.ConfigError, match="listen.imap"):
        load(tmp_path, BASE.replace("127.0.0.1:10143", "127.0.0.1:99999"))
    with pytest.raises(config.ConfigError, match="ldap.base: required"):
        load(tmp_path, BASE.replace('base = "o=carbotui"', ""))
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        load(tmp_path, "[node")


def test_include_merges_tables_and_keeps_paths_relative_to_their_file(tmp_path):
    (tmp_path / "base.toml").write_text(BASE + '[mail]\nauth_wait = 2\nmax_line = 100\n')
    node = tmp_path / "cluster" / "node1.toml"
    node.parent.mkdir()
    node.write_text('include = "../base.toml"\n[node]\nname = "n1"\nvar_dir = "v"\n'
                    '[mail]\nauth_wait = 5\n')
    s = config.load(node)
    assert s.node_name == "n1" and s.var_dir == node.parent / "v"
    assert s.tls_certificate == tmp_path / "c.crt"          # from the base, its folder
    assert s.mail.auth_wait == 5.0 and s.mail.limits.max_line == 100


def test_include_loop_is_an_error(tmp_path):
    (tmp_path / "a.toml").write_text('include = "b.toml"\n')
    (tmp_path / "b.toml").write_text('include = "a.toml"\n')
    with pytest.raises(config.ConfigError, match="include loop"):
        config.load(tmp_path / "a.toml")


def test_proxy_protocol_listeners_and_trusted_networks(tmp_path):
    s = load(tmp_path, BASE.replace('"[::1]:10143"', '"[::1]:10143 proxy_protocol"')
             + '[proxy_protocol]\ntrusted = ["127.0.0.1/32", "fd00::/8"]\ntimeout = 4\n')
    assert [e.proxy_protocol for e in s.listen["imap"]] == [False, True]
    assert str(s.listen["imap"][1]) == "[::1]:10143 proxy_protocol"
    assert len(s.proxy_trusted) == 2 and s.proxy_timeout == 4.0
    with pytest.raises(config.ConfigError, match="unknown listener option"):
        load(tmp_path, BASE.replace('"[::1]:10143"', '"[::1]:10143 ssl"'))
    with pytest.raises(config.ConfigError, match="proxy_protocol.trusted"):
        load(tmp_path, BASE + '[proxy_protocol]\ntrusted = ["nope"]\n')
