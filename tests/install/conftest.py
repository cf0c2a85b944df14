"""The install test needs root and the part of the demo stack an installed node uses (slapd,
memcached, both Dovecots, the demo CA's certificates), not the demo's own proxy workers.
Everything here is marked ``stack`` like tests/stack, and fails at once, before anything is
installed, saying what is missing (`make test` brings the stack up first)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.stack.conftest import CA, REPO, port_open

# what the installed node talks to: (host, port) by name
SERVICES = {"slapd": ("127.0.0.1", 10389), "memcached": ("127.0.0.1", 12211),
            "mbox1": ("127.0.0.1", 7143), "mbox2": ("127.0.0.2", 7143)}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def services_down() -> str:
    missing = [name for name, (host, port) in SERVICES.items() if not port_open(port, host)]
    missing += [str(p) for p in (CA, REPO / "var/certs/default.key",
                                 REPO / "var/ldap/proxy.secret") if not p.exists()]
    return ", ".join(missing)


@pytest.fixture(scope="module")
def stack_services(services_down) -> None:
    if services_down:
        pytest.fail(f"the demo stack is not running ({services_down} not there): run "
                    "`make up` (make test does it for you)", pytrace=False)
