"""The build's one addition to pyproject.toml: the per-session modules compiled by mypyc.

The pure, annotated, sans-IO modules that every IMAP/POP3 session or web request runs
(MYPYC_MODULES) are compiled to C extensions by mypyc when the build has it (pyproject's
build requirements and the [test] extra name it), as black and mypy ship themselves.
callgrind, one bench worker (bench/instructions.py, bench/instructions_https.py): see the
README's Performance section for the figures; the compile takes about 2 minutes on 2 cores. The .py ship too, and
are what runs where there is no compiler: a build without mypyc, with CARBOTUI_PURE=1,
or whose C compile fails, installs pure Python (a warning says so). carbotui/__init__.py
ignores compiled modules older than their source (a stale .so never shadows an edit).
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Everything a mail session or a web request runs per connection: the sans-IO machines
# (core, protocols), the asyncio glue (proxy: mail, relay, tlsbio, httpconn, web, logs,
# listeners, ipcount; their protocols are plain classes, asyncio calls them by duck typing),
# the worker's SessionServices they all read (context) and the login path's services
# (routes, throttle). mypyc.ini: how they are checked.
# Classes that tests or h2conn subclass in Python allow it (mypyc_attr). Not compiled:
# settings (dynamic code), h2conn and the rest of the I/O. webheaders is: its set of the
# request's host and the lines it adds are picked per HTTPS response. stats is: the sessions count into its Stats and
# BackendCounters natively; uvtrack is uvloop's transport map (no Python per connection);
# upstreams: the balancing (pick) runs per request.
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
    "carbotui/protocols/webheaders.py",
    "carbotui/proxy/mail.py",
    "carbotui/proxy/relay.py",
    "carbotui/proxy/httpconn.py",
    "carbotui/proxy/logs.py",
    "carbotui/proxy/tlsbio.py",
    "carbotui/proxy/web.py",
    "carbotui/proxy/listeners.py",
    "carbotui/proxy/ipcount.py",
    "carbotui/proxy/stats.py",
    "carbotui/proxy/context.py",
    "carbotui/services/routes.py",
    "carbotui/services/throttle.py",
    "carbotui/proxy/uvtrack.py",
    "carbotui/proxy/upstreams.py",
    "carbotui/proxy/timers.py",
]

GROUP = "carbotui_compiled"       # the shared library: carbotui_compiled__mypyc.<suffix>


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
    # One name for the shared library whatever the list holds (mypyc names it by a hash of
    # the list otherwise): an editable install's finder maps that name once, and a changed
    # list leaves no old library beside the new one.
    extensions = mypycify(["--config-file", os.path.join(here, "mypyc.ini"), *MYPYC_MODULES],
                          opt_level="3", group_name=GROUP)
    mend_bytes_slice("build")
    return extensions


# mypyc 2.4's CPyBytes_GetSlice (lib-rt/bytes_ops.c) clamps start and end to the object but
# not end to start: b[2:1], or b[1:-1] of one byte, passes a negative size and raises
# SystemError where Python gives b"". Every compiled bytes/bytearray slice goes through it,
# and parsers slice at offsets that hostile input chooses: the generated C calls this
# corrected version instead (tests/unit/test_compiled.py compiles a module to check).
_SLICE_FIX = """
/* carbotui setup.py: mypyc's CPyBytes_GetSlice with the end clamped to the start */
static PyObject *carbotui_bytes_slice(PyObject *obj, CPyTagged start, CPyTagged end) {
    if (CPyTagged_CheckShort(start) && CPyTagged_CheckShort(end)) {
        Py_ssize_t len = Py_SIZE(obj);
        Py_ssize_t s = CPyTagged_ShortAsSsize_t(start), e = CPyTagged_ShortAsSsize_t(end);
        if (s < 0) s += len;
        if (e < 0) e += len;
        if (s < 0) s = 0;
        if (s > len) s = len;
        if (e < s) {
            return PyBytes_Check(obj) ? PyBytes_FromStringAndSize(NULL, 0)
                                      : PyByteArray_FromStringAndSize(NULL, 0);
        }
    }
    return CPyBytes_GetSlice(obj, start, end);
}
#define CPyBytes_GetSlice carbotui_bytes_slice
"""


def mend_bytes_slice(build_dir: str) -> int:
    """Make the generated C in ``build_dir`` call carbotui_bytes_slice. -> files changed."""
    import glob
    changed = 0
    for path in glob.glob(os.path.join(build_dir, "__native*.c")):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if "carbotui_bytes_slice" in text:
            continue
        lines = text.split("\n")
        # after the last #include: the runtime (which defines the original) comes before
        last = max(i for i, line in enumerate(lines) if line.startswith("#include"))
        lines.insert(last + 1, _SLICE_FIX)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        changed += 1
    return changed


if __name__ == "__main__":
    setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
