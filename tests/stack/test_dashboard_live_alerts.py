"""Alerts and IP blocks on the running demo stack (`make up`): a brute force from a
loopback address of its own makes auditwatch write an alert, which the dashboard
(the real Fleet source) lists and announces within seconds; the IP is then blocked
from the dashboard, and `carbotui blocks` lists, lifts, adds and lifts it again.

The attacking address is random (127.0.x.y), so the rule's 5-minute cooldown and
the 60-second IP counters of earlier runs do not matter; the logins are spread over
five accounts that do not exist, so no real user is throttled.
"""
from __future__ import annotations

import json
import random
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from carbotui.tui.screens.alerts import AlertsScreen
from carbotui.tui.widgets.modals import BlockModal

from tests.support.tui import drive, settle
from .conftest import supervisor_states

ROOT = Path(__file__).resolve().parents[2]
CARBOTUI = str(ROOT / ".venv" / "bin" / "carbotui")
IMAPS = ("127.0.0.1", 10993)


@pytest.fixture(scope="module")
def stack(stack):
    """The live stack, with auditwatch RUNNING as well."""
    states = supervisor_states(stack)
    if not (states.get("auditwatch") and states["auditwatch"].running):
        pytest.fail("auditwatch is not RUNNING: nothing writes var/log/alerts.log")
    return stack


