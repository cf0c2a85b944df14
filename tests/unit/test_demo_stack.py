"""demo.stack's reach into a private checkout (issue #14 item 6), without the stack.

`make up` from a checkout under a 0700 folder: setup gives the users that must reach var/
(carbotui, dovecot, carbotui-mail) search permission with a POSIX ACL entry on each private
folder on the way, and nobody else. The pure parts (which folders, which entries) are tested
on made-up inputs; grant_search itself on real folders under /tmp (ext4 here, ACLs on) and on
a ramfs (no ACLs at all), as root, with the real carbotui user (`demo setup` creates it).
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from demo import stack


def modes(table: dict[str, int]):
    """A mode_of for private_folders: 0o755 unless `table` says otherwise."""
    return lambda d: stat.S_IFDIR | table.get(str(d), 0o755)


# --- which folders -------------------------------------------------------------------------

def test_private_folders_none_when_all_searchable():
    assert stack.private_folders(Path("/srv/carbotui"), modes({})) == []


def test_private_folders_the_private_home_only():
    assert stack.private_folders(Path("/root/src/carbotui"), modes({"/root": 0o700})) == [Path("/root")]


def test_private_folders_top_down_and_the_path_itself():
    table = {"/home/ann": 0o750, "/home/ann/co": 0o700, "/home/ann/co/x": 0o711}
    assert stack.private_folders(Path("/home/ann/co/x"), modes(table)) == [
        Path("/home/ann"), Path("/home/ann/co")]
    table["/home/ann/co/x"] = 0o770  # group-searchable is not enough: others are not in it
    assert stack.private_folders(Path("/home/ann/co/x"), modes(table))[-1] == Path("/home/ann/co/x")


# --- which entries -------------------------------------------------------------------------

USERS = ("carbotui", "dovecot", "carbotui-mail")
PLAIN = "user::rwx\ngroup::---\nother::---\n\n"


def test_acl_grants_everyone_missing_on_a_plain_folder():
    assert stack.acl_grants(PLAIN, USERS) == {
        "carbotui": "u:carbotui:x", "dovecot": "u:dovecot:x", "carbotui-mail": "u:carbotui-mail:x"}


def test_acl_grants_nothing_when_granted():
    out = ("user::rwx\nuser:dovecot:--x\nuser:carbotui:--x\nuser:carbotui-mail:--x\n"
           "group::---\nmask::--x\nother::---\n")
    assert stack.acl_grants(out, USERS) == {}


def test_acl_grants_keeps_what_an_entry_had():
    out = "user::rwx\nuser:carbotui:r--\ngroup::---\nmask::r-x\nother::---\n"
    assert stack.acl_grants(out, ("carbotui",)) == {"carbotui": "u:carbotui:rx"}


def test_acl_grants_an_entry_the_mask_cancels_is_no_grant():
    """After `chmod g-x`, getfacl shows 'user:carbotui:--x  #effective:---'."""
    out = "user::rwx\nuser:carbotui:--x\t\t\t#effective:---\ngroup::---\nmask::---\nother::---\n"
    assert stack.acl_grants(out, ("carbotui",)) == {"carbotui": "u:carbotui:x"}


def test_acl_grants_reads_past_a_header_and_other_users():
    out = ("# file: root\n# owner: root\n# group: root\nuser::rwx\nuser:ann:rwx\n"
           "user:carbotui-mailer:--x\ngroup::r-x\nmask::rwx\nother::---\n")
    assert stack.acl_grants(out, ("carbotui",)) == {"carbotui": "u:carbotui:x"}


# --- real folders, real users --------------------------------------------------------------

def _user_exists(name: str) -> bool:
    return subprocess.run(["id", "-u", name], capture_output=True).returncode == 0


needs_root_and_users = pytest.mark.skipif(
    os.geteuid() != 0 or not all(map(_user_exists, (*USERS, "dovenull"))),
    reason="needs root and the demo's users (make up)")

def _can(user: str, *test: str) -> bool:
    return subprocess.run(["runuser", "-u", user, "--", "test", *test]).returncode == 0


@pytest.fixture
def private_checkout():
    """/tmp/carbotui-acl-*/x: a checkout in a 0700 folder (not pytest's tmp_path, which is
    already under the private /tmp/pytest-of-root: the grant would land there)."""
    base = Path(tempfile.mkdtemp(prefix="carbotui-acl-"))  # 0700
    (base / "x" / "var").mkdir(parents=True)
    (base / "x" / "var" / "f").write_text("demo\n")
    yield base
    shutil.rmtree(base)


@needs_root_and_users
def test_grant_search_lets_those_users_through_and_nobody_else(private_checkout, capsys):
    base, var = private_checkout, private_checkout / "x" / "var"
    assert not _can(stack.SERVICE_USER, "-r", str(var / "f"))  # what `make up` used to refuse
    stack.grant_search(base / "x", USERS, "to test")
    assert "search permission (ACL) for carbotui, dovecot, carbotui-mail" in capsys.readouterr().out
    for user in USERS:
        assert _can(user, "-r", str(var / "f")), user
    assert not _can("nobody", "-r", str(var / "f"))
    assert not _can("dovenull", "-x", str(base))
    assert stat.S_IMODE(base.stat().st_mode) & 0o007 == 0  # not searchable by others
    assert subprocess.run(["runuser", "-u", stack.SERVICE_USER, "--", "ls", str(base)],
                          capture_output=True).returncode != 0  # search, not list


@needs_root_and_users
def test_grant_search_twice_changes_nothing(private_checkout, capsys):
    stack.grant_search(private_checkout / "x", USERS, "to test")
    acl = subprocess.run(["getfacl", "-c", str(private_checkout)], capture_output=True,
                         text=True, check=True).stdout
    capsys.readouterr()
    stack.grant_search(private_checkout / "x", USERS, "to test")
    assert capsys.readouterr().out == ""
    assert subprocess.run(["getfacl", "-c", str(private_checkout)], capture_output=True,
                          text=True, check=True).stdout == acl
    assert acl.count("user:carbotui:--x") == 1


@needs_root_and_users
def test_grant_search_on_a_searchable_path_touches_nothing(capsys):
    stack.grant_search(Path("/usr/share/doc"), USERS, "to test")  # 0755 all the way
    assert capsys.readouterr().out == ""
    assert "user:carbotui" not in subprocess.run(
        ["getfacl", "-c", "/usr/share/doc"], capture_output=True, text=True, check=True).stdout


def test_grant_search_unknown_user_says_what_to_run(private_checkout):
    with pytest.raises(stack.DemoError, match="no-such-demo-user is missing: run scripts/install-deps.sh"):
        stack.grant_search(private_checkout / "x", ("no-such-demo-user",), "to test")


@needs_root_and_users
def test_grant_search_without_acls_says_what_to_do(private_checkout):
    """ramfs keeps no extended attributes, so no ACLs: a clear message, no chmod behind the
    user's back."""
    mnt = private_checkout / "x" / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "-o", "mode=0700", "ramfs", str(mnt)], check=True)
    try:
        (mnt / "co").mkdir()
        with pytest.raises(stack.DemoError) as exc:
            stack.grant_search(mnt / "co", ("carbotui",), "to run it")
        msg = str(exc.value)
        assert f"{mnt} is not searchable by other users" in msg
        assert "no POSIX ACLs on this filesystem?" in msg and "They need it to run it" in msg
        assert f"`chmod o+x {mnt}`" in msg and f"move {mnt / 'co'} under" in msg
        assert stat.S_IMODE(mnt.stat().st_mode) == 0o700
    finally:
        subprocess.run(["umount", str(mnt)], check=True)

