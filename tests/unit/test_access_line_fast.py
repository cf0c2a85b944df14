"""access.log's per-request shortcuts against the rule written out.

logformat.access_line takes a plain target (``/`` then printable ASCII without ``"``, ``\\``,
``?``, ``;``, ``#``, within URI_MAX) as it is and reads the method, version, Host and
User-Agent texts from bounded caches; logs.NodeLogs.web_request picks the logged headers
by a remembered kind per header name. Each must write exactly the line the field-by-field
escaping writes (every field ``escape()``d by itself after clean_target / clean_url /
host_name), for hostile values (controls, quotes, backslashes, non-ASCII, long values), the
second time (from the caches) as the first, called positionally as by keyword; the caches
stay bounded.
"""
from __future__ import annotations

import base64
import itertools
import re
from types import SimpleNamespace

import pytest

from carbotui.core import logformat as lf
from carbotui.protocols import http11
from carbotui.proxy import logs as logs_module
from carbotui.proxy.logs import NodeLogs
from carbotui.proxy.stats import Stats

FIXED = dict(timestamp=1764592803.5, client_ip="192.0.2.7", client_port=50412,
             scheme="https", status=200, bytes_sent=1432, upstream="127.0.0.2:8080",
             server_ip="127.0.0.1", server_port=10443)
ORDER = ("timestamp", "client_ip", "client_port", "remote_user", "method", "scheme", "host",
         "target", "version", "status", "bytes_sent", "referer", "user_agent", "upstream",
         "server_ip", "server_port")


def reference(timestamp, client_ip, client_port, remote_user, method, scheme, host, target,
              version, status, bytes_sent, referer, user_agent, upstream, server_ip,
              server_port) -> str:
    """The access.log line with every field escaped by itself (no shortcut)."""
    if method is None:
        request = "-"
    else:
        authority, uri = lf.clean_target(target)
        request = (f"{lf.escape(method, lf.METHOD_MAX)} {scheme}://"
                   f"{lf.escape(lf.host_name(authority or host), lf.HOST_MAX)}"
                   f"{lf.escape(uri, lf.URI_MAX)} HTTP/{lf.escape(version, 8)}")
    client = f"[{client_ip}]" if ":" in client_ip else (client_ip or "-")
    server = f"[{server_ip}]" if ":" in server_ip else (server_ip or "-")
    return (f"{client}:{client_port} - {lf.escape(remote_user, lf.USER_MAX, space=True)} "
            f"[{lf.time_local(timestamp)}] \"{request}\" {status} {bytes_sent} "
            f"\"{lf.escape(lf.clean_url(referer), lf.REFERER_MAX)}\" "
            f"\"{lf.escape(user_agent, lf.USER_AGENT_MAX)}\" \"{upstream or '-'}\" "
            f"\"{server}:{server_port}\"\n")


HOSTILE = [b"", b"plain", b'a"quote', b"back\\slash", b"\x80\xff", "über".encode(),
           b"ctl\x00\r\nINJECTED", b"\x7f\x1b[31m", b"sp ace", b"%0d%0a", b"x" * 7,
           b"x" * 8, b"x" * 9, b"x" * 20, b"x" * 21, b"y" * 259, b"y" * 260, b"y" * 261,
           b"z" * 600, b"z" * 601, b"w" * 3000]
TARGETS = [b"/", b"/health", b"/mail?view=1", b"/mail?zauthtoken=SECRET&view=1",
           b"/x;jsessionid=SECRET/y", b"/a#frag", b'/q"uote', b"/back\\slash", b"/\x80\xff",
           "/über".encode(), b"/ctl\x00\r\n", b"/sp ace", b"/%41%0d", b"*", b"", b"x/rel",
           b"https://u:p@Other.Test:8443/x?token=S", b"HTTP://h/", b"/" + b"a" * 1599,
           b"/" + b"a" * 1600, b"/" + b"a" * 5000, b"/?" + b"a" * 1700,
           b"//double", b"/%3F?x=1", b"/path/with:colon@at"]


def line(**over) -> tuple[str, str, str]:
    fields = dict(FIXED, remote_user=b"", method=b"GET", host=b"mail.demo.test",
                  target=b"/mail", version=b"1.1", referer=b"", user_agent=b"curl/8")
    fields.update(over)
    positional = lf.access_line(*(fields[name] for name in ORDER))
    return positional, lf.access_line(**fields), reference(**fields)


def check(**over) -> str:
    first, keyword, expected = line(**over)
    again, _, _ = line(**over)                       # the second time: from the caches
    assert first == keyword == again == expected
    assert first.count("\n") == 1 and first.endswith("\n")
    assert len(first.encode()) < lf.PIPE_BUF
    assert re.fullmatch(r'[\x20-\x7e]*\n', first), first        # nothing unescaped
    return first


@pytest.mark.parametrize("target", TARGETS, ids=range(len(TARGETS)))
def test_targets_as_the_rule_writes_them(target):
    text = check(target=target)
    assert "SECRET" not in text and "u:p" not in text


@pytest.mark.parametrize("field", ["method", "host", "version", "referer", "user_agent",
                                   "remote_user"])
@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_each_field_as_the_rule_writes_it(field, value):
    check(**{field: value})
    check(**{field: value, "target": b"/q?a=1"})      # through clean_target too


