"""Privilege drop and file/socket modes (M7, L7), without the stack.

The drop itself needs root and the `carbotui` user (`demo setup` makes it): those tests run
it in a child process, which cannot undo it, and skip elsewhere.
"""
from __future__ import annotations

import asyncio
import os
import pwd
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from demo import stack
from carbotui.core.settings import WebSettings
from carbotui.backends.directory import Domain
from carbotui.proxy import control
from carbotui.proxy import live
from carbotui.proxy import privileges
from carbotui.proxy import stats
from carbotui.proxy.context import SessionServices

REPO = Path(__file__).resolve().parents[2]


def _user():
    try:
        return pwd.getpwnam(stack.SERVICE_USER)
    except KeyError:
        return None


needs_root_and_user = pytest.mark.skipif(
    os.geteuid() != 0 or _user() is None,
    reason="needs root and the carbotui user (python -m demo.stack setup)")


@pytest.fixture
def open_umask():
    """The most permissive umask: any mode that comes from it shows."""
    old = os.umask(0)
    yield
    os.umask(old)


# --- the drop ----------------------------------------------------------------------------

DROP = textwrap.dedent("""
    import json, os, socket, sys
    from carbotui.proxy import privileges
    out = {}
    try:
        privileges.drop(sys.argv[1], keep_bind=sys.argv[2] == "1")
    except privileges.PrivilegeError as exc:
        print(json.dumps({"error": str(exc)})); sys.exit(0)
    out["resuid"], out["resgid"], out["groups"] = os.getresuid(), os.getresgid(), os.getgroups()
    out["caps"] = privileges.capabilities()
    for name, regain in (("setuid", os.setuid), ("setgid", os.setgid), ("seteuid", os.seteuid)):
        try:
            regain(0)
            out[name] = "regained root"
        except PermissionError:
            out[name] = "refused"
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.62", 0))          # any port: allowed to everyone
        s.close(); s = socket.socket()
        s.bind(("127.0.0.62", 995))
        out["bind_995"] = "bound"
    except PermissionError:
        out["bind_995"] = "refused"
    with open("/proc/self/status") as f:
        out["no_new_privs"] = [l.split()[1] for l in f if l.startswith("NoNewPrivs")][0]
    print(json.dumps(out))
""")


