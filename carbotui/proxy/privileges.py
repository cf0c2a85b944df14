"""Running a worker without root: ``python -m carbotui.proxy ... --user carbotui``.

The worker is started as root (by supervisord, systemd or a shell) and becomes the given user
first thing, before it reads LDAP, binds a socket or writes a file: every file it creates
(stats and control sockets, vhost certificates, audit.log) belongs to that user, and no byte
from a client is parsed by root. The steps are initgroups, setgid, setuid (so neither
root's groups nor its uid remain), then PR_SET_NO_NEW_PRIVS (no exec can gain privileges
again). The result is checked: setuid(0) and setgid(0) must fail and the capability sets
must be exactly the ones kept.

Ports below ``net.ipv4.ip_unprivileged_port_start`` (1024 by default: 143, 993, 110, 995,
80, 443): when a listener needs one, the worker keeps one capability, CAP_NET_BIND_SERVICE,
across the change of user (PR_SET_KEEPCAPS) and nothing else; with no such listener it keeps
none. This is what Carbonio gives its nginx, as a file capability or systemd's
``AmbientCapabilities=``. Binding as root and dropping afterwards would leave the worker's
whole start-up running as root (the LDAP refresh, the vhost key files and stats sockets,
which the unprivileged worker could then no longer rewrite or remove, and any session
accepted on a listener while the next one is being set up).

Each start does this again, so a worker that supervisord restarts binds like the first
one. Every worker binds with SO_REUSEPORT, which the kernel allows only among sockets of
one uid: all workers of a node must run as the same user (``supervisorctl update`` restarts
the whole group when the command changes). A listener added by a SIGHUP reload needs a
restart, as before.

Started as that user already (systemd ``User=carbotui`` plus ``AmbientCapabilities=
CAP_NET_BIND_SERVICE``, or ``setpriv``), ``--user`` changes nothing.
"""
from __future__ import annotations

import ctypes
import os
import pwd
import socket

CAP_NET_BIND_SERVICE = 10

_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522   # two 32-bit words per set


class PrivilegeError(Exception):
    """The worker could not become the user it was told to run as; it must not start."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"prctl({option}, {value}): {os.strerror(err)}")


def _capset(caps: int) -> None:
    """Effective and permitted sets = `caps` (a bit mask), inheritable empty."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (caps >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
        data[i].inheritable = 0
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"capset: {os.strerror(err)}")


def capabilities(pid: int | str = "self") -> dict[str, int]:
    """The capability sets of a process: {"CapEff": mask, "CapPrm": ..., ...}."""
    caps = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cap"):
                name, value = line.split(":")
                caps[name] = int(value, 16)
    return caps


def unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


def privileged(ports) -> list[int]:
    """The ports among `ports` that only CAP_NET_BIND_SERVICE may bind."""
    start = unprivileged_port_start()
    return sorted({p for p in ports if 0 < p < start})


def drop(user: str, keep_bind: bool) -> pwd.struct_passwd:
    """Become `user` for good; with `keep_bind`, keep CAP_NET_BIND_SERVICE and no other
    capability. Call it while the process has one thread: capabilities are per thread."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"no such user {user!r}") from None
    if pw.pw_uid == 0:
        raise PrivilegeError(f"{user!r} is root: name an unprivileged user")
    if os.geteuid() != 0:
        if os.getresuid() == (pw.pw_uid,) * 3:
            return pw                   # started as that user already
        raise PrivilegeError(f"started as uid {os.geteuid()}: only root can become {user!r}")
    tasks = len(os.listdir("/proc/self/task"))
    if tasks != 1:
        raise PrivilegeError(f"{tasks} threads running: privileges must be dropped before any starts")
    if keep_bind:
        _prctl(_PR_SET_KEEPCAPS, 1)         # the permitted set survives setuid; no more
    try:
        os.initgroups(pw.pw_name, pw.pw_gid)    # the user's groups only, none of root's
        os.setgid(pw.pw_gid)                    # real, effective and saved
        os.setuid(pw.pw_uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot become {user!r}: {exc.strerror}") from None
    if keep_bind:
        _prctl(_PR_SET_KEEPCAPS, 0)
        _capset(1 << CAP_NET_BIND_SERVICE)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    check(pw, (1 << CAP_NET_BIND_SERVICE) if keep_bind else 0)
    return pw


def check(pw: pwd.struct_passwd, caps: int) -> None:
    """Raise PrivilegeError unless this process is `pw` for good, holding exactly `caps`."""
    if os.getresuid() != (pw.pw_uid,) * 3 or os.getresgid() != (pw.pw_gid,) * 3:
        raise PrivilegeError(f"uids {os.getresuid()} gids {os.getresgid()} after the change")
    for regain in (os.setuid, os.setgid):
        try:
            regain(0)
        except PermissionError:
            continue
        raise PrivilegeError(f"{regain.__name__}(0) succeeded: privileges were not dropped")
    have = capabilities()
    if (have.get("CapEff"), have.get("CapPrm"), have.get("CapInh", 0), have.get("CapAmb", 0)) \
            != (caps, caps, 0, 0):
        raise PrivilegeError(f"capabilities after the change: {have}, expected {caps:#x}")


def unix_listener(path: str, mode: int) -> socket.socket:
    """A listening Unix socket whose file has exactly `mode` from the moment it exists (the
    umask is set around bind(); a chmod afterwards would leave a window)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock
