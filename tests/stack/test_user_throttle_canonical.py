"""M1 against the running demo: the user throttle counts the account, not the spelling.

The review's reproduction: 20 wrong POP3S passwords for user01@demo.test lock it (the
21st answer is "Login rejected for this user"), then the same account spelled another
way - a trailing space, upper case, its alias nick01, the bare name - logs in with the
right password: every spelling was a fresh counter. The demo counts 20 failures a
minute per user (carbotui.toml [throttle]); 127.0.0.31 is outside its whitelist (and
reserved for this module), so the throttle applies as to anyone.
"""
from __future__ import annotations

import poplib
import socket
import threading

import pytest

from carbotui.services.throttle import ip_key, user_key
from tests.stack.conftest import HOST, PASSWORD, PORTS, tls_context, wait_for

pytestmark = pytest.mark.usefixtures("proxy_up", "memcached_in_use")

SOURCE = "127.0.0.31"
ACCOUNT = "user01@demo.test"
SPELLINGS = ["user01@demo.test ", "USER01@demo.test", " User01@Demo.Test", "nick01@demo.test",
             "user01"]
LOCKED = b"-ERR Login rejected for this user"


class Pop3s(poplib.POP3_SSL):
    """POP3S from SOURCE (poplib has no source_address of its own)."""

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(SOURCE, 0))
        return self.context.wrap_socket(sock, server_hostname=self.host)


def connect() -> Pop3s:
    return Pop3s(HOST, PORTS["pop3s"], context=tls_context(), timeout=20)


def attempt(user: str, password: str) -> bytes:
    """One USER/PASS on a fresh connection; the server's answer to PASS."""
    c = connect()
    try:
        c._putcmd(f"USER {user}")
        assert c._getresp().startswith(b"+OK")
        c._putcmd(f"PASS {password}")
        return c._getline()[0]
    finally:
        c.sock.close()


def wrong_passwords(n: int, replies: list) -> None:
    c = connect()
    try:
        for _ in range(n):
            c._putcmd(f"USER {ACCOUNT}")
            c._getresp()
            c._putcmd("PASS wrong")
            replies.append(c._getline()[0])
    finally:
        c.sock.close()


@pytest.fixture
def clean_keys(memcached):
    def clean():
        for name in [ACCOUNT, *SPELLINGS, "nick01"]:
            memcached.delete(user_key(name))
        memcached.delete(ip_key("pop3", SOURCE))
    clean()
    yield
    clean()


def test_every_spelling_of_a_locked_account_is_locked(memcached, clean_keys):
    # 20 wrong passwords: 7 connections in parallel (3 tries each is the demo's
    # max_auth_failures; the 1 s tarpit makes serial tries slow)
    replies: list[bytes] = []
    threads = [threading.Thread(target=wrong_passwords, args=(n, replies))
               for n in (3, 3, 3, 3, 3, 3, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(replies) == 20 and all(r.startswith(b"-ERR [AUTH]") for r in replies), replies
    wait_for(lambda: memcached.get(user_key(ACCOUNT)) == b"20", 5,
             what="20 failures counted for the account")
    assert attempt(ACCOUNT, PASSWORD) == LOCKED           # the lockout itself
    answers = {name: attempt(name, PASSWORD) for name in SPELLINGS}
    assert answers == {name: LOCKED for name in SPELLINGS}
    # none of them started a counter of its own: one key per account
    assert memcached.get(user_key(ACCOUNT)) == b"20"
