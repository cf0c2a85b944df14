"""ACME HTTP-01 (carbotui/protocols/acme.py, carbotui/proxy/acme.py): token names only,
no traversal, no symlink, small regular files; fed hostile names."""
from __future__ import annotations

import asyncio
import os

import pytest

from carbotui.protocols import acme
from carbotui.proxy import acme as files

P = acme.PREFIX
TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"        # RFC 8555 §8.3's example


@pytest.mark.parametrize("target, token", [
    (P + TOKEN.encode(), TOKEN),
    (P + TOKEN.encode() + b"?x=1", TOKEN),             # the query is not part of the name
    (P + b"a", "a"),
    (P + b"A-_z09", "A-_z09"),
    (P + b"x" * 128, "x" * 128),
    (P, ""),                                           # the directory itself: 404
    (P + b"?x", ""),
])
def test_tokens(target, token):
    assert acme.is_challenge(target)
    assert acme.challenge_token(target) == token


@pytest.mark.parametrize("rest", [
    b"..", b".", b"../x", b"..%2fx", b"%2e%2e", b"%2E%2E%2Fetc%2Fpasswd", b"a/b", b"a/",
    b"a%00", b"a\x00", b"a b", b"a+b", b"a=", b"a.b", b"a\\b", b"x" * 129, b"\xc3\xa9",
    b"a;b", b"%41", b"a#b", b"~root", b"a\r\nX: y",
])
def test_hostile_names_are_not_tokens(rest):
    assert acme.challenge_token(P + rest) is None


@pytest.mark.parametrize("target", [
    b"/.well-known/acme-challenge", b"/.well-known/ACME-challenge/x", b"//.well-known/acme-challenge/x",
    b"/x/.well-known/acme-challenge/x", b"http://h/.well-known/acme-challenge/x", b"*",
])
def test_other_paths_are_not_challenges(target):
    assert not acme.is_challenge(target)


# --- files ---------------------------------------------------------------------------------

@pytest.fixture
def webroot(tmp_path):
    d = tmp_path / "webroot" / ".well-known" / "acme-challenge"
    d.mkdir(parents=True)
    (d / TOKEN).write_text(TOKEN + ".thumbprint")
    return tmp_path / "webroot"


def respond(webroot, method, target) -> bytes:
    return asyncio.run(files.respond(webroot, method, target))


def test_a_token_file_is_served(webroot):
    out = respond(webroot, b"GET", P + TOKEN.encode())
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.endswith(b"\r\n\r\n" + TOKEN.encode() + b".thumbprint")
    assert b"Content-Length: %d\r\n" % len(TOKEN + ".thumbprint") in out


def test_head_gets_the_head_only(webroot):
    out = respond(webroot, b"HEAD", P + TOKEN.encode())
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\n")
    assert b"Content-Length: %d\r\n" % len(TOKEN + ".thumbprint") in out


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS"])
def test_other_methods_405(webroot, method):
    out = respond(webroot, method, P + TOKEN.encode())
    assert out.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD\r\n" in out


def test_unknown_and_bad_tokens(webroot):
    assert respond(webroot, b"GET", P + b"unknown").startswith(b"HTTP/1.1 404 ")
    assert respond(webroot, b"GET", P).startswith(b"HTTP/1.1 404 ")
    assert respond(webroot, b"GET", P + b"../../secret").startswith(b"HTTP/1.1 400 ")
    assert respond(webroot, b"GET", P + b"%2e%2e%2fsecret").startswith(b"HTTP/1.1 400 ")


def test_no_symlink_is_followed_anywhere_below_the_webroot(tmp_path, webroot):
    secret = tmp_path / "secret"
    secret.write_text("private")
    challenges = webroot / ".well-known" / "acme-challenge"
    (challenges / "link").symlink_to(secret)
    assert files.read_challenge(webroot, "link") is None
    # a symlinked directory on the way
    other = tmp_path / "other" / "acme-challenge"
    other.mkdir(parents=True)
    (other / "tok").write_text("from elsewhere")
    os.rename(webroot / ".well-known", tmp_path / "moved")
    (webroot / ".well-known").symlink_to(tmp_path / "other")
    assert files.read_challenge(webroot, "tok") is None


def test_only_small_regular_files(webroot):
    challenges = webroot / ".well-known" / "acme-challenge"
    (challenges / "big").write_bytes(b"x" * (files.MAX_FILE + 1))
    (challenges / "dir").mkdir()
    os.mkfifo(challenges / "fifo")                       # must not block the open
    (challenges / "limit").write_bytes(b"y" * files.MAX_FILE)
    assert files.read_challenge(webroot, "big") is None
    assert files.read_challenge(webroot, "dir") is None
    assert files.read_challenge(webroot, "fifo") is None
    assert files.read_challenge(webroot, "limit") == b"y" * files.MAX_FILE


def test_a_missing_webroot_is_a_404_not_a_crash(tmp_path):
    assert files.read_challenge(tmp_path / "nope", TOKEN) is None
    assert respond(tmp_path / "nope", b"GET", P + TOKEN.encode()).startswith(b"HTTP/1.1 404 ")


# --- any bytes at all ------------------------------------------------------------------------

from hypothesis import given, settings, strategies as st     # noqa: E402


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_whatever_follows_the_prefix_a_token_is_only_ever_base64url(rest):
    token = acme.challenge_token(P + rest)
    if token:
        assert 1 <= len(token) <= acme.MAX_TOKEN
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                 "0123456789-_")
        assert rest.partition(b"?")[0] == token.encode()
