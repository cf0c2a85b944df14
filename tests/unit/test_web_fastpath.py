"""The web tier's one-pass helpers judge exactly as the step-by-step rules they replace.

`http11.forwardable`, `webrules.forward_request_headers`, `webheaders.missing_lines`
with the caller's lower-cased names, `http11._head_lines`' usual-case loop, and the
plain-path shortcut of `webrules.canonical_paths` / `path_timeout` (with the table
pre-encoded by `settings.PathTimeouts`) are each compared here with the composition
of the older functions (or a copy of the older code) on random and hostile input.
"""
from __future__ import annotations

import random
import re

import pytest

from carbotui.core import settings as config
from carbotui.protocols import http11, webheaders, webrules
from carbotui.protocols.webrules import POLLING

NAMES = [b"Host", b"host", b"HOST", b"Connection", b"connection", b"Keep-Alive", b"TE",
         b"Transfer-Encoding", b"Upgrade", b"X-Forwarded-For", b"x-forwarded-for",
         b"X-Forwarded-Host", b"x-forwarded-proto", b"Forwarded", b"X-Real-IP", b"Client-IP",
         b"True-Client-IP", b"Content-Length", b"Expect", b"Cookie", b"Server", b"SERVER",
         b"X-Powered-By", b"Location", b"location", b"Accept", b"X-Custom", b"Proxy-Connection",
         b"Trailer"]
VALUES = [b"", b"close", b"keep-alive", b"x-custom, close", b"X-Custom", b"cookie",
          b"x-forwarded-for", b"host, content-length", b"Upgrade, x-real-ip", b"1.2.3.4",
          b"a, ,b", b"\tAccept \t", b"server", b"location", b"100-continue"]


def random_headers(rng: random.Random) -> list[tuple[bytes, bytes]]:
    return [(rng.choice(NAMES), rng.choice(VALUES)) for _ in range(rng.randint(0, 9))]


def test_forwardable_is_remove_hop_by_hop_then_remove_headers():
    rng = random.Random(16)
    for _ in range(5000):
        headers = random_headers(rng)
        drop = frozenset(rng.sample([b"server", b"x-powered-by", b"cookie", b"expect"],
                                    rng.randint(0, 2)))
        kept, lows = http11.forwardable(headers, drop)
        assert kept == http11.remove_headers(http11.remove_hop_by_hop(headers), *drop)
        assert lows == [name.lower() for name, _ in kept]
        assert kept is not headers               # the caller may append to it


@pytest.mark.parametrize("extend", [False, True])
def test_forward_request_headers_is_the_three_steps(extend):
    rng = random.Random(1 + extend)
    for _ in range(5000):
        headers = random_headers(rng)
        drop = frozenset(rng.sample([b"expect", b"content-length"], rng.randint(0, 2)))
        got, has_host = webrules.forward_request_headers(
            headers, client_ip="203.0.113.5", scheme="https", extend_forwarded_for=extend,
            drop=drop)
        step = http11.remove_hop_by_hop(headers)
        if drop:
            step = http11.remove_headers(step, *drop)
        want = webrules.upstream_headers(step, client_ip="203.0.113.5", scheme="https",
                                         extend_forwarded_for=extend)
        assert got == want
        assert has_host == (http11.get_header(want, b"host") is not None)


def test_forward_request_headers_hostile_cases():
    # A client naming X-Forwarded-For or Host in Connection: the first is dropped as
    # hop-by-hop (never in the chain), the second is never hop-by-hop.
    got, host = webrules.forward_request_headers(
        [(b"Host", b"a"), (b"Connection", b"x-forwarded-for, host"),
         (b"X-Forwarded-For", b"6.6.6.6"), (b"X_Real_IP", b"1"), (b"x-forwarded-port", b"1")],
        client_ip="10.0.0.1", scheme="http", extend_forwarded_for=True)
    assert host is True
    assert got == [(b"Host", b"a"), (b"X_Real_IP", b"1"), (b"X-Forwarded-For", b"10.0.0.1"),
                   (b"X-Forwarded-Proto", b"http"), (b"X-Real-IP", b"10.0.0.1")]
    got, host = webrules.forward_request_headers(
        [(b"X-Forwarded-For", b"198.51.100.1")], client_ip="10.0.0.1", scheme="https",
        extend_forwarded_for=True)
    assert host is False and got[0] == (b"X-Forwarded-For", b"198.51.100.1, 10.0.0.1")


def test_missing_lines_with_the_callers_names():
    sets = [webheaders.header_set(["X-Frame-Options: sameorigin", "Referrer-Policy: same-origin"],
                                  "default-src 'self'"), (), webheaders.header_set((), "")]
    rng = random.Random(3)
    names = NAMES + [b"x-frame-options", b"Content-Security-Policy", b"REFERRER-POLICY"]
    for _ in range(2000):
        headers = [(rng.choice(names), b"v") for _ in range(rng.randint(0, 6))]
        for extra in sets:
            lows = [name.lower() for name, _ in headers]
            assert webheaders.missing_lines(headers, extra, lows) == \
                webheaders.missing_lines(headers, extra)


