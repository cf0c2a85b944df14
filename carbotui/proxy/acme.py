"""Port 80's answer to ACME HTTP-01 challenges, from ``[web] acme_webroot``.

``certbot certonly --webroot -w WEBROOT`` writes each token to
``WEBROOT/.well-known/acme-challenge/<token>`` and removes it after the
validation; the CA fetches it over plain HTTP on port 80, whatever the mail mode
(Carbonio's nginx serves the same directory in ``https`` and ``redirect`` mode).

What is served: a token name only (carbotui/protocols/acme.py), a regular file
directly in that directory, opened with no symlink followed at any step below
the webroot (O_NOFOLLOW on each component, by directory descriptor), at most
``MAX_FILE`` bytes. Everything else is a 404; a name that is not a token is a
400; a method other than GET/HEAD is a 405. The file is read in a thread
(``asyncio.to_thread``): the webroot may be a network share (see the README), and
a slow share must not stall the worker's other sessions.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
from pathlib import Path

from carbotui.protocols import acme, http11

log = logging.getLogger("carbotui.proxy.acme")

MAX_FILE = 4096        # a key authorization is token "." thumbprint: under 200 bytes
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC   # a FIFO never blocks


def read_challenge(webroot: Path, token: str) -> bytes | None:
    """The bytes of the token's file, or None when there is no such small regular file."""
    fds = []
    try:
        fds.append(os.open(webroot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        for part in (".well-known", "acme-challenge"):
            fds.append(os.open(part, _DIR, dir_fd=fds[-1]))
        fds.append(os.open(token, _FILE, dir_fd=fds[-1]))
        st = os.fstat(fds[-1])
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE:
            log.warning("acme-challenge: a token that is not a regular file of at most %d "
                        "bytes was asked for; not served", MAX_FILE)
            return None
        data = os.read(fds[-1], MAX_FILE + 1)
        return data if len(data) <= MAX_FILE else None
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            log.warning("acme-challenge: %s: %s", webroot, exc.strerror)
        return None
    finally:
        for fd in fds:
            os.close(fd)


def _answer(status: int, body: bytes, head_only: bool, extra=()) -> bytes:
    head = http11.serialize_response_head(status, None, [
        (b"Content-Type", b"text/plain"), (b"Content-Length", b"%d" % len(body)),
        (b"Cache-Control", b"no-store"), *extra])
    return head if head_only else head + body


async def respond(webroot: Path, method: bytes, target: bytes) -> bytes:
    """The whole response to a request for ``PREFIX...`` (acme.is_challenge)."""
    head_only = method == b"HEAD"
    if method not in (b"GET", b"HEAD"):
        return _answer(405, b"Only GET and HEAD are served here.\n", False,
                       [(b"Allow", b"GET, HEAD")])
    token = acme.challenge_token(target)
    if token is None:
        return _answer(400, b"Not an ACME challenge token.\n", head_only)
    data = await asyncio.to_thread(read_challenge, webroot, token) if token else None
    if data is None:
        return _answer(404, b"No such challenge.\n", head_only)
    return _answer(200, data, head_only)