def run_drop(user: str, keep_bind: bool) -> dict:
    import json
    p = subprocess.run([sys.executable, "-c", DROP, user, "1" if keep_bind else "0"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@needs_root_and_user
@pytest.mark.parametrize("keep_bind", [False, True])
def test_drop_leaves_no_way_back_to_root(keep_bind):
    pw = _user()
    out = run_drop(pw.pw_name, keep_bind)
    assert out["resuid"] == [pw.pw_uid] * 3 and out["resgid"] == [pw.pw_gid] * 3
    assert 0 not in out["groups"] and set(out["groups"]) <= {pw.pw_gid}
    assert (out["setuid"], out["setgid"], out["seteuid"]) == ("refused",) * 3
    kept = 1 << privileges.CAP_NET_BIND_SERVICE if keep_bind else 0
    caps = out["caps"]
    assert (caps["CapEff"], caps["CapPrm"], caps["CapInh"], caps["CapAmb"]) == (kept, kept, 0, 0)
    assert out["no_new_privs"] == "1"
    # the one capability kept is what binds a port below 1024; without it, no bind
    assert out["bind_995"] == ("bound" if keep_bind else "refused")


@needs_root_and_user
def test_drop_refuses_root_and_unknown_users():
    assert "is root" in run_drop("root", False)["error"]
    assert "no such user" in run_drop("no-such-user-carbotui", False)["error"]


def test_privileged_ports_follow_the_kernel_setting():
    start = privileges.unprivileged_port_start()
    assert privileges.privileged([start - 1, start, 10993]) == ([start - 1] if start > 1 else [])


# --- sockets: the mode exists from bind() on ---------------------------------------------

def _modes_at_creation(monkeypatch, module, serve, path: Path) -> tuple[int, int]:
    """(mode when asyncio.start_unix_server returns, i.e. before serve() could chmod, mode
    after serve())."""
    seen = []
    real = asyncio.start_unix_server

    async def spy(*args, **kwargs):
        server = await real(*args, **kwargs)
        seen.append(stat.S_IMODE(os.stat(path).st_mode))
        return server

    monkeypatch.setattr(module.asyncio, "start_unix_server", spy)

    async def main():
        server = await serve(SimpleNamespace(), path)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        server.close()
        return mode

    after = asyncio.run(main())
    return seen[0], after


def test_stats_socket_is_0660_whatever_the_umask(tmp_path, open_umask, monkeypatch):
    path = tmp_path / "proxy_00.sock"
    assert _modes_at_creation(monkeypatch, stats, lambda w, p: stats.serve(w, str(p)), path) \
        == (0o660, 0o660)
    assert stat.S_ISSOCK(os.stat(path).st_mode)


def test_control_socket_is_0600_from_bind_on(tmp_path, open_umask, monkeypatch):
    path = tmp_path / "proxy_00.ctl"
    assert _modes_at_creation(monkeypatch, control, control.serve, path) == (0o600, 0o600)


def test_unix_listener_restores_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        privileges.unix_listener(str(tmp_path / "s"), 0o600).close()
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(old)


# --- vhost key files (live._write_private) -----------------------------------------------

@pytest.mark.parametrize("name", ["demo.test", "mail.Demo.TEST", "xn--bcher-kva.example",
                                  "a-b.c0", "x" * 63 + ".test"])
def test_fqdn_accepted(name):
    assert live.is_fqdn(name)


@pytest.mark.parametrize("name", ["", "demo", "..", "../x.test", "a/b.test", "demo.test/",
                                  "demo.test.", ".demo.test", "a..b", "-a.test", "a-.test",
                                  "a_b.test", "d\u00e9mo.test", "x" * 64 + ".test",
                                  ("a" * 60 + ".") * 5 + "test", "demo.test\x00", "demo test.x"])
def test_fqdn_refused(name):
    assert not live.is_fqdn(name)


def test_write_private_gives_an_old_file_0600(tmp_path, open_umask):
    path = tmp_path / "demo.test.0.key"
    path.write_text("old")
    path.chmod(0o644)
    live._write_private(path, "KEY")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "KEY"
    fresh = tmp_path / "new.key"
    live._write_private(fresh, "KEY")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def _planted_symlink(tmp_path, target_name: str, link_name: str):
    """A file holding "untouched" and, at ``link_name``, a symlink to it."""
    target = tmp_path / target_name
    target.write_text("untouched")
    link = tmp_path / link_name
    link.symlink_to(target)
    return target, link


def test_write_private_follows_no_symlink(tmp_path):
    target, link = _planted_symlink(tmp_path, "elsewhere", "demo.test.0.key")
    with pytest.raises(OSError):
        live._write_private(link, "KEY")
    assert target.read_text() == "untouched"


def test_write_private_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "demo.test.0.key"
    os.mkfifo(fifo)
    with pytest.raises(OSError):
        live._write_private(fifo, "KEY")


def _services(tmp_path, loaded) -> SessionServices:
    class Tls:
        def load(self, settings, certs):
            loaded.update(certs)

    settings = SimpleNamespace(run_dir=tmp_path / "run", listen={}, web=WebSettings())
    return SessionServices(settings=settings, loop=None, router=SimpleNamespace(servers={}),
                           throttle=None, audit=None, tls=Tls())


def test_a_domain_name_from_ldap_cannot_place_a_file_outside_vhosts(tmp_path):
    loaded = {}
    cfg = live.LiveConfig(_services(tmp_path, loaded))
    evil = Domain(name="../../escaped", virtual_hostnames=("evil.test",),
                  certificate_pem="CERT", private_key_pem="KEY")
    good = Domain(name="demo.test", virtual_hostnames=("mail.demo.test",),
                  certificate_pem="CERT", private_key_pem="KEY")
    cfg._apply({}, [evil, good], "redirect")
    assert not list(tmp_path.rglob("escaped*"))
    assert sorted(p.name for p in (tmp_path / "run" / "vhosts").iterdir()) == \
        ["demo.test.0.crt", "demo.test.0.key"]
    assert set(loaded) == {"mail.demo.test"}           # the bad domain's cert is not used
    assert cfg.vhosts == {"evil.test": "../../escaped", "mail.demo.test": "demo.test"}
    assert stat.S_IMODE((tmp_path / "run" / "vhosts").stat().st_mode) & 0o077 == 0


# --- stack.write_private (root writing into var/run, which the service user may write) ------

def test_demo_write_private_refuses_a_planted_symlink_or_hard_link(tmp_path):
    target, link = _planted_symlink(tmp_path, "target", "supervisor-workers.conf")
    with pytest.raises(OSError):
        stack.write_private(link, "x", 0o644)
    link.unlink()
    os.link(target, link)
    with pytest.raises(stack.DemoError):
        stack.write_private(link, "x", 0o644)
    assert target.read_text() == "untouched"
    link.unlink()
    stack.write_private(link, "numprocs=2\n", 0o644)
    assert link.read_text() == "numprocs=2\n" and stat.S_IMODE(link.stat().st_mode) == 0o644
