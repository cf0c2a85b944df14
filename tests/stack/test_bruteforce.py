"""A scripted brute force against the demo, end to end: audit -> auditwatch -> alert
log and e-mail (the demo SMTP sink), while the attacker gets throttled."""
from __future__ import annotations

import email
import json
import random
import socket
import threading
import time

import pytest

from tests.stack.conftest import HOST, PORTS, REPO, imap_login, tls_context, wait_for

pytestmark = pytest.mark.usefixtures("proxy_up", "memcached_in_use")


def wrong_passwords(ip: str, accounts: list[str], tries: int) -> list[bytes]:
    """One connection from ``ip``: ``tries`` wrong LOGINs across ``accounts``."""
    raw = socket.create_connection((HOST, PORTS["imaps"]), timeout=20, source_address=(ip, 0))
    sock = tls_context().wrap_socket(raw, server_hostname=HOST)
    f = sock.makefile("rb")
    replies = [f.readline()]
    for i in range(tries):
        sock.sendall(b"t%d LOGIN %s not-the-password\r\n" % (i, accounts[i % len(accounts)].encode()))
        replies.append(f.readline())
    sock.close()
    return replies


def test_brute_force_is_alerted_mailed_and_throttled():
    ip = f"127.0.{random.randint(10, 250)}.{random.randint(2, 250)}"   # a fresh attacker
    accounts = [f"user{n:02d}@demo.test" for n in (3, 5, 7, 9, 11)]
    mail_dir = REPO / "var/mailsink/new"
    mails_before = set(mail_dir.iterdir()) if mail_dir.exists() else set()
    # 24 wrong passwords: 8 connections x 3 tries (the demo's max_auth_failures), in
    # parallel so the 1 s tarpit does not make it slow.
    threads = [threading.Thread(target=wrong_passwords, args=(ip, accounts, 3))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finished = time.time()

    def alert():
        for line in (REPO / "var/log/alerts.log").read_text().splitlines():
            a = json.loads(line)
            if a["rule"] == "ip" and a["key"] == ip:
                return a
    found = wait_for(alert, 10, interval=0.05, what=f"an ip alert for {ip}")
    assert found["count"] >= 20 and set(found["accounts"]) <= set(accounts)
    print(f"alert written {max(0.0, time.time() - finished):.2f}s after the last failure")

    def mail():
        for path in set(mail_dir.iterdir()) - mails_before:
            msg = email.message_from_bytes(path.read_bytes())
            if ip in msg["Subject"]:
                return msg
    msg = wait_for(mail, 15, interval=0.1, what="the alert e-mail in the demo sink")
    body = msg.get_payload(decode=True).decode() if not msg.is_multipart() else str(msg)
    assert msg["To"] == "admin@demo.test" and any(a in body for a in accounts)

    # The attacker keeps trying: its connections are counted by every worker together
    # (the demo allows 30 a minute per IP), then refused before the greeting.
    replies = [wrong_passwords(ip, accounts, 0)[0] for _ in range(23)]
    assert replies[-1] == b"* BYE Login rejected from this IP\r\n", replies[-3:]
    # Meanwhile the real user logs in from elsewhere (127.0.0.1, whitelisted in the demo).
    imap_login("user03@demo.test").logout()
