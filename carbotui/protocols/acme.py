"""ACME HTTP-01 challenge requests (RFC 8555 §8.3), as pure functions (no I/O).

A CA fetches ``http://<name>/.well-known/acme-challenge/<token>`` on port 80; the
token is base64url (§8.1: the characters ``[A-Za-z0-9_-]``, no padding), so a
request path that holds anything else (``/``, ``.``, ``%``, NUL, a space, more than
``MAX_TOKEN`` characters) names no challenge and is refused before any file is
looked at. The query is ignored; only origin-form targets are challenges.
"""
from __future__ import annotations

import re

PREFIX = b"/.well-known/acme-challenge/"
MAX_TOKEN = 128        # Let's Encrypt's tokens are 43 characters (32 random bytes)
_TOKEN = re.compile(rb"[A-Za-z0-9_-]{1,%d}" % MAX_TOKEN)


def is_challenge(target: bytes) -> bool:
    """A request for the challenge directory (the port-80 handler answers it itself)."""
    return target.startswith(PREFIX)


def challenge_token(target: bytes) -> str | None:
    """The token a challenge request names; ``""`` for the bare directory (404);
    None when what follows the prefix is not a token (400)."""
    path = target.partition(b"?")[0]
    token = path[len(PREFIX):]
    if not token:
        return ""
    return token.decode("ascii") if _TOKEN.fullmatch(token) else None
