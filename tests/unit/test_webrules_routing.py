"""carbotui.protocols.webrules, routing: which mailbox server a web request names, in
Carbonio's order (REST path, ActiveSync's Basic user else User=, DAV path, auth token,
else balanced), what Basic credentials it carries, and how long its response may take
by path. Requests are parsed from bytes by the proxy's own parser, whole and byte by
byte, so the rules see what the glue sees."""
from __future__ import annotations

import base64

import pytest

from carbotui.core import settings as config
from carbotui.core.authtoken import encode_token
from carbotui.protocols.http11 import Request, RequestParser
from carbotui.protocols.webrules import (
    ACTIVESYNC, BALANCED, DAV, POLLING, REST, TOKEN, CredentialCache, basic_auth,
    basic_protocol, checked_user, path_timeout, query_arg, route_hint,
)

ZID = "0a1b2c3d-0000-4000-8000-00000000beef"
TOKEN_VALUE = encode_token(ZID, 4102444800000, key="0b5e1c0de0")


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def parsed(target: str, *headers: str, method: str = "GET") -> Request:
    """The request as the proxy's parser gives it, from bytes fed whole and byte by byte
    (the two must agree)."""
    raw = (f"{method} {target} HTTP/1.1\r\nHost: mail.demo.test\r\n"
           + "".join(h + "\r\n" for h in headers) + "\r\n").encode("latin-1")
    whole = [e for e in RequestParser().feed(raw) if isinstance(e, Request)]
    parser, split = RequestParser(), []
    for i in range(len(raw)):
        split += [e for e in parser.feed(raw[i:i + 1]) if isinstance(e, Request)]
    assert len(whole) == 1 and whole == split
    return whole[0]


def hint(target: str, *headers: str, admin: bool = False, method: str = "GET"):
    req = parsed(target, *headers, method=method)
    return route_hint(req.target, req.headers, admin=admin)


AS = "/Microsoft-Server-ActiveSync?Cmd=Sync&DeviceId=abc&DeviceType=iPhone"


# ------------------------------------------------------------------ the order

@pytest.mark.parametrize("target, headers, by, user", [
    ("/home/user02@demo.test/inbox", (), REST, "user02@demo.test"),
    ("/home/~user02/inbox?fmt=rss", (), REST, "user02"),
    ("/service/home/~user02@demo.test/Calendar.ics", (), REST, "user02@demo.test"),
    (AS, (f"Authorization: Basic {b64('user02@demo.test:demo-pass')}",), ACTIVESYNC,
     "user02@demo.test"),
    (AS, (f"Authorization: Basic {b64('DEMO.TEST' + chr(92) + 'user02:demo-pass')}",),
     ACTIVESYNC, "user02@DEMO.TEST"),                     # DOMAIN\user is user@DOMAIN
    (AS + "&User=user04", (), ACTIVESYNC, "user04"),      # no credentials: User=
    (AS + "&user=demo.test%5Cuser04", (), ACTIVESYNC, "user04@demo.test"),
    (AS + "&User=user04",                                 # the credentials win
     (f"Authorization: Basic {b64('user02:x')}",), ACTIVESYNC, "user02"),
    ("/microsoft-server-activesync?User=user04", (), ACTIVESYNC, "user04"),
    ("/dav/user02@demo.test/Calendar/", (), DAV, "user02@demo.test"),
    ("/principals/users/user02@demo.test/", (), DAV, "user02@demo.test"),
    ("/dav/user%40demo.test/", (), DAV, "user@demo.test"),  # decoded once
    # a REST path comes before the cookie, the cookie before balancing
    ("/home/user02/x", (f"Cookie: ZM_AUTH_TOKEN={TOKEN_VALUE}",), REST, "user02"),
    ("/mail", (f"Cookie: a=b; ZM_AUTH_TOKEN={TOKEN_VALUE}",), TOKEN, ""),
    (f"/service/soap/NoOpRequest?zauthtoken={TOKEN_VALUE}", (), TOKEN, ""),
    (f"/x?ZAUTHTOKEN={TOKEN_VALUE}", (), TOKEN, ""),
    ("/mail", (), BALANCED, ""),
    ("/", (), BALANCED, ""),
    ("/.well-known/caldav", (), BALANCED, ""),
])
def test_route_hint_follows_carbonios_order(target, headers, by, user):
    h = hint(target, *headers)
    assert (h.by, h.user) == (by, user)
    assert h.zimbra_id == (ZID if by == TOKEN else "")


def test_admin_port_routes_by_the_admin_token_only():
    assert hint("/home/user02/x", admin=True).by == BALANCED
    assert hint("/dav/user02/", admin=True).by == BALANCED
    assert hint("/x", f"Cookie: ZM_AUTH_TOKEN={TOKEN_VALUE}", admin=True).by == BALANCED
    h = hint("/x", f"Cookie: ZM_ADMIN_AUTH_TOKEN={TOKEN_VALUE}", admin=True)
    assert (h.by, h.zimbra_id) == (TOKEN, ZID)