def test_combinations_and_the_unparsed_request():
    some = [b"", b"ok", b'"', b"\x00", b"\xff", b"v" * 700]
    for method, host, agent in itertools.product([b"GET", b"", b"G\x00T", b"M" * 30],
                                                 some, some):
        check(method=method, host=host, user_agent=agent)
    for referer, agent in itertools.product(HOSTILE, repeat=2):
        check(method=None, target=b"", version=b"", host=b"", referer=referer,
              user_agent=agent)
    check(host=b"Mail.Demo.TEST:8443")                 # lower case, no port
    check(host=b"[2001:DB8::1]:443")
    check(host=b"[broken")
    check(client_ip="2001:db8::1", server_ip="::1", upstream="")
    check(client_ip="", server_ip="")


def test_the_caches_are_bounded_and_never_keep_long_keys():
    for i in range(lf._TEXTS_MAX + 50):
        check(host=b"h%d.demo.test" % i, user_agent=b"agent/%d" % i, method=b"M%d" % i,
              version=b"%d" % (i % 1000))
    for cache in (lf._HOSTS, lf._AGENTS, lf._METHODS, lf._VERSIONS):
        assert 0 < len(cache) <= lf._TEXTS_MAX
    check(host=b"h" * 300, user_agent=b"a" * 700, method=b"m" * 21, version=b"v" * 9)
    assert b"h" * 300 not in lf._HOSTS and b"a" * 700 not in lf._AGENTS
    assert b"m" * 21 not in lf._METHODS and b"v" * 9 not in lf._VERSIONS


# --- logs.NodeLogs.web_request: the logged headers ------------------------------------------

STAMP = re.compile(r"\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]")


def old_fields(req: http11.Request) -> dict:
    """web_request's fields as the code before the per-name kinds picked them."""
    found: dict[bytes, bytes] = {}
    for key, value in req.headers:
        key = key.lower()
        if key in logs_module._LOGGED and key not in found:
            found[key] = value
    return dict(method=req.method, target=req.target, version=req.version,
                host=found.get(b"host", b""), referer=found.get(b"referer", b""),
                user_agent=found.get(b"user-agent", b""),
                remote_user=lf.basic_user(found.get(b"authorization")))


HEADER_SETS = [
    [],
    [(b"Host", b"mail.demo.test"), (b"User-Agent", b"bench")],
    [(b"HOST", b"first"), (b"host", b"second"), (b"hOsT", b"third")],
    [(b"Host", b""), (b"Host", b"later")],
    [(b"Referer", b"https://r/?zauthtoken=S"), (b"REFERER", b"x"), (b"user-AGENT", b"a\x00b")],
    [(b"Authorization", b"Basic " + base64.b64encode(b"bob:hunter2")),
     (b"authorization", b"Basic " + base64.b64encode(b"eve:x"))],
    [(b"Authorization", b"Bearer tok"), (b"X-Host", b"no"), (b"Hostx", b"no"),
     (b"User-Agent2", b"no"), (b"Referrer", b"no")],
    [(b"Authorization", b"Basic !!notbase64"), (b"Host", b"h:1")],
    [(b"X" * 70, b"long name"), (b"Host", b"\xff\xfe"), (b"User-Agent", b"u" * 900)],
]


@pytest.mark.parametrize("headers", HEADER_SETS, ids=range(len(HEADER_SETS)))
def test_web_request_picks_the_headers_as_before(tmp_path, headers):
    settings = SimpleNamespace(access_log=tmp_path / "access.log",
                               sessions_log=tmp_path / "sessions.log")
    services = SimpleNamespace(settings=settings, stats=Stats(), audit=None, name="proxy_02")
    logs = NodeLogs(services)
    session = SimpleNamespace(kind="https", scheme="https", client_ip="192.0.2.7",
                              client_port=50412, local_ip="127.0.0.1", local_port=10443)
    upstream = SimpleNamespace(name="mbox2", address="127.0.0.2", port=8080)
    req = http11.Request(b"GET", b"/mail?view=1", b"1.1", headers, http11.BodyMode("none"))
    for _ in range(2):                                  # the second time: names remembered
        logs.web_request(session, req, 200, 1432, upstream)
    logs.web_request(session, None, 400, 260, None)
    logs.close()
    expected = old_fields(req)
    want = lf.access_line(**dict(FIXED, **dict(expected, host=expected["host"]
                                               or b"127.0.0.1")))
    bare = lf.access_line(**dict(FIXED, method=None, target=b"", version=b"", host=b"",
                                 referer=b"", user_agent=b"", remote_user=b"",
                                 status=400, bytes_sent=260, upstream=""))
    got = (tmp_path / "access.log").read_text().splitlines(keepends=True)
    assert [STAMP.sub("[]", text) for text in got] == \
        [STAMP.sub("[]", text) for text in (want, want, bare)]
    assert "hunter2" not in "".join(got) and "zauthtoken=S" not in "".join(got)
    assert services.stats.web_responses == {("https", "mbox2", "2xx"): 2,
                                            ("https", "-", "4xx"): 1}


def test_header_kinds_are_bounded():
    for i in range(logs_module._NAMES_MAX + 10):
        assert logs_module._name_kind(b"X-N%d" % i) == logs_module._OTHER
    assert len(logs_module._NAMES) <= logs_module._NAMES_MAX
    assert logs_module._name_kind(b"uSeR-aGeNt") == logs_module._AGENT
    assert logs_module._name_kind(b"n" * 65) == logs_module._OTHER
    assert b"n" * 65 not in logs_module._NAMES
