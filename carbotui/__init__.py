"""carbotui: a Carbonio-style mail proxy node with a Textual dashboard."""
__version__ = "0.1.0"

# Modules compiled by mypyc (setup.py) run as Python when their .py is newer than the build.
from carbotui.core import compiled as _compiled  # noqa: E402

_compiled.guard()
