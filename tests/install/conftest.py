"""The install test needs root and the demo stack (its LDAP, memcached and Dovecots), like
tests/stack: everything here is marked ``stack`` and fails at once, saying why, when the
stack is down (`make test` brings it up first)."""
from __future__ import annotations

from pathlib import Path

import pytest

# the stack's own checks, shared (fixtures imported into a conftest are its fixtures)
from tests.stack.conftest import proxy_up, stack_down  # noqa: F401


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.stack)
