"""A proxy worker with its periodic work switched off, for bench/instructions.py.

The LDAP refresh, the fleet heartbeat and the route cache's expiry run on timers; under
valgrind (50x slower) they would land in the count at random and make it drift. Nothing
else differs from `python -m carbotui.proxy`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import carbotui.services.nodes  # noqa: E402
import carbotui.services.routes  # noqa: E402
import carbotui.proxy.live  # noqa: E402
from carbotui.proxy.__main__ import main  # noqa: E402

carbotui.proxy.live.POLL_INTERVAL = 1e6
carbotui.services.nodes.PUBLISH_EVERY = 1e6
carbotui.services.routes.Router.LOCAL_TTL = 1e6

if __name__ == "__main__":
    sys.exit(main())
