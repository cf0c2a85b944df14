"""A proxy worker with its periodic work switched off, for bench/instructions.py.

The LDAP refresh, the fleet heartbeat and the route cache's expiry run on timers; under
valgrind (50x slower) they would land in the count at random and make it drift. Nothing
else differs from `python -m workers`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import carbotui.nodes  # noqa: E402
import carbotui.routes  # noqa: E402
import workers.live  # noqa: E402
from workers.__main__ import main  # noqa: E402

workers.live.POLL_INTERVAL = 1e6
carbotui.nodes.PUBLISH_EVERY = 1e6
carbotui.routes.Router.LOCAL_TTL = 1e6

if __name__ == "__main__":
    sys.exit(main())