# --------------------------------------------------------------- bad input

@pytest.mark.parametrize("target, headers", [
    # malformed Basic: no colon, not base64, not strict base64, another scheme, two fields
    (AS, (f"Authorization: Basic {b64('user02')}",)),
    (AS, ("Authorization: Basic !!!notbase64!!!",)),
    (AS, ("Authorization: Basic dXNlcjAyOng",)),            # padding missing
    (AS, (f"Authorization: Bearer {b64('user02:x')}",)),
    (AS, (f"Authorization: Basic {b64('user02:x')}", f"Authorization: Basic {b64('user04:x')}")),
    (AS, ("Authorization: Basic " + "QUFB" * 700,)),       # over MAX_BASIC_TOKEN
    (AS, (f"Authorization: Basic {b64('user02' + chr(10) + 'x:y')}",)),   # LF in the name
    (AS, (f"Authorization: Basic {b64(chr(92) + 'user02:x')}",)),         # \user: no domain
    (AS, (f"Authorization: Basic {b64('DEMO' + chr(92) + 'a' + chr(92) + 'b:x')}",)),
    (AS, (f"Authorization: Basic {b64(':x')}",)),                           # empty user
    # User= that is no name
    (AS + "&User=user02%0D%0AX-Evil:%201", ()),
    (AS + "&User=..%2Fuser04", ()),
    (AS + "&User=user02%2Fx", ()),
    (AS + "&User=user02&User=user04", ()),                 # which one? neither
    (AS + "&User=", ()),
    (AS + "&User=%FF", ()),
    (AS + "&User=a%2525b", ()),                            # an encoding left over
    # DAV paths a server might read as another user's
    ("/dav/..%2Fuser04@demo.test/", ()),
    ("/dav/user02@demo.test/../user04@demo.test/", ()),
    ("/dav/user02@demo.test/%2e%2e/user04@demo.test/", ()),
    ("/dav/./user04@demo.test/", ()),
    ("/dav/user02@demo.test%2Fx/", ()),
    ("/dav/user02@demo.test%5Cx/", ()),
    ("/dav/user04%252F..%252Fuser02/", ()),
    ("/dav//", ()),
    ("/dav/", ()),
    ("/principals/users/user02;x=1/", ()),
    ("/home/~/inbox", ()),                                 # the cookie's user: none here
    ("/home/user02/../../dav/user04/", ()),
    # a token argument that is no token
    ("/x?zauthtoken=garbage", ()),
    ("/x?zauthtoken=0_ab_zz", ()),
    (f"/x?zauthtoken={TOKEN_VALUE}&zauthtoken={TOKEN_VALUE}", ()),
    ("/x", ("Cookie: ZM_AUTH_TOKEN=0_0_" + "41" * 40,)),
])
def test_bad_input_names_nobody_and_never_raises(target, headers):
    h = hint(target, *headers)
    assert h.by == BALANCED and not h.user and not h.zimbra_id


def test_a_bad_cookie_falls_back_to_the_token_argument():
    h = hint(f"/x?zauthtoken={TOKEN_VALUE}", "Cookie: ZM_AUTH_TOKEN=garbage")
    assert (h.by, h.zimbra_id) == (TOKEN, ZID)


def test_malformed_basic_on_activesync_falls_back_to_user_argument():
    # Carbonio: the Basic user, else User=; the server then refuses the credentials.
    h = hint(AS + "&User=user04", f"Authorization: Basic {b64('nocolon')}")
    assert (h.by, h.user, h.basic) == (ACTIVESYNC, "user04", None)


@pytest.mark.parametrize("name, expected", [
    ("user02@demo.test", "user02@demo.test"),
    ("DEMO\\user02", "user02@DEMO"),
    ("demo.test\\user02", "user02@demo.test"),
    ("a@b@c", ""), ("@demo.test", ""), ("user02@", ""), ("x" * 321, ""),
    ("user 02", ""), ("user\t02", ""), ("user%2F02", ""), ("us/er", ""), ("us?er", ""),
    ("us;er", ""), ("\u2028x", ""), ("DEMO\\us@er", ""), ("DE@MO\\user", ""),
])
def test_checked_user(name, expected):
    assert checked_user(name) == expected


def test_query_arg_is_bounded_and_exact():
    assert query_arg(b"/x?a=1&" + b"b=2&" * 200 + b"User=u", b"user") is None
    assert query_arg(b"/x?User=u#User=v", b"user") == b"u"
    assert query_arg(b"/x", b"user") is None
    assert query_arg(b"/x?Users=u", b"user") is None


# ------------------------------------------------------------ credentials

def test_basic_credentials_keep_the_password_out_of_sight():
    req = parsed(AS, f"Authorization: basic {b64('DEMO' + chr(92) + 'user02:s3cret:x')}")
    basic = basic_auth(req.headers)
    assert (basic.typed, basic.login, basic.secret) == ("DEMO\\user02", "user02@DEMO",
                                                        b"s3cret:x")   # RFC 7617: first ':'
    assert "s3cret" not in repr(basic) and "s3cret" not in repr(route_hint(req.target,
                                                                           req.headers))