def blocks_cli(*args: str) -> subprocess.CompletedProcess:
    """`carbotui blocks …`; retried while memcached does not answer (the fault tests of
    a concurrent run stop it for a few seconds), so only our own failures count."""
    for _ in range(5):
        proc = subprocess.run([CARBOTUI, "blocks", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=30)
        if "does not answer" not in proc.stderr:
            break
        time.sleep(2)
    return proc


def wrong_logins(ip: str, accounts: list[str], total: int, ca: Path) -> list[bytes]:
    """`total` wrong-password IMAPS logins from `ip`, three per connection (the proxy
    closes after max_auth_failures = 3), connections in parallel: each failure waits
    out the 1 s tarpit. Returns every tagged reply."""
    ctx = ssl.create_default_context(cafile=str(ca))
    attempts = [accounts[i % len(accounts)] for i in range(total)]
    chunks = [attempts[i:i + 3] for i in range(0, total, 3)]
    replies: list[bytes] = []
    errors: list[BaseException] = []

    def connection(chunk: list[str]) -> None:
        try:
            raw = socket.create_connection(IMAPS, timeout=20, source_address=(ip, 0))
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                f = sock.makefile("rb")
                greeting = f.readline()
                assert greeting.startswith(b"* OK"), greeting
                for n, account in enumerate(chunk):
                    sock.sendall(b"a%d LOGIN %s wrong-%d\r\n" % (n, account.encode(), n))
                    line = f.readline()
                    while line.startswith(b"*"):
                        line = f.readline()
                    replies.append(line)
        except BaseException as exc:       # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=connection, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return replies


def greeting_from(ip: str) -> bytes:
    raw = socket.create_connection(("127.0.0.1", 10143), timeout=10, source_address=(ip, 0))
    with raw:
        return raw.makefile("rb").readline()


def test_brute_force_alert_reaches_the_dashboard_and_blocks_round_trip(stack):
    from carbotui.tui.source import LiveSource

    ip = f"127.0.{random.randint(10, 250)}.{random.randint(2, 250)}"
    tag = f"{random.randint(0, 99999):05d}"
    accounts = [f"nobody{tag}-{i}@demo.test" for i in range(5)]
    blocks_cli("remove", ip)                      # a leftover of an earlier run, if any
    timings: dict[str, float] = {}
    replies: list[bytes] = []

    def ours(alert) -> bool:
        return alert.rule == "ip" and alert.key == ip

    async def test(app, pilot):
        await pilot.press("8")
        await settle(pilot, until=lambda a: isinstance(a.screen, AlertsScreen))
        screen = app.screen

        async def blocked(pilot, present: bool) -> None:
            """The block list on screen (read from memcached every poll) has ip or not.
            Generous: a memcached timeout under load makes the list unknown for a while."""
            try:
                await settle(pilot, until=lambda a: (ip in screen.blocks) == present,
                             timeout=15)
            except AssertionError:
                raise AssertionError(f"{ip} {'not ' if present else ''}in the block list "
                                     f"after 15 s; blocks_error={app.snapshot.blocks_error!r} "
                                     f"data_error={app.data_error!r}") from None
        done = threading.Event()

        def attack():
            try:
                replies.extend(wrong_logins(ip, accounts, 25, stack.var_dir / "certs" / "ca.crt"))
            finally:
                timings["attack_done"] = time.monotonic()
                done.set()

        threading.Thread(target=attack, daemon=True).start()
        await settle(pilot, until=lambda a: any(ours(x) for x in a.alerts), timeout=60)
        timings["seen"] = time.monotonic()
        # it is on screen, on top, and was announced as news
        await settle(pilot, until=lambda a: any(
            ours(x) for x in screen.alerts_by_key.values()))
        alert = next(x for x in app.alerts if ours(x))
        assert alert.count >= 20 and alert.threshold == 20
        assert set(alert.accounts) <= set(accounts) and alert.ips == (ip,)
        # Other traffic on the shared stack may alert too: walk to ours with the keys.
        table = screen.alert_table
        table.move_cursor(row=0)
        for _ in range(table.row_count):
            if ours(screen.selected_alert()):
                break
            await pilot.press("down")
        assert ours(screen.selected_alert())
        assert app.alerts_announced >= 1
        assert any(n.severity == "warning" and ip in n.message for n in app._notifications)
        row = screen.alert_table.cells(alert.id)
        assert row[1].plain == "ip" and row[3] == ip and row[2].plain.endswith("/20")

        # block it from the alert: the form comes filled in with the IP
        await pilot.press("b")
        await pilot.pause()
        assert isinstance(app.screen, BlockModal)
        assert app.screen.query_one("#ip").value == ip
        app.screen.query_one("#duration").value = "10m"
        await pilot.press("ctrl+s")
        await blocked(pilot, True)
        assert screen.alert_table.cells(alert.id)[5].plain == "blocked"
        await settle(pilot, until=lambda a: done.is_set(), timeout=30)

        listed = blocks_cli("--json")
        assert listed.returncode == 0, listed.stderr
        mine = [b for b in json.loads(listed.stdout) if b["ip"] == ip]
        assert mine and mine[0]["by"].startswith("dashboard:")
        assert 590 <= mine[0]["until"] - mine[0]["since"] <= 600
        assert greeting_from(ip) == b"* BYE Login rejected from this IP\r\n"

        lifted = blocks_cli("remove", ip)
        assert lifted.returncode == 0 and f"block on {ip} lifted" in lifted.stderr
        await blocked(pilot, False)
        again = blocks_cli("remove", ip)
        assert again.returncode == 1 and "is not blocked" in again.stderr

        added = blocks_cli("add", ip, "120", "live", "test")
        assert added.returncode == 0, added.stderr
        assert f"{ip} blocked for 2m00s" in added.stderr
        await blocked(pilot, True)
        assert screen.blocks[ip].reason == "live test"
        assert screen.blocks[ip].by.startswith("cli:")
        text = blocks_cli()
        assert text.returncode == 0 and any(line.startswith(ip + " ")
                                            for line in text.stdout.splitlines())
        assert blocks_cli("remove", ip).returncode == 0
        await blocked(pilot, False)

    try:
        drive(test, source=LiveSource(stack), refresh=1.0, size=(80, 24))
    finally:
        blocks_cli("remove", ip)
    assert len(replies) == 25 and all(b" NO " in r for r in replies), replies[:3]
    # The 20th failure fires the rule; the attack keeps going for about a second after
    # it, so measure against the end of the attack, whichever came first.
    seen_after = timings["seen"] - min(timings["attack_done"], timings["seen"])
    assert seen_after <= 3.0, f"the alert took {seen_after:.1f}s after the attack to show"
