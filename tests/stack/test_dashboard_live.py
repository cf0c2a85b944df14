"""The real dashboard on the running demo stack (`make up`): LDAP writes, the
audit stream, supervisord control, and `carbotui` itself in tmux at 80x24.

These tests change the stack and put it back: the mail mode is restored and
the restarted worker serves again before the test ends.
"""
from __future__ import annotations

import imaplib
import os
import shutil
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from carbotui.backends.supervisor import Supervisor
from carbotui.tui.screens.audit import AuditScreen

from tests.support.tui import drive, settle
from .conftest import flip_mail_mode, live_source

ROOT = Path(__file__).resolve().parents[2]


def test_switching_mail_mode_writes_ldap(stack):
    async def check(app, pilot, directory, expected):
        await settle(pilot, until=lambda a: directory.servers()[stack.node_name].mail_mode
                     == expected, timeout=10)
        # ...and the workers report they applied it (they poll LDAP every ~2 s).
        applied = app.screen.query_one("#applied")
        await settle(pilot, until=lambda a: all(
            applied.cells(w.name)[1].plain == "✓ applied" for w in a.snapshot.workers)
            and a.snapshot.directory.mail_mode == expected, timeout=15)

    flip_mail_mode(stack, check)


def test_wrong_password_reaches_the_audit_screen_within_2s(stack):
    ca = ssl.create_default_context(cafile=str(stack.var_dir / "certs" / "ca.crt"))
    marker = f"x{uuid.uuid4().hex[:10]}@demo.test"    # unique: only this attempt
    timings = {}

    async def test(app, pilot):
        await pilot.press("5")
        await pilot.pause()
        imap = imaplib.IMAP4_SSL("127.0.0.1", 10993, ssl_context=ca, timeout=10)
        try:
            with pytest.raises(imaplib.IMAP4.error):
                imap.login(marker, "wrong-password")
            refused = time.monotonic()
        finally:
            imap.shutdown()
        assert isinstance(app.screen, AuditScreen)
        log = app.screen.query_one("#log")
        await settle(pilot, until=lambda a: any(marker in line for line in log.lines),
                     timeout=5)
        timings["seen"] = time.monotonic() - refused

    drive(test, source=live_source(stack), refresh=1.0)
    assert timings["seen"] <= 2.0, f"the failure took {timings['seen']:.2f}s to show"


def test_restart_from_workers_screen_changes_the_pid(stack):
    supervisor = Supervisor(stack.run_dir / "supervisor.sock")
    name = "proxy:proxy_00"
    old = supervisor.process(name)
    assert old.running

    async def test(app, pilot):
        await pilot.press("7")
        await settle(pilot, until=lambda a: a.screen.table.selected_key == name)
        await pilot.press("r")
        await settle(pilot, until=lambda a: (lambda p: p.running and p.pid != old.pid)(
            supervisor.process(name)), timeout=60)
        await settle(pilot, until=lambda a: a.screen.table.cells(name)[2].plain
                     == str(supervisor.process(name).pid), timeout=10)

    drive(test, source=live_source(stack), refresh=0.5)
    new = supervisor.process(name)
    assert new.running and new.pid != old.pid


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_carbotui_in_tmux_80x24(stack, tmp_path):
    session = f"carbotui-test-{os.getpid()}"
    env = {**os.environ, "TERM": "xterm-256color", "TZ": "UTC"}
    tmux = ["tmux", "-L", session]                 # a private tmux server for this test

    def capture() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", session],
                              capture_output=True, text=True, check=True).stdout

    def wait_for(*texts: str, timeout: float = 15.0) -> str:
        """Until one captured screen shows every text (a capture can fall between two
        partial redraws: the first rows drawn, the status bar not yet)."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = capture()
            if all(text in screen for text in texts):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{texts!r} not on screen:\n{screen}")

    command = f"cd {ROOT} && exec {ROOT}/.venv/bin/carbotui --refresh 1"
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                    command], check=True, env=env)
    try:
        screen = wait_for("proxy_00", "● live")
        assert "proxy.demo.test" in screen
        assert all(len(line) <= 80 for line in screen.splitlines())
        subprocess.run([*tmux, "send-keys", "-t", session, "7"], check=True)
        screen = wait_for("R Rolling")
        assert "proxy:proxy_01" in screen and "RUNNING" in screen
        subprocess.run([*tmux, "send-keys", "-t", session, "?"], check=True)
        wait_for("workers.rolling")
        subprocess.run([*tmux, "send-keys", "-t", session, "Escape"], check=True)
        time.sleep(0.5)
        subprocess.run([*tmux, "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = subprocess.run([*tmux, "has-session", "-t", session],
                                   capture_output=True).returncode == 0
            if not alive:
                break
            time.sleep(0.2)
        assert not alive, "carbotui did not quit on q"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_carbotui_exits_when_its_terminal_goes_away(stack):
    session = f"carbotui-hup-{os.getpid()}"
    tmux = ["tmux", "-L", session]
    pid_file = Path(f"/tmp/{session}.pid")
    command = f"cd {ROOT} && echo $$ > {pid_file} && exec {ROOT}/.venv/bin/carbotui"
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                    command], check=True, env={**os.environ, "TERM": "xterm-256color"})
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "proxy_00" not in subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session], capture_output=True,
                text=True).stdout:
            time.sleep(0.2)
        pid = int(pid_file.read_text())
        subprocess.run([*tmux, "kill-server"], check=True)    # the terminal goes away
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            state = Path(f"/proc/{pid}/stat").read_text().split()[2] \
                if Path(f"/proc/{pid}/stat").exists() else "gone"
            if state == "Z":
                break
            time.sleep(0.2)
        assert not Path(f"/proc/{pid}").exists() or state == "Z", \
            "carbotui kept running after its terminal was gone"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        pid_file.unlink(missing_ok=True)
