"""Several [ldap] url servers: lookups fail over in order, within bounded time.

The working server is the demo's slapd; the dead ones are real sockets: a port nobody
listens on (refused at once) and a listener that accepts TCP but never answers (a hung
slapd: only the receive timeout ends the bind). TLS replicas are the private slapds of
test_ldap_tls (one with a certificate from a CA nobody configured, one from the demo CA).
Last, a real worker process whose first two servers are dead.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import os
import socket
import subprocess
import time

import pytest

from carbotui.backends.directory import Directory, DirectoryUnavailable
from carbotui.core import settings as config

from .conftest import REPO, SETTINGS, CustomWorker, imap_login, read_stats, wait_for
from .test_ldap_tls import ADMIN, slapds, settings as tls_settings  # noqa: F401 (fixture)

DEMO = SETTINGS.ldap_urls[0]
REFUSED = "ldap://127.0.0.1:1"


class Hung:
    """A TCP listener that never accepts: connects succeed, no LDAP answer ever comes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.url = f"ldap://127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen = 0

    def connections(self) -> int:
        """Connections made to it so far (each is taken off the queue and closed)."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return self.seen
            conn.close()
            self.seen += 1

    def close(self):
        self.sock.close()


@pytest.fixture
def hung():
    h = Hung()
    yield h
    h.close()


def with_urls(*urls: str, **ldap):
    s = dataclasses.replace(SETTINGS, ldap_urls=config.parse_ldap_urls(list(urls), "ldap.url"))
    return dataclasses.replace(s, **{f"ldap_{k}": v for k, v in ldap.items()})


def timed(fn):
    start = time.monotonic()
    value = fn()
    return value, time.monotonic() - start


def test_a_refused_first_server_is_passed_over_and_lookups_work():
    d = Directory(with_urls(REFUSED, DEMO))
    try:
        account, seconds = timed(lambda: d.find_account("user03@demo.test"))
        assert account is not None and account.mail_host == "mbox1.demo.test"
        assert d.in_use == DEMO and seconds < 2
    finally:
        d.close()


def test_a_hung_first_server_costs_its_timeout_once_then_is_skipped(hung):
    s = with_urls(hung.url, DEMO, timeout=1)
    d = Directory(s)
    try:
        account, first = timed(lambda: d.find_account("user05@demo.test"))
        assert account is not None and d.in_use == DEMO
        assert hung.connections() == 1
        assert 0.9 <= first < 1 + 4              # one receive timeout, then the demo slapd
        # a new connection (the old one broke, a reload...) goes straight to the second
        for _ in range(3):
            d.close()
            account, again = timed(lambda: d.find_account("user07@demo.test"))
            assert account is not None and again < 0.9    # less than the hung one's 1 s
        assert hung.connections() == 1
    finally:
        d.close()


def test_a_failed_server_is_tried_first_again_after_retry_after(hung):
    d = Directory(with_urls(hung.url, DEMO, timeout=1))
    d.RETRY_AFTER = 0.5
    try:
        assert d.default_domain() == "demo.test" and hung.connections() == 1
        wait_for(lambda: d._down_until[hung.url] <= time.monotonic(), 5,
                 what="the hung server's RETRY_AFTER to pass")
        d.close()
        assert d.default_domain() == "demo.test" and hung.connections() == 2
    finally:
        d.close()


def test_every_server_down_fails_fast_naming_each(hung):
    d = Directory(with_urls(REFUSED, "ldap://127.0.0.1:2", hung.url, timeout=1))
    try:
        with pytest.raises(DirectoryUnavailable) as err:
            timed(d.default_domain)
        text = str(err.value)
        assert REFUSED in text and "ldap://127.0.0.1:2" in text and hung.url in text
        # all marked down: the next attempt tries them all again, in bounded time
        start = time.monotonic()
        with pytest.raises(DirectoryUnavailable):
            d.default_domain()
        assert time.monotonic() - start < 1 + 4       # one timeout; refusals are instant
    finally:
        d.close()


def test_failover_is_logged_once_without_secrets(caplog):
    d = Directory(with_urls(REFUSED, DEMO))
    try:
        with caplog.at_level(logging.WARNING, logger="carbotui.backends.directory"):
            d.default_domain()
            d.close()
            d.default_domain()
        lines = [r.getMessage() for r in caplog.records]
        assert sum(REFUSED in line and "failed" in line for line in lines) == 1
        assert sum(line == f"LDAP: now using {DEMO}" for line in lines) == 1
        secrets = {SETTINGS.ldap_password(), SETTINGS.ldap_lookup_password()}
        assert not any(p in line for p in secrets for line in lines)
    finally:
        d.close()


def test_a_replica_whose_certificate_fails_is_failed_over_before_any_bind(slapds):
    made, root = slapds
    rogue, good = made["rogue"], made["good"]
    rogue_url, good_url = (f"ldaps://127.0.0.1:{rogue.ldaps}", f"ldaps://127.0.0.1:{good.ldaps}")
    s = tls_settings(root, rogue_url)
    s = dataclasses.replace(s, ldap_urls=config.parse_ldap_urls(f"{rogue_url} {good_url}",
                                                                "ldap.url"))
    d = Directory(s)
    try:
        assert d.default_domain() == "tls.test" and d.in_use == good_url
        assert rogue.binds() == []
        assert ADMIN in good.binds()
    finally:
        d.close()


def test_a_refused_bind_leaves_no_socket_behind(tmp_path):
    """Every failed attempt closes its socket at once (ldap3's auto_bind left it to the
    garbage collector: a worker retrying a wrong password gathered descriptors)."""
    (tmp_path / "wrong.secret").write_text("not the password")
    s = with_urls(DEMO, lookup_password_file=tmp_path / "wrong.secret")
    d = Directory(s)
    fds = lambda: len(os.listdir("/proc/self/fd"))          # noqa: E731
    try:
        with pytest.raises(DirectoryUnavailable, match="invalidCredentials"):
            d.default_domain()
        gc.collect()                       # what earlier tests left for the collector
        before = fds()
        gc.disable()                       # a socket left to the collector stays counted
        try:
            for _ in range(20):
                with pytest.raises(DirectoryUnavailable, match="invalidCredentials"):
                    d.default_domain()
            after = fds()
        finally:
            gc.enable()
        assert after <= before
    finally:
        d.close()


def test_a_worker_whose_first_ldap_server_is_dead_serves_through_the_second(tmp_path, hung):
    """A real worker with url = "<hung> <refused> <demo>": it starts, reads the cluster
    settings and routes a login (the route flushed first, so LDAP is asked) through the
    third server, and says so once in its log."""
    url = f'"{hung.url} {REFUSED} {DEMO}"'
    worker = CustomWorker(tmp_path, {"url": url, "timeout": "1"}, 23000, index=71)
    try:
        stats = read_stats(str(worker.stats_path))
        assert stats["config"]["ldap_error"] == "" and \
            "mail.demo.test" in stats["config"]["virtual_hosts"]
        subprocess.run([str(REPO / ".venv/bin/carbotui"), "prov", "flushCache",
                        "user09@demo.test"], cwd=REPO, check=True, capture_output=True,
                       timeout=30)
        before = read_stats(str(worker.stats_path))["ldap_searches"]
        conn = imap_login("user09@demo.test", port=worker.ports["imaps"])
        try:
            assert conn.select("INBOX")[0] == "OK"
        finally:
            conn.logout()
        assert read_stats(str(worker.stats_path))["ldap_searches"] > before
        log = (tmp_path / "worker.log").read_text()
        assert log.count(f"LDAP: now using {DEMO}") == 1
        assert log.count(f"LDAP {hung.url} failed") == 1 and log.count(f"LDAP {REFUSED} failed") == 1
        assert hung.connections() == 1                   # the hung one cost one timeout
    finally:
        worker.stop()


class Forwarder:
    """A TCP port that refuses (nothing listens) until start(), then relays to the demo's
    slapd: an LDAP server that was down and is back."""

    def __init__(self):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()                            # refused until start()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.sock: socket.socket | None = None

    def start(self):
        import threading
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(8)
        host, port = DEMO.removeprefix("ldap://").rsplit(":", 1)

        def pipe(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                a.close()
                b.close()

        def serve():
            while True:
                try:
                    client, _ = self.sock.accept()
                except OSError:
                    return
                upstream = socket.create_connection((host, int(port)), timeout=5)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pipe, args=(a, b), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def close(self):
        if self.sock is not None:
            self.sock.close()


def test_a_lone_server_back_after_a_restart_is_used_at_once():
    """One [ldap] url, refused, then answering: the next lookup binds (ldap3 alone would
    refuse the address for 5 s more: `invalid server address` seen after slapd came back)."""
    back = Forwarder()
    d = Directory(with_urls(back.url, timeout=2))
    try:
        with pytest.raises(DirectoryUnavailable):
            d.find_account("user03@demo.test")
        back.start()
        account, seconds = timed(lambda: d.find_account("user03@demo.test"))
        assert account is not None and account.mail_host == "mbox1.demo.test"
        assert seconds < 2
    finally:
        d.close()
        back.close()
