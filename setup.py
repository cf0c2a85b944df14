"""The build's one addition to pyproject.toml: the per-session modules compiled by mypyc.

The pure, annotated, sans-IO modules that every IMAP/POP3 session or web request runs
(MYPYC_MODULES) are compiled to C extensions by mypyc when the build has it (pyproject's
build requirements and the [test] extra name it), as black and mypy ship themselves.
callgrind, one bench worker (bench/instructions.py, bench/instructions_https.py), main of
16:00 UTC: IMAP session 491k -> 436k instructions, POP3 376k -> 350k, HTTPS keep-alive
GET /health 513k -> 424k per request; the compile takes 25-110 s on 2 cores. The .py ship too, and
are what runs where there is no compiler: a build without mypyc, with CARBOTUI_PURE=1,
or whose C compile fails, installs pure Python (a warning says so). carbotui/__init__.py
ignores compiled modules older than their source (a stale .so never shadows an edit).
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# On the per-session path and compiled as they are (mypyc.ini: how they are checked), and
# the asyncio glue every mail session runs (mail, relay: its protocols stay asyncio.Protocol
# subclasses), and the web request path (httpconn, web, logs; h2conn's sessions subclass
# web.WebSession in Python). Not compiled: webheaders (HeaderSet subclasses tuple: mypyc
# refuses it), settings and the rest of the I/O (services, upstreams, h2conn): they use
# dynamic code.
MYPYC_MODULES = [
    "carbotui/core/audit.py",
    "carbotui/core/lines.py",
    "carbotui/core/logformat.py",
    "carbotui/protocols/events.py",
    "carbotui/protocols/http11.py",
    "carbotui/protocols/imap.py",
    "carbotui/protocols/imapstream.py",
    "carbotui/protocols/pop3.py",
    "carbotui/protocols/preauth.py",
    "carbotui/protocols/sasl.py",
    "carbotui/protocols/webrules.py",
    "carbotui/proxy/mail.py",
    "carbotui/proxy/relay.py",
    "carbotui/proxy/httpconn.py",
    "carbotui/proxy/logs.py",
    "carbotui/proxy/tlsbio.py",
    "carbotui/proxy/web.py",
]


def warn(text: str) -> None:
    print(f"carbotui setup.py: {text}; carbotui is installed as pure Python", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """A failed C compile (no compiler, no Python headers) leaves the pure modules."""

    def run(self):
        try:
            super().run()
        except Exception as exc:        # setuptools' CompileError, LinkError, PlatformError
            warn(f"compiling the mypyc modules failed ({exc})")
            # none of them, not some: a module's .so needs the shared library beside it
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.remove(path)
            return
        if self.inplace:
            # all of them newer than every source (carbotui/core/compiled.py's test), also
            # those whose own C did not change and were not relinked
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.utime(path)


def ext_modules() -> list:
    if os.environ.get("CARBOTUI_PURE") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        warn("mypyc is not installed")
        return []
    here = os.path.dirname(os.path.abspath(__file__))
    return mypycify(["--config-file", os.path.join(here, "mypyc.ini"), *MYPYC_MODULES],
                    opt_level="3")


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
