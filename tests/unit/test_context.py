"""The worker's SessionServices (carbotui/proxy/context.py): what a reload hands to whom, the
TLS context each side gets for its mailbox-server connections, session ids and the
wait for the last session."""
from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace

from carbotui.core.settings import MailSettings, WebSettings
from carbotui.backends.worker_sockets import write_maintenance
from carbotui.proxy.context import SessionServices, upstream_contexts


def settings(tmp_path, *, mail_tls=False, web_tls=False, ttl=300):
    return SimpleNamespace(
        run_dir=tmp_path, mail=MailSettings(upstream_tls=mail_tls),
        web=WebSettings(upstream_tls=web_tls), memcached_ttl=ttl, memcached_timeout=0.5,
        memcached_reconnect=2.0, throttle=SimpleNamespace(user_limit=ttl))


def test_each_side_gets_an_upstream_context_only_when_its_upstream_tls_is_on(tmp_path):
    assert upstream_contexts(settings(tmp_path)) == (None, None)
    mail, web = upstream_contexts(settings(tmp_path, mail_tls=True, web_tls=True))
    assert mail is not None and web is mail
    # web over TLS does not make the mail side speak TLS to the plaintext IMAP/POP3 ports
    mail, web = upstream_contexts(settings(tmp_path, web_tls=True))
    assert mail is None and web is not None
    mail, web = upstream_contexts(settings(tmp_path, mail_tls=True))
    assert mail is not None and web is None


def test_configure_hands_the_settings_to_every_part_that_keeps_a_copy(tmp_path):
    first = settings(tmp_path)
    parts = {name: SimpleNamespace() for name in ("router", "throttle", "directory", "cache")}
    services = SessionServices(settings=first, loop=None, audit=None, **parts)
    services.configure(first)
    services.live.version = "applied"
    write_maintenance(tmp_path, ["mbox2.demo.test"])
    second = settings(tmp_path, web_tls=True, ttl=60)
    services.configure(second)
    assert services.settings is second
    assert parts["router"].ttl == 60 and parts["throttle"].settings is second.throttle
    assert parts["directory"].settings is second
    assert (parts["cache"].timeout, parts["cache"].reconnect) == (0.5, 2.0)
    assert services.mail_upstream_tls is None and services.web_upstream_tls is not None
    assert services.in_maintenance("mbox2.demo.test")
    assert services.live.version == ""          # LDAP's certificates and servers re-applied


def test_session_ids_are_unique_across_a_nodes_workers(tmp_path):
    def ids(index):
        s = SessionServices(settings=settings(tmp_path), loop=None, router=None,
                            throttle=None, audit=None, index=index)
        return {s.next_session_id() for _ in range(3)}
    assert ids(0) == {1, 2, 3} and ids(2) == {20_000_000_001, 20_000_000_002, 20_000_000_003}


def test_sessions_gone_waits_for_the_last_session():
    async def main():
        services = SessionServices(settings=SimpleNamespace(web=WebSettings()),
                                   loop=asyncio.get_running_loop(), router=None,
                                   throttle=None, audit=None)
        await asyncio.wait_for(services.sessions_gone(), 1)      # none: at once
        services.sessions.update({1: object(), 2: object()})
        waiting = asyncio.ensure_future(services.sessions_gone())
        services.session_ended(1)
        await asyncio.sleep(0.01)
        assert not waiting.done()
        services.session_ended(2)
        services.session_ended(2)                # a session may say it twice
        await asyncio.wait_for(waiting, 1)
        return services

    services = asyncio.run(main())
    assert services._waiting == 0 and not services.sessions


def test_the_fields_are_slots(tmp_path):
    """A session reaches a service in one attribute lookup, no instance dict."""
    services = SessionServices(settings=settings(tmp_path), loop=None, router=None,
                               throttle=None, audit=None)
    assert not hasattr(services, "__dict__")
    assert {f.name for f in dataclasses.fields(SessionServices)} >= {
        "settings", "loop", "router", "throttle", "audit", "stats", "tls", "sessions",
        "maintenance", "connections_per_ip", "pop3_server_capa", "live", "web_upstreams",
        "admin_upstreams", "mail_upstream_tls", "web_upstream_tls"}


def test_mail_config_holds_the_current_mail_settings_values(tmp_path):
    """mail_config(): [mail]'s values as a mail session reads them, the same object while
    the settings stay, a new one with the new values once a reload replaced them."""
    first = SimpleNamespace(**vars(settings(tmp_path)))
    first.mail = MailSettings(login_timeout=12.5, connect_retries=0, max_connections=7,
                              upstream_tls=False, send_imap_id=False, auth_wait=0.0)
    services = SessionServices(settings=first, loop=None, router=SimpleNamespace(),
                               throttle=SimpleNamespace(), audit=None)
    config = services.mail_config()
    assert services.mail_config() is config and config.source is first.mail
    names = ("limits", "auth_wait", "preauth_timeout", "imap_idle_timeout", "pop3_idle_timeout",
             "connect_timeout", "connect_retries", "login_timeout", "max_connections",
             "max_connections_per_ip", "upstream_tls", "send_imap_id", "send_pop3_xoip")
    for name in names:
        assert getattr(config, name) == getattr(first.mail, name), name
    second = SimpleNamespace(**vars(first))
    second.mail = MailSettings(login_timeout=3.0, preauth_timeout=9.0, upstream_tls=True)
    services.configure(second)
    renewed = services.mail_config()
    assert renewed is not config and renewed.source is second.mail
    assert (renewed.login_timeout, renewed.preauth_timeout, renewed.upstream_tls) == \
        (3.0, 9.0, True)
    assert config.login_timeout == 12.5            # a live session keeps its own
    third = SimpleNamespace(**vars(second))
    third.mail = MailSettings(max_connections_per_ip=2)
    services.settings = third                     # replaced without configure(): seen too
    assert services.mail_config().max_connections_per_ip == 2
