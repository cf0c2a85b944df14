"""web._good_host: the Host check of every request, remembered for the values the regex
matched; it must judge every value as ``_HOST.match`` does, the second time as the first,
and stay bounded."""
from __future__ import annotations

from carbotui.proxy import web

HOSTS = [b"mail.demo.test", b"MAIL.Demo.Test:8443", b"h:0", b"h:99999", b"h:123456", b"h:",
         b"[::1]", b"[::1]:443", b"[2001:db8::1]x", b"[zz]", b"[]", b"a" * 253, b"a" * 254,
         b"a" * 253 + b":65535", b"h\n", b"h\r\nX: y", b"h\x00", b"h h", b"h/", b"h@x",
         b"\xc3\xa9.test", b"h;x", b"-", b".", b"h:1:2", b"[" + b"1" * 45 + b"]",
         b"[" + b"1" * 46 + b"]"]


def test_good_host_judges_as_the_regex_twice():
    for host in HOSTS:
        expected = web._HOST.match(host) is not None
        assert web._good_host(host) is expected, host
        assert web._good_host(host) is expected, host             # from the set, or again
        assert (host in web._GOOD_HOSTS) is expected      # only matched values kept


def test_good_hosts_are_bounded():
    for i in range(web._GOOD_HOSTS_MAX + 20):
        assert web._good_host(b"h%d.demo.test" % i)
    assert 0 < len(web._GOOD_HOSTS) <= web._GOOD_HOSTS_MAX
    assert not web._good_host(b"bad host") and b"bad host" not in web._GOOD_HOSTS
