"""`carbotui blocks` without a stack: usage, validation, output, exit status.
memcached is replaced by an in-memory BlockStore, or pointed at a closed port."""
from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest

from carbotui.cli import main as cli

from carbotui.core import settings as config

from carbotui.admin import node as fleet
from carbotui.core.settings import Endpoint
from carbotui.services.throttle import Block

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "carbotui.toml")


class MemoryStore(fleet.BlockStore):
    """BlockStore with the memcached calls replaced by a dict (validation is the real one)."""
    blocks: dict[str, Block] = {}

    def _run(self, method, *args, **kwargs):
        if method == "blocks":
            return sorted(self.blocks.values(), key=lambda b: (b.until, b.ip))
        if method == "block":
            ip, seconds, reason = args
            self.blocks[ip] = Block(ip, reason, 1795815000.0, 1795815000.0 + seconds,
                                    kwargs.get("by", ""))
            return self.blocks[ip]
        if method == "unblock":
            return self.blocks.pop(args[0], None) is not None
        raise AssertionError(method)


@pytest.fixture
def memory(monkeypatch):
    MemoryStore.blocks = {}
    monkeypatch.setattr(fleet, "BlockStore", MemoryStore)
    return MemoryStore.blocks


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["--config", CONFIG, "blocks", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args", [["frob"], ["add", "192.0.2.1"], ["add"], ["remove"],
                                  ["remove", "192.0.2.1", "192.0.2.2"], ["--yaml"]])
def test_usage_errors_exit_2(capsys, memory, args):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and "usage: carbotui blocks" in err


def test_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "carbotui blocks remove <ip>" in out


@pytest.mark.parametrize("ip,seconds,message", [
    ("300.1.2.3", "60", "'300.1.2.3' is not an IPv4 or IPv6 address"),
    ("192.0.2.1", "0", "1 second to 30 days"),
    ("192.0.2.1", "2592001", "1 second to 30 days"),
    ("192.0.2.1", "31d", "1 second to 30 days"),
    ("192.0.2.1", "-5", "is not a duration"),
    ("192.0.2.1", "soon", "is not a duration"),
    ("127.0.0.1", "60", "127.0.0.1 is in throttle.whitelist"),
])
def test_add_refuses_bad_input_with_status_1(capsys, memory, ip, seconds, message):
    code, out, err = run(capsys, "add", ip, seconds)
    assert code == 1 and err.startswith("ERROR: ") and message in err
    assert memory == {}


def test_add_list_json_remove_round_trip(capsys, memory):
    assert run(capsys) == (0, "", "no IP is blocked\n")
    code, out, err = run(capsys, "add", "2001:DB8::7", "2h", "spraying", "user03")
    assert code == 0 and out == ""
    assert err.startswith("2001:db8::7 blocked for 2h00m on every node (until ")
    assert memory["2001:db8::7"].reason == "spraying user03"
    assert memory["2001:db8::7"].by.startswith("cli:")
    run(capsys, "add", "192.0.2.1", "60")
    assert memory["192.0.2.1"].reason == "blocked from the command line"
    code, out, _ = run(capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["IP", "UNTIL", "LEFT", "BY", "REASON"]
    assert [line.split()[0] for line in lines[1:]] == ["192.0.2.1", "2001:db8::7"]
    code, out, _ = run(capsys, "--json")
    assert code == 0
    assert [b["ip"] for b in json.loads(out)] == ["192.0.2.1", "2001:db8::7"]
    assert run(capsys, "remove", "2001:db8::7") == (0, "", "block on 2001:db8::7 lifted\n")
    code, _, err = run(capsys, "remove", "2001:db8::7")
    assert code == 1 and "2001:db8::7 is not blocked" in err
    code, _, err = run(capsys, "remove", "not-an-ip")
    assert code == 1 and "is not an IPv4 or IPv6 address" in err


def test_memcached_down_is_an_error_not_an_empty_list(capsys, monkeypatch):
    with socket.socket() as s:                   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = dataclasses.replace(config.load(CONFIG),
                                   memcached_servers=(Endpoint("127.0.0.1", port),))
    monkeypatch.setattr(config, "load", lambda path: settings)
    for args in ([], ["add", "192.0.2.1", "60"], ["remove", "192.0.2.1"]):
        code, out, err = run(capsys, *args)
        assert code == 1 and out == ""
        assert f"memcached (127.0.0.1:{port}) does not answer" in err, args


def test_missing_settings_file(capsys):
    code = cli.main(["--config", "/nonexistent/carbotui.toml", "blocks"])
    assert code == 1 and "ERROR:" in capsys.readouterr().err
