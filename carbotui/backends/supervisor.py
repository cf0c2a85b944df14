"""supervisord over XML-RPC on its unix socket: states, start/stop/restart, logs.

Blocking calls, meant for a thread (the dashboard runs them in Textual thread
workers). One HTTP connection per call: xmlrpc's persistent connection is not
thread-safe, and a fresh connect on a local socket costs microseconds. A lock
still serialises calls, so a rolling restart and a status poll never interleave
on the wire.

Process names are supervisor's full names: "proxy:proxy_00" for a member of
the proxy group, "memcached" for a program alone in its group.
"""
from __future__ import annotations

import http.client
import socket
import threading
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# supervisor.xmlrpc.Faults: the codes a person can act on, in their words.
FAULT_TEXT = {
    10: "no such process",
    20: "it has no log file",
    30: "supervisord failed to do it",
    40: "it exited abnormally",
    50: "it could not be spawned (see its log)",
    60: "it is already running",
    70: "it is not running",
    6: "supervisord is shutting down",
}

STATE_RUNNING = "RUNNING"


class SupervisorError(RuntimeError):
    """supervisord is unreachable or refused; the message says which and why."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float):
        super().__init__()
        self.unix_path, self.timeout = path, timeout

    def make_connection(self, host):
        # A new connection per request (see the module docstring).
        return _UnixHTTPConnection(self.unix_path, self.timeout)


@dataclass(frozen=True)
class ProcessState:
    name: str          # full name, "proxy:proxy_00"
    group: str
    short: str         # "proxy_00"
    state: str         # RUNNING, STOPPED, STARTING, BACKOFF, STOPPING, EXITED, FATAL
    pid: int
    started: float     # epoch seconds; 0 when never started
    description: str   # supervisord's "pid 123, uptime 0:01:02" or the exit reason
    exit_status: int = 0

    @property
    def running(self) -> bool:
        return self.state == STATE_RUNNING


def _process_state(info: dict) -> ProcessState:
    group, short = info["group"], info["name"]
    full = short if group == short else f"{group}:{short}"
    return ProcessState(name=full, group=group, short=short, state=info["statename"],
                        pid=int(info.get("pid") or 0), started=float(info.get("start") or 0),
                        description=info.get("description", ""),
                        exit_status=int(info.get("exitstatus") or 0))


class Supervisor:
    """Client for one supervisord, e.g. Supervisor(settings.run_dir / "supervisor.sock")."""

    def __init__(self, socket_path: str | Path, *, timeout: float = 3.0,
                 control_timeout: float = 90.0):
        self.socket_path = str(socket_path)
        self.timeout = timeout
        # stop waits for the worker to drain (stopwaitsecs=40 in supervisord.conf)
        self.control_timeout = control_timeout
        self._lock = threading.Lock()

    def _call(self, method: str, *args, timeout: float | None = None):
        proxy = xmlrpc.client.ServerProxy(
            "http://localhost/RPC2", allow_none=True,
            transport=_UnixTransport(self.socket_path, timeout or self.timeout))
        with self._lock:
            try:
                func = proxy
                for part in method.split("."):
                    func = getattr(func, part)
                return func(*args)
            except xmlrpc.client.Fault as fault:
                target = f" {args[0]}" if args and isinstance(args[0], str) else ""
                reason = FAULT_TEXT.get(fault.faultCode, fault.faultString)
                raise SupervisorError(f"{method.split('.')[-1]}{target}: {reason}") from None
            except FileNotFoundError:
                raise SupervisorError(f"supervisord is not running (no socket at "
                                      f"{self.socket_path}; start the stack with make up)") from None
            except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as exc:
                raise SupervisorError(f"supervisord at {self.socket_path} did not answer: "
                                      f"{exc}") from None

    # -- status ---------------------------------------------------------------
    def processes(self) -> list[ProcessState]:
        return [_process_state(i) for i in self._call("supervisor.getAllProcessInfo")]

    def process(self, name: str) -> ProcessState:
        return _process_state(self._call("supervisor.getProcessInfo", name))

    # -- control --------------------------------------------------------------
    def start(self, name: str) -> None:
        self._call("supervisor.startProcess", name, True, timeout=self.control_timeout)

    def stop(self, name: str) -> None:
        self._call("supervisor.stopProcess", name, True, timeout=self.control_timeout)

    def restart(self, name: str) -> ProcessState:
        """Stop (if running) then start; returns the new state (new pid)."""
        try:
            self.stop(name)
        except SupervisorError as exc:
            if FAULT_TEXT[70] not in str(exc):       # not running: just start it
                raise
        self.start(name)
        return self.process(name)

    def rolling_restart(self, group: str = "proxy", *,
                        progress: Callable[[str], None] = lambda _msg: None,
                        ready: Callable[[ProcessState], bool] = lambda _p: True,
                        ready_timeout: float = 30.0) -> list[ProcessState]:
        """Restart each process of `group` in turn, waiting until it is RUNNING and
        `ready` (e.g. its stats socket answers) before the next one, so the other
        workers keep serving throughout. Stops at the first failure."""
        members = sorted((p for p in self.processes() if p.group == group), key=lambda p: p.name)
        if not members:
            raise SupervisorError(f"no processes in group {group}")
        done = []
        for i, proc in enumerate(members, 1):
            progress(f"restarting {proc.name} ({i}/{len(members)})")
            new = self.restart(proc.name)
            deadline = time.monotonic() + ready_timeout
            while not (new.running and ready(new)):
                if time.monotonic() > deadline:
                    raise SupervisorError(f"{proc.name} not ready after {ready_timeout:g}s "
                                          f"(state {new.state}); rolling restart stopped")
                time.sleep(0.2)
                new = self.process(proc.name)
            done.append(new)
            progress(f"{proc.name} running again (pid {new.pid})")
        return done

    # -- logs -----------------------------------------------------------------
    def tail(self, name: str, offset: int = -1, length: int = 16384) -> tuple[str, int]:
        """Log text written since `offset` and the next offset to ask from.

        offset -1 (first call): the last `length` bytes. If more than `length`
        bytes arrived since `offset`, only the last `length` are returned; if the
        log shrank (rotated), reading restarts from its new end. (supervisor's
        tailProcessStdoutLog always returns the *last* bytes, seen or not, so the
        new part is read with readProcessStdoutLog from our own offset.)
        """
        method = "supervisor.tailProcessStdoutLog"
        if offset < 0:
            data, size, _ = self._call(method, name, 0, length)
            return data, size
        _, size, _ = self._call(method, name, offset, 0)     # length 0: just the size
        if size == offset:
            return "", size
        if size < offset or size - offset > length:
            data, size, _ = self._call(method, name, 0, length)
            return data, size
        data = self._call("supervisor.readProcessStdoutLog", name, offset, size - offset)
        return data, size