# ------------------------------------------------------------- serialisation

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SAFE_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")


def reference_lines(headers) -> bytes:
    """The header lines as the serialiser wrote them before its usual-case loop:
    every name a token, every value free of controls (else ValueError)."""
    out = []
    for name, value in headers:
        name = name.encode("latin-1") if isinstance(name, str) else name
        value = value.encode("latin-1") if isinstance(value, str) else value
        if not _TOKEN.fullmatch(name) or not _SAFE_VALUE.fullmatch(value):
            raise ValueError("refused")
        out.append(bytes(name) + b": " + bytes(value) + b"\r\n")
    return b"".join(out)


def test_serialised_heads_as_before_for_every_kind_of_header():
    rng = random.Random(7)
    names = [b"Host", "Host", b"X-A", bytearray(b"X-B"), b"Bad Name", b"Bad:Name", b"",
             "Str-Name", b"X-\xff", b"Content-Length"]
    values = [b"ok", "str value", bytearray(b"ba"), b"a\r\nInjected: 1", b"\x00", b"\t x \t",
              "caf\xe9", b"\xff\xfe", b"", "line\nbreak"]
    for _ in range(4000):
        headers = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randint(0, 5))]
        try:
            want = reference_lines(headers)
        except ValueError:
            with pytest.raises(ValueError):
                http11.serialize_response_head(200, b"OK", headers)
            with pytest.raises(ValueError):
                http11.serialize_request_head(b"GET", b"/", headers)
            continue
        assert http11.serialize_response_head(200, b"OK", headers) == \
            b"HTTP/1.1 200 OK\r\n" + want + b"\r\n"
        assert http11.serialize_request_head(b"GET", b"/x", headers) == \
            b"GET /x HTTP/1.1\r\n" + want + b"\r\n"
    assert not any(isinstance(n, str) or n.__class__ is not bytes for n in http11._GOOD_NAMES)


# ------------------------------------------------------------------ paths

def reference_canonical(path: bytes) -> set[bytes]:
    """canonical_paths as it was, without the plain-path shortcut."""
    from urllib.parse import unquote_to_bytes
    for _ in range(4):
        if b"%" not in path:
            break
        path = unquote_to_bytes(path)
    path = path.replace(b"\\", b"/").lower()
    plain, resolved = [], []
    for segment in path.split(b"/"):
        segment = segment.split(b";", 1)[0]
        if not segment or segment == b".":
            continue
        plain.append(segment)
        if segment == b"..":
            if resolved:
                resolved.pop()
        else:
            resolved.append(segment)
    return {b"/" + b"/".join(plain), b"/" + b"/".join(resolved)}


def reference_path_timeout(target, table, read_timeout, polling_timeout) -> float:
    path = webrules.target_path(target)
    if not path or not table:
        return read_timeout
    forms = reference_canonical(path)
    best, value = -1, read_timeout
    for prefix, seconds in table.items():
        low = prefix.lower().encode("utf-8")
        if len(low) > best and any(p.startswith(low) for p in forms):
            best = len(low)
            value = polling_timeout if seconds == POLLING else float(seconds)
    return value


PIECES = [b"/", b"a", b"B", b".", b"..", b"%2e", b"%2F", b"%", b"%25", b";x", b"\\", b"//",
          b"Microsoft-Server-ActiveSync", b"service", b"soap", b"NoOpRequest", b"?q=1", b"#f",
          b"/./", b"/../", b"A/"]


def random_target(rng: random.Random) -> bytes:
    body = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 7)))
    return rng.choice([b"/", b"", b"http://h", b"https://h:1/", b"*"]) + body


def test_canonical_paths_shortcut_is_exact():
    rng = random.Random(11)
    for _ in range(20000):
        path = webrules.target_path(random_target(rng)) or b"/"
        assert webrules.canonical_paths(path) == reference_canonical(path), path


def test_path_timeout_pre_encoded_table_as_before():
    tables = [config.PathTimeouts(config.PATH_TIMEOUTS),
              config.PathTimeouts({"/a": 5.0, "/A": 6.0, "/a/b": POLLING, "/a/b/c": 7.0,
                                   "/Microsoft-Server-ActiveSync/": 9.0, "/service": 2.0}),
              config.PathTimeouts({})]
    rng = random.Random(5)
    for _ in range(10000):
        target = random_target(rng)
        for table in tables:
            want = reference_path_timeout(target, table, 60.0, 3600.0)
            assert webrules.path_timeout(target, table, 60.0, 3600.0) == want, target
            assert webrules.path_timeout(target, dict(table), 60.0, 3600.0) == want


def test_settings_table_is_pre_encoded():
    web = config.WebSettings.from_table({"path_timeouts": {"/X": 5, "/x/Y": "polling_timeout"}})
    assert web.path_timeouts == {"/X": 5.0, "/x/Y": POLLING}
    assert web.path_timeouts.encoded == ((b"/x/y", POLLING), (b"/x", 5.0))
    assert config.WebSettings.from_table({}).path_timeouts.encoded[0] == \
        (b"/microsoft-server-activesync", POLLING)
