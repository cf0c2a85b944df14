"""Where the dashboard gets its data and sends its actions.

The App talks only to a `Source`. `LiveSource` is the real node (fleet,
supervisord, LDAP, worker control sockets); `demo.fake_source.FakeSource`
is deterministic data for tests and screenshots. Every method blocks and is
called from a thread worker, never from the UI thread. Actions return a
sentence for a notification or raise ActionFailed with one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from carbotui.services.alerts import Alert
from carbotui.core.audit import AuditEvent
from carbotui.admin.node import FleetSnapshot


class ActionFailed(Exception):
    """An action was refused or failed; str() is the message for the admin."""


class Source(Protocol):
    node: str

    def collect(self) -> FleetSnapshot: ...
    # optional: set_session_query(query: SessionQuery): the sessions page collect() brings
    # (a source without it sends every session; the screen sorts and filters them)
    def audit_events(self) -> list[AuditEvent]: ...
    def alerts(self) -> list[Alert]: ...       # new since the last call; the first call
                                               # returns what alerts.log held at start
    def tail_log(self, process: str, offset: int) -> tuple[str, int]: ...

    def kick(self, worker: str, session_id: int) -> str: ...
    def set_maintenance(self, server: str, on: bool) -> str: ...
    def flush_routes(self, account: str) -> str: ...
    def set_mail_mode(self, mode: str) -> str: ...
    def add_vhost(self, domain: str, fqdn: str, *, generate: bool,
                  cert_path: str = "", key_path: str = "") -> str: ...
    def remove_vhost(self, domain: str, fqdn: str) -> str: ...
    def set_vip(self, domain: str, ip: str) -> str: ...
    def start(self, process: str) -> str: ...
    def stop(self, process: str) -> str: ...
    def restart(self, process: str) -> str: ...
    def rolling_restart(self, progress: Callable[[str], None]) -> str: ...
    def check_block(self, ip: str, duration: str) -> str: ...   # "" or what is wrong
    def block(self, ip: str, duration: str, reason: str) -> str: ...
    def unblock(self, ip: str) -> str: ...
    def close(self) -> None: ...


def read_pem_files(cert_path: str, key_path: str) -> tuple[str, str]:
    try:
        return (Path(cert_path).expanduser().read_text(),
                Path(key_path).expanduser().read_text())
    except OSError as exc:
        raise ActionFailed(f"cannot read {exc.filename}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ActionFailed("certificate and key must be PEM text files") from None


class LiveSource:
    """The local node, as described by its carbotui.toml settings."""

    def __init__(self, settings):
        from carbotui.admin.changes import Admin
        from carbotui.backends.directory import Directory
        from carbotui.admin.node import AlertTail, AuditTail, Fleet
        from carbotui.backends.worker_sockets import WorkerControl
        from carbotui.backends.supervisor import Supervisor

        self.settings = settings
        self.node = settings.node_name
        self.directory = Directory(settings)
        self.supervisor = Supervisor(settings.supervisor_socket)
        self.fleet = Fleet(settings, supervisor=self.supervisor, directory=self.directory)
        self.admin = Admin(self.directory, ca_dir=settings.var_dir / "certs")
        self.control = WorkerControl(settings.run_dir)
        self.audit = AuditTail(settings.audit_log)
        alert_log = getattr(settings.alerts, "log", None)
        self.alert_tail = AlertTail(alert_log) if alert_log else None

    # -- data ----------------------------------------------------------------
    def collect(self) -> FleetSnapshot:
        return self.fleet.collect()

    def set_session_query(self, query) -> None:
        """The page of sessions the next collects ask the workers for."""
        self.fleet.session_query = query

    def audit_events(self) -> list[AuditEvent]:
        return self.audit.read_events()

    def alerts(self) -> list[Alert]:
        return self.alert_tail.read_alerts() if self.alert_tail else []

    def tail_log(self, process: str, offset: int) -> tuple[str, int]:
        return self._guard(self.supervisor.tail, process, offset)

    # -- actions ---------------------------------------------------------------
    def _guard(self, func, *args, **kwargs):
        """Run an action; turn every expected failure into ActionFailed."""
        from carbotui.admin.changes import AdminError
        from carbotui.backends.directory import DirectoryUnavailable
        from carbotui.backends.worker_sockets import WorkerControlError
        from carbotui.backends.supervisor import SupervisorError
        try:
            return func(*args, **kwargs)
        except (AdminError, DirectoryUnavailable, WorkerControlError,
                SupervisorError) as exc:
            raise ActionFailed(str(exc)) from None

    def _admin(self, func, *args, **kwargs) -> str:
        result = self._guard(func, *args, **kwargs)
        self.fleet.refresh_directory_soon()
        return str(result)

    def kick(self, worker: str, session_id: int) -> str:
        self._guard(self.control.kick, worker, session_id)
        return f"session {session_id} on {worker} closed"

    def set_maintenance(self, server: str, on: bool) -> str:
        self._guard(self.control.maintenance, server, on)
        return f"{server}: maintenance {'on: no new sessions' if on else 'off'}"

    def flush_routes(self, account: str) -> str:
        from carbotui.admin.changes import flush_routes
        name, deleted, checked = self._guard(flush_routes, self.settings, self.directory,
                                             account)
        return f"flushed routes of {name}: {deleted} removed ({checked} keys checked)"

    def set_mail_mode(self, mode: str) -> str:
        return self._admin(self.admin.set_mail_mode, self.node, mode)

    def add_vhost(self, domain: str, fqdn: str, *, generate: bool,
                  cert_path: str = "", key_path: str = "") -> str:
        cert_pem = key_pem = None
        if not generate and (cert_path or key_path):
            cert_pem, key_pem = read_pem_files(cert_path, key_path)
        return self._admin(self.admin.add_vhost, domain, fqdn, cert_pem=cert_pem,
                           key_pem=key_pem, generate=generate)

    def remove_vhost(self, domain: str, fqdn: str) -> str:
        return self._admin(self.admin.remove_vhost, domain, fqdn)

    def set_vip(self, domain: str, ip: str) -> str:
        return self._admin(self.admin.set_vip, domain, ip)

    def start(self, process: str) -> str:
        self._guard(self.supervisor.start, process)
        return f"{process} started"

    def stop(self, process: str) -> str:
        self._guard(self.supervisor.stop, process)
        return f"{process} stopped"

    def restart(self, process: str) -> str:
        new = self._guard(self.supervisor.restart, process)
        return f"{process} restarted (pid {new.pid})"

    def rolling_restart(self, progress: Callable[[str], None]) -> str:
        from carbotui.backends.worker_sockets import SessionQuery, read_snapshot, stats_path

        def ready(proc) -> bool:
            # RUNNING only means "alive for startsecs"; the new worker is known to be
            # up once its stats socket answers with the new pid (it opens it at start).
            try:
                snap = read_snapshot(stats_path(self.settings.run_dir, proc.short), timeout=1.0,
                                     query=SessionQuery(limit=0))      # its pid, no session
            except (OSError, ValueError):
                return False
            return snap.pid == proc.pid

        done = self._guard(self.supervisor.rolling_restart, "proxy", progress=progress,
                           ready=ready)
        return f"rolling restart done: {len(done)} workers restarted one by one"

    # -- IP blocks (memcached, shared by every node) ----------------------------
    def check_block(self, ip: str, duration: str) -> str:
        try:
            self.fleet.blocks.check(ip, duration)
        except ValueError as exc:
            return str(exc)
        return ""

    def block(self, ip: str, duration: str, reason: str) -> str:
        from carbotui.admin.node import BlocksUnavailable
        from carbotui.tui.format import duration as fmt_duration
        try:
            b = self.fleet.blocks.add(ip, duration, reason, by=f"dashboard:{_user()}")
        except (ValueError, BlocksUnavailable) as exc:
            raise ActionFailed(str(exc)) from None
        return f"{b.ip} blocked for {fmt_duration(b.until - b.since)} on every node"

    def unblock(self, ip: str) -> str:
        from carbotui.admin.node import BlocksUnavailable
        try:
            lifted = self.fleet.blocks.remove(ip)
        except (ValueError, BlocksUnavailable) as exc:
            raise ActionFailed(str(exc)) from None
        if not lifted:
            raise ActionFailed(f"{ip} was not blocked (the block may have expired)")
        return f"block on {ip} lifted"

    def close(self) -> None:
        self.audit.close()
        if self.alert_tail:
            self.alert_tail.close()
        self.fleet.close()


def _user() -> str:
    import getpass
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "?"