def test_credentials_that_name_no_routable_user_are_still_a_login():
    # A server may trim or read what we do not route by: it is checked and counted
    # on the name as typed (never skipped), and routes nothing.
    for user_id, login, counted in ((" user02@demo.test ", "user02@demo.test",
                                     "user02@demo.test"),
                                    ("user 02", "", "user 02"),
                                    ("us/er", "", "us/er"),
                                    ("DEMO\\a\\b", "", "DEMO\\a\\b")):
        h = hint(AS, f"Authorization: Basic {b64(user_id + ':x')}")
        assert (h.basic.login, h.basic.counted) == (login, counted), user_id
        assert h.user == login and h.by == (ACTIVESYNC if login else BALANCED)
    h = hint(AS, f"Authorization: Basic {b64(bytes([0xe9, 0x74, 0xe9]) + b':x')}")
    assert h.basic.typed == "\u00e9t\u00e9"          # not UTF-8: ISO-8859-1


def test_every_basic_credential_is_a_login_wherever_it_goes():
    auth = f"Authorization: Basic {b64('user02:x')}"
    for target, proto in ((AS, "zsync"), ("/dav/user02/", "http_dav"),
                          ("/.well-known/caldav", "http_dav"), ("/home/user02/x", "http_basic"),
                          ("/mail", "http_basic")):
        h = hint(target, auth)
        assert h.basic is not None and h.basic.login == "user02", target
        assert basic_protocol(parsed(target).target) == proto


def test_credential_cache_is_keyed_bounded_and_forgets():
    cache = CredentialCache(b"k" * 32, ttl=10, size=3)
    other = CredentialCache(b"j" * 32)
    d = cache.digest("user02@demo.test", b"demo-pass")
    assert b"demo-pass" not in d and len(d) == 32
    assert d != other.digest("user02@demo.test", b"demo-pass")      # keyed per process
    assert d != cache.digest("user02@demo.test", b"demo-pasS")
    assert d != cache.digest("user02@demo.tes", b"tdemo-pass")      # no ambiguity
    assert not cache.fresh(d, 0)
    cache.remember(d, 0)
    assert cache.fresh(d, 9.9) and not cache.fresh(d, 10) and len(cache) == 0
    for i in range(5):
        cache.remember(cache.digest(f"u{i}", b"p"), 0)
    assert len(cache) == 3 and not cache.fresh(cache.digest("u0", b"p"), 1)
    assert cache.fresh(cache.digest("u4", b"p"), 1)
    cache.forget(cache.digest("u4", b"p"))
    assert not cache.fresh(cache.digest("u4", b"p"), 1)


# --------------------------------------------------------------- timeouts

TABLE = dict(config.PATH_TIMEOUTS)


@pytest.mark.parametrize("target, seconds", [
    (AS, 3600), ("/Microsoft-Server-ActiveSync?Cmd=Ping", 3600),
    ("/microsoft-server-activesync", 3600),
    ("https://mail.demo.test/Microsoft-Server-ActiveSync?Cmd=Ping", 3600),   # absolute-form
    ("/service/soap/NoOpRequest", 1220), ("/service/soap/WaitSetRequest", 1220),
    ("/service/soap/WaitSetRequest;x?y", 1220), ("/service//soap/./NoOpRequest", 1220),
    ("/service/soap/AuthRequest", 60), ("/service/soap", 60), ("/", 60), ("*", 60),
    ("/Microsoft-Server-ActiveSyn", 60),
])
def test_path_timeouts(target, seconds):
    assert path_timeout(target.encode(), TABLE, 60.0, 3600.0) == seconds


def test_path_timeouts_longest_prefix_and_polling():
    table = {"/a": 5, "/a/b": POLLING, "/a/b/c": 7}
    assert path_timeout(b"/a/x", table, 1, 99) == 5
    assert path_timeout(b"/a/b/x", table, 1, 99) == 99
    assert path_timeout(b"/a/b/c/d", table, 1, 99) == 7
    assert path_timeout(b"/b", {}, 1, 99) == 1


def test_path_timeouts_setting_is_checked():
    web = config.WebSettings.from_table({})
    assert web.path_timeouts["/Microsoft-Server-ActiveSync"] == POLLING
    web = config.WebSettings.from_table({"path_timeouts": {"/x": 5, "/y": "polling_timeout"}})
    assert web.path_timeouts == {"/x": 5.0, "/y": POLLING}
    for bad, problem in (({"x": 5}, "not a path prefix"), ({"/x": 0}, "expected seconds"),
                         ({"/x": "forever"}, "expected seconds"), ({"/x": True}, "expected"),
                         ({"/x?y": 5}, "not a path prefix")):
        with pytest.raises(config.ConfigError, match=problem):
            config.WebSettings.from_table({"path_timeouts": bad})
    with pytest.raises(config.ConfigError, match="expected a table"):
        config.WebSettings.from_table({"path_timeouts": 5})
