"""Which supervised processes the dashboard counts as proxy workers: the demo's group
``proxy`` and the production supervisor file's ``carbotui:proxy_NN`` (whose group also holds
auditwatch), and which supervisord it asks ([node] supervisor_socket)."""
from pathlib import Path

import pytest

from carbotui.admin.node import Process, is_worker_process
from carbotui.core import settings


@pytest.mark.parametrize("group, short, worker", [
    ("proxy", "proxy_00", True),                  # the demo
    ("carbotui", "proxy_00", True),               # etc/production/supervisor-carbotui.conf
    ("carbotui", "proxy_17", True),
    ("carbotui", "carbotui-auditwatch", False),
    ("carbotui-metrics", "carbotui-metrics", False),
    ("auditwatch", "auditwatch", False),
    ("carbotui", "proxy_", False),
    ("carbotui", "proxy_00x", False),
    ("memcached", "memcached", False),
])
def test_a_worker_is_the_demo_group_or_a_proxy_nn_process(group, short, worker):
    assert is_worker_process(group, short) is worker
    p = Process(name=f"{group}:{short}", short=short, group=group, state="RUNNING", pid=1,
                started=0.0)
    assert p.is_worker is worker


def _load(tmp_path: Path, node: str):
    (tmp_path / "n.toml").write_text(f'''
[node]
name = "proxy.demo.test"
{node}
[tls]
certificate = "c.crt"
private_key = "c.key"
[ldap]
url = "ldap://127.0.0.1:389"
base = "o=x"
''')
    return settings.load(tmp_path / "n.toml")


def test_the_supervisor_socket_defaults_to_run_dir_and_can_be_named(tmp_path):
    assert _load(tmp_path, 'run_dir = "/run/carbotui"').supervisor_socket == \
        Path("/run/carbotui/supervisor.sock")
    assert _load(tmp_path, 'supervisor_socket = "/var/run/supervisor.sock"').supervisor_socket \
        == Path("/var/run/supervisor.sock").resolve()    # /var/run is a link to /run
    assert _load(tmp_path, 'supervisor_socket = "s.sock"').supervisor_socket == tmp_path / "s.sock"
