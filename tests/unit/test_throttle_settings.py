"""[throttle] parsing, whitelist matching and key building: pure, no memcached."""
import ipaddress

import pytest

from carbotui.core.settings import ConfigError
from carbotui.services.throttle import (IP_REJECT, USER_REJECT, ThrottleSettings, block_key, ip_key,
                               normalize_ip, parse_networks, user_key, whitelisted)


def test_defaults_are_carbonio_off():
    s = ThrottleSettings.from_table({})
    assert (s.ip_limit, s.ip_ttl, s.user_limit, s.user_ttl) == (0, 3600, 0, 3600)
    assert s.ip_reject_message == IP_REJECT == "Login rejected from this IP"
    assert s.user_reject_message == USER_REJECT == "Login rejected for this user"
    assert s.count_user == "failures" and s.whitelist == ()


def test_protocol_limit_falls_back_to_general():
    s = ThrottleSettings.from_table({"ip_limit": 50, "ip_ttl": 600, "imap_ip_limit": 30,
                                     "imap_ip_ttl": 60})
    assert s.ip_limit_for("imaps") == (30, 60)
    assert s.ip_limit_for("pop3") == (50, 600)
    assert s.ip_limit_for("https") == (50, 600)


@pytest.mark.parametrize("table, key", [
    ({"ip_limit": -1}, "throttle.ip_limit"),
    ({"ip_limit": "10"}, "throttle.ip_limit"),
    ({"user_ttl": 0}, "throttle.user_ttl"),
    ({"ip_ttl": 31 * 24 * 3600}, "throttle.ip_ttl"),
    ({"count_user": "all"}, "throttle.count_user"),
    ({"whitelist": ["10.0.0.0/33"]}, "throttle.whitelist"),
    ({"whitelist": "10.0.0.0/8"}, "throttle.whitelist"),
    ({"user_reject_message": "a\r\nb"}, "throttle.user_reject_message"),
    ({"ip_limt": 3}, "throttle.ip_limt"),
])
def test_bad_values_name_the_key(table, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ThrottleSettings.from_table(table)


def test_whitelist_ipv4_ipv6_and_mapped():
    nets = parse_networks(["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"], "w")
    assert whitelisted("10.1.2.3", nets)
    assert whitelisted("::ffff:10.1.2.3", nets)          # IPv6 socket view of IPv4
    assert whitelisted("2001:DB8::1", nets)
    assert whitelisted("192.0.2.7", nets) and not whitelisted("192.0.2.8", nets)
    assert not whitelisted("11.0.0.1", nets)
    assert not whitelisted("not-an-ip", nets)
    assert not whitelisted("10.0.0.1", ())
    assert nets[2] == ipaddress.ip_network("192.0.2.7/32")


def test_keys_follow_carbonio_and_are_escaped():
    assert ip_key("imaps", "203.0.113.5") == b"throttle:proto=i,ip=203.0.113.5"
    assert ip_key("pop3", "::ffff:203.0.113.5") == b"throttle:proto=p,ip=203.0.113.5"
    assert ip_key("https", "2001:DB8::1") == b"throttle:proto=h,ip=2001%3Adb8%3A%3A1"
    assert user_key("Bob@Demo.test") == b"throttle:user=bob@demo.test"
    hostile = user_key("x\r\nset route:proto=imap;user=v 0 0 1\r\n")
    assert b"\r" not in hostile and b"\n" not in hostile and b" " not in hostile
    assert len(user_key("a" * 400)) == 32                 # MD5 like nginx
    assert block_key("192.0.2.1") == b"block:ip=192.0.2.1"


def test_normalize_ip():
    assert normalize_ip("[2001:db8:0::1]") == "2001:db8::1"
    assert normalize_ip("fe80::1%eth0") == "fe80::1"
    assert normalize_ip("junk") == "junk"
