"""Response headers from LDAP (carbotui/protocols/webheaders.py): parsing, defaults,
the per-domain override, and the merge that never overrides the server's own header."""
from __future__ import annotations

import pytest

from carbotui.protocols import webheaders as wh
from carbotui.protocols.webheaders import BadHeader


def names(header_set) -> list[bytes]:
    return [name for name, _, _ in header_set]


# --- one value -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("X-Frame-Options: DENY", ("X-Frame-Options", "DENY")),
    ("Referrer-Policy: \"same-origin\"", ("Referrer-Policy", "same-origin")),   # Carbonio's form
    ("  Expect-CT :\tmax-age=86400  ", ("Expect-CT", "max-age=86400")),
    ("X-A: a:b: c", ("X-A", "a:b: c")),                  # only the first colon splits
    ("Permissions-Policy: geolocation=(self), microphone=(self)",
     ("Permissions-Policy", "geolocation=(self), microphone=(self)")),
])
def test_parse_header_accepts(text, expected):
    assert wh.parse_header(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("X-Evil: a\r\nSet-Cookie: x=1", "CR"),
    ("X-Evil: a\nSet-Cookie: x=1", "LF"),
    ("X-Evil: a\x00b", "NUL"),
    ("X-Evil: a\x01b", "visible ASCII"),
    ("X-Evil: a\x7fb", "visible ASCII"),
    ("X-Evil: caf\u00e9", "visible ASCII"),
    ("X-Evil:", "empty"),
    ("X-Evil: \"\"", "empty"),
    ("no colon here", "expected 'Name: value'"),
    (": value", "token"),
    ("Bad Name: v", "token"),
    ("Bad(Name): v", "token"),
    ("X-" + "n" * 64 + ": v", "token"),
    ("X-Long: " + "v" * (wh.MAX_VALUE + 1), "longer than"),
    ("X-Huge: " + "v" * 100_000, "longer than"),
    ("Content-Length: 0", "frames or routes"),
    ("transfer-encoding: chunked", "frames or routes"),
    ("Connection: close", "frames or routes"),
    ("Location: https://evil.test/", "frames or routes"),
    ("Content-Type: text/html", "frames or routes"),
])
def test_parse_header_refuses(text, reason):
    with pytest.raises(BadHeader, match=reason) as exc:
        wh.parse_header(text)
    assert "\r" not in str(exc.value) and "\n" not in str(exc.value)   # safe for a log line
    assert len(str(exc.value)) < 200


def test_check_list_refuses_duplicates_too_many_and_a_csp_of_another_name():
    assert wh.check_list(["A: 1", "B: 2"]) == [("A", "1"), ("B", "2")]
    with pytest.raises(BadHeader, match="given twice"):
        wh.check_list(["X-A: 1", "x-a: 2"])
    with pytest.raises(BadHeader, match="at most 32"):
        wh.check_list([f"X-{i}: v" for i in range(33)])
    with pytest.raises(BadHeader, match="Content-Security-Policy header, not X-A"):
        wh.check_list(["X-A: 1"], csp=True)
    assert wh.check_list(["Content-Security-Policy: default-src 'self'"], csp=True)


# --- sets ------------------------------------------------------------------------------------

def test_unset_means_carbonios_default_set_and_a_csp():
    default = wh.header_set((), "")
    assert names(default) == [b"Strict-Transport-Security", b"Permissions-Policy",
                              b"Referrer-Policy", b"X-Content-Type-Options", b"X-Robots-Tag",
                              b"X-XSS-Protection", b"X-Frame-Options", b"Expect-CT",
                              b"Content-Security-Policy"]
    assert default[0][1] == b"max-age=31536000; includeSubDomains; preload"
    assert all(low == name.lower() for name, _, low in default)
    assert wh.ResponseHeaders().for_host(b"anything") == default


