import re

from carbotui.backends.directory import Account
from carbotui.backends.memcache import one_at_a_time
from carbotui.services.routes import alias_key, escape, flush_keys, id_route_key, route_key

KEY = re.compile(rb"[\x21-\x7e]{1,250}")   # what memcached accepts, minus anything risky


def test_carbonio_compatible_keys():
    assert route_key("imap", "user01@demo.test") == b"route:proto=imap;user=user01@demo.test"
    assert route_key("pop3ssl", "User01@Demo.Test") == b"route:proto=pop3ssl;user=user01@demo.test"
    assert alias_key("user01", "127.0.0.1") == b"alias:user=user01;ip=127.0.0.1"
    assert id_route_key("httpssl", "abc-1") == b"route:proto=httpssl;id=abc-1"
    assert id_route_key("httpssl", "abc", admin=True) == b"route:proto=httpssl;admin=1;id=abc"


def test_injection_is_escaped():
    evil = "victim@demo.test 0 0 1\r\nset route:proto=imap;user=victim@demo.test 0 3600 15\r\n"
    key = route_key("imap", evil)
    assert KEY.fullmatch(key)
    assert b"\r" not in key and b"\n" not in key and b" " not in key
    assert key.count(b";") == 1            # the login cannot add key fields


def test_every_byte_escapes_to_a_valid_key():
    for b in range(256):
        text = bytes([b]).decode("latin-1")
        assert KEY.fullmatch(route_key("imap", text))
        assert KEY.fullmatch(alias_key(text, "::1"))


def test_long_keys_are_hashed_to_fit():
    key = route_key("imap", "a" * 400 + "@demo.test")
    assert len(key) == 32 and KEY.fullmatch(key)


def test_escape_is_injective_on_different_logins():
    assert escape("a%20b") != escape("a b")


def test_flush_covers_all_protocols_aliases_and_ids():
    acct = Account(name="user01@demo.test", zimbra_id="id-1", mail_host="mbox1",
                   aliases=("nick01@demo.test",))
    keys = flush_keys(acct, ["127.0.0.1"])
    assert b"route:proto=imap;user=user01@demo.test" in keys
    assert b"route:proto=imapssl;user=nick01@demo.test" in keys
    assert b"route:proto=pop3;user=user01" in keys
    assert b"route:proto=httpssl;id=id-1" in keys
    assert b"alias:user=user01;ip=127.0.0.1" in keys


def test_server_hash_matches_reference_values():
    # one-at-a-time of b"a" is 0xca2e9442 (Bob Jenkins' published function).
    assert one_at_a_time(b"a") == 0xCA2E9442
