"""M1 (security review) in the mail glue: the user throttle and the audit line name the
canonical account, whatever spelling the client typed.

A real MailSession on a real loop; the router maps every spelling of user01 (an alias,
the bare name, odd case and spaces) to the account, as LDAP does; the throttle is a
counter in a dict keyed exactly as carbotui.services.throttle keys memcached.
"""
from __future__ import annotations

import asyncio

import pytest

from carbotui.services.throttle import USER_REJECT, user_key
from carbotui.proxy.mail import MailSession

from tests.unit.test_mail_session import stand_in_services

ACCOUNT = "user01@demo.test"
LIMIT = 3


class CountingThrottle:
    """Throttle's user-limit logic over a dict (failures mode), recording every call."""

    def __init__(self, limit: int):
        self.limit = limit
        self.counts: dict[bytes, int] = {}
        self.calls: list[tuple] = []

    def exempt(self, ip):
        return True

    def counts_users(self, ip):
        return True

    async def check_user(self, login, *, ip=None):
        self.calls.append(("check", login))
        return USER_REJECT if self.counts.get(user_key(login), 0) >= self.limit else None

    async def count_user(self, login, *, success, ip=None):
        self.calls.append(("count", login, success))
        if not success:
            self.counts[user_key(login)] = self.counts.get(user_key(login), 0) + 1


class AliasRouter:
    """Every spelling of user01 routes to the account, as LDAP's matching does (case
    and surrounding spaces ignored, the alias, the bare name qualified); anything else
    is unknown."""

    def __init__(self, route):
        self.route = route
        self.asked: list[str] = []

    def recent_mail_route(self, login, proto, local_ip):
        return None

    async def route_mail(self, login, proto, local_ip):
        self.asked.append(login)
        known = ("user01", "nick01", "nick01@demo.test", ACCOUNT)
        return self.route if login.strip().lower() in known else None

    async def forget(self, *args):
        pass


async def refusing_server(reader, writer):
    """A mailbox server that refuses every password."""
    writer.write(b"* OK [CAPABILITY IMAP4rev1 ID LITERAL+] ready\r\n")
    while line := await reader.readline():
        tag = line.split(b" ", 1)[0]
        refused = b" LOGIN " in line.upper()
        writer.write(tag + (b" NO [AUTHENTICATIONFAILED] nope" if refused else b" OK done")
                     + b"\r\n")
    writer.close()


async def logins(services, names: list[str]) -> list[bytes]:
    """Each name on a connection of its own; the reply lines to its LOGIN."""
    loop = services.loop
    server = await loop.create_server(
        lambda: MailSession(services, "imap", "imap", False, "ImapServer-0"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    replies = []
    for name in names:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"* OK")
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        writer.write(f'a LOGIN "{quoted}" wrong\r\n'.encode())
        lines = []
        while not lines or not lines[-1].startswith(b"a "):
            lines.append(await asyncio.wait_for(reader.readline(), 10))
        replies.append(b"".join(lines))
        writer.close()
    server.close()
    return replies


def run(names: list[str], counts: dict | None = None, limit: int = LIMIT):
    async def main():
        backend = await asyncio.start_server(refusing_server, "127.0.0.1", 0)
        services = stand_in_services(asyncio.get_running_loop(),
                                     backend.sockets[0].getsockname()[1], auth_wait=0)
        services.router = AliasRouter(services.router.route)
        services.throttle = CountingThrottle(limit)
        services.throttle.counts.update(counts or {})
        replies = await logins(services, names)
        backend.close()
        return services, replies
    return asyncio.run(main())


SPELLINGS = ["user01@demo.test", "User01@Demo.Test", " user01@demo.test  ", "nick01",
             "NICK01@demo.test", "user01"]


def test_failures_of_every_spelling_count_on_the_account():
    services, replies = run(SPELLINGS, limit=100)
    assert all(r.startswith(b"a NO [AUTHENTICATIONFAILED]") for r in replies), replies
    assert services.throttle.counts == {user_key(ACCOUNT): len(SPELLINGS)}
    assert all(name == name.strip().lower() for name in services.router.asked)
    assert {e.account for e in services.audit.events} == {ACCOUNT}
    # the audit's error text keeps what was typed, for the admin
    assert "authentication failed for [NICK01@demo.test]" in services.audit.events[4].error


@pytest.mark.parametrize("name", SPELLINGS)
def test_a_locked_account_is_refused_under_any_spelling(name):
    services, [reply] = run([name], counts={user_key(ACCOUNT): LIMIT})
    assert reply.startswith(b"* BYE " + USER_REJECT.encode()), reply
    assert services.stats.throttled["user"] == 1
    [event] = services.audit.events
    assert event.account == ACCOUNT and "too many failed logins" in event.error


def test_an_unknown_name_counts_on_its_canonical_form():
    services, replies = run(["Nobody@demo.test", "nobody@demo.test ", "NOBODY@DEMO.TEST"])
    assert all(r.startswith(b"a NO [AUTHENTICATIONFAILED]") for r in replies)
    assert services.throttle.counts == {user_key("nobody@demo.test"): 3}
    assert {e.account for e in services.audit.events} == {"nobody@demo.test"}