def test_a_bad_value_is_skipped_and_said_the_others_are_sent():
    problems = []
    got = wh.header_set(["X-Good: 1", "X-Bad: a\r\nInjected: 1", "Strict-Transport-Security:"
                         " max-age=60", "x-good: 2"], "Content-Security-Policy: default-src 'none'",
                        problems)
    assert got == ((b"X-Good", b"1", b"x-good"),
                   (b"Strict-Transport-Security", b"max-age=60", b"strict-transport-security"),
                   (b"Content-Security-Policy", b"default-src 'none'", b"content-security-policy"))
    assert len(problems) == 1 and "CR" in problems[0] and "\r" not in problems[0]


def test_a_csp_attribute_that_is_not_a_csp_is_skipped():
    problems = []
    got = wh.header_set(["X-A: 1"], "X-Frame-Options: DENY", problems)
    assert names(got) == [b"X-A"] and "must be a Content-Security-Policy" in problems[0]


def test_more_than_the_limit_is_cut_and_said():
    problems = []
    got = wh.header_set([f"X-{i}: v" for i in range(40)], "", problems)
    assert len(got) == wh.MAX_HEADERS + 1 and "8 headers over 32 skipped" in problems[0]


def test_per_domain_override_by_virtual_hostname():
    policy = wh.build(["X-Global: g"], "", {
        "corp.test": (("X-Corp: c",), ""),
        "csp.test": ((), "Content-Security-Policy: default-src 'none'"),
    }, {"mail.corp.test": "corp.test", "www.csp.test": "csp.test",
        "mail.demo.test": "demo.test"})
    assert names(policy.for_host(b"mail.demo.test:10443")) == [b"X-Global",
                                                               b"Content-Security-Policy"]
    corp = policy.for_host(b"MAIL.corp.test:443")
    assert names(corp) == [b"X-Corp", b"Content-Security-Policy"]
    assert corp[1][1] == wh.DEFAULT_CSP.split(": ", 1)[1].encode()
    csp = policy.for_host(b"www.csp.test")                 # its own CSP, the global list
    assert names(csp) == [b"X-Global", b"Content-Security-Policy"]
    assert csp[1][1] == b"default-src 'none'"
    for host in (None, b"", b"127.0.0.1:10443", b"[::1]:10443", b"corp.test"):
        assert policy.for_host(host) == policy.default


def test_host_name():
    assert wh.host_name(b"Mail.Demo.Test:10443") == b"mail.demo.test"
    assert wh.host_name(b"mail.demo.test") == b"mail.demo.test"
    assert wh.host_name(b"[::1]") == b"[::1]"
    assert wh.host_name(b"[::1]:443") == b"[::1]"


# --- the merge -------------------------------------------------------------------------------

def test_add_missing_never_overrides_the_servers_header():
    extra = wh.header_set(["X-Frame-Options: sameorigin", "X-Robots-Tag: noindex"], "")
    head = [(b"Content-Type", b"text/html"), (b"x-frame-options", b"DENY")]
    out = wh.add_missing(head, extra)
    assert out is head
    assert [v for k, v in out if k.lower() == b"x-frame-options"] == [b"DENY"]
    assert (b"X-Robots-Tag", b"noindex") in out
    assert sum(1 for k, _ in out if k.lower() == b"content-security-policy") == 1


def test_add_missing_with_nothing_to_add_leaves_the_head_alone():
    head = [(b"A", b"1")]
    assert wh.add_missing(head, ()) == [(b"A", b"1")]


# --- any text at all -------------------------------------------------------------------------

from hypothesis import given, settings, strategies as st     # noqa: E402

from carbotui.protocols import http11                         # noqa: E402


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_a_header_is_refused_or_one_clean_line(text):
    try:
        name, value = wh.parse_header(text)
    except BadHeader as exc:
        assert "\r" not in str(exc) and "\n" not in str(exc)
        return
    line = f"{name}: {value}"
    assert line.isascii() and line.isprintable() or "\t" in value
    assert not any(c in line for c in "\r\n\x00")
    sent = wh.header_set([text], "")                      # it, and the default CSP
    assert (name.encode(), value.encode()) == sent[0][:2] and len(sent) in (1, 2)
    head = http11.serialize_response_head(200, None, wh.add_missing([], sent))
    assert head.count(b"\r\n") == 2 + len(sent)              # status, the headers, the end
