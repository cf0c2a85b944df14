"""Zimbra/Carbonio auth-token values (the ZM_AUTH_TOKEN cookie).

A token is ``<X>_<Y>_<hex>``: X is the key version, Y the HMAC of the data in
real Zimbra (the demo uses any stable hex string and checks nothing), and
``<hex>`` hex-encodes ``field=len:value;`` pairs, where ``len`` is the byte
length of ``value``::

    id=36:<zimbraId>;exp=13:<ms since epoch>;type=6:zimbra;

(reference/carbonio-proxy.md §6: the proxy hex-decodes the part after the
second ``_`` and routes on ``id``.)

`decode_token` runs on every web request that carries the cookie and on
whatever a client sends, so it is strict, bounded and never raises: anything
malformed is None. It proves nothing about who sent the token (no HMAC check);
it only says where the mailbox lives.
"""
from __future__ import annotations

import re

MAX_TOKEN_CHARS = 4096              # real tokens are a few hundred characters
_PREFIX = re.compile(r"[0-9]+_[0-9A-Fa-f]+_")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_FIELD_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9_]*")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MAX_LEN_DIGITS = 4


def encode_token(zimbra_id: str, exp_ms: int, key: str = "0", token_type: str = "zimbra") -> str:
    """``0_<key>_<hex>`` for an account id and an expiry (ms since epoch)."""
    if not re.fullmatch(r"[0-9A-Fa-f]+", key):
        raise ValueError("the token key must be a hex string")
    data = b"".join(
        b"%s=%d:%s;" % (name, len(value), value)
        for name, value in ((b"id", zimbra_id.encode()), (b"exp", b"%d" % exp_ms),
                            (b"type", token_type.encode())))
    return f"0_{key}_{data.hex()}"


def decode_token(value: str | bytes) -> dict[str, str] | None:
    """The fields of a token, or None when it is not exactly well-formed."""
    try:
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("ascii")
        if not isinstance(value, str) or len(value) > MAX_TOKEN_CHARS:
            return None
    except UnicodeDecodeError:
        return None
    prefix = _PREFIX.match(value)
    if prefix is None:
        return None
    hex_part = value[prefix.end():]
    if not _HEX.fullmatch(hex_part):
        return None
    return _parse_fields(bytes.fromhex(hex_part))


def _parse_fields(data: bytes) -> dict[str, str] | None:
    """``name=len:value;`` repeated to the end of data, nothing else."""
    fields: dict[str, str] = {}
    pos, end = 0, len(data)
    while pos < end:
        eq = data.find(b"=", pos)
        colon = data.find(b":", eq + 1) if eq > 0 else -1
        if colon < 0:
            return None
        name, digits = data[pos:eq], data[eq + 1:colon]
        if (not _FIELD_NAME.fullmatch(name) or not digits.isdigit()
                or len(digits) > _MAX_LEN_DIGITS):
            return None
        start = colon + 1
        stop = start + int(digits)
        if stop >= end or data[stop:stop + 1] != b";":
            return None
        key = name.decode("ascii")
        if key in fields:            # a repeated field would make routing ambiguous
            return None
        try:
            fields[key] = data[start:stop].decode("utf-8")
        except UnicodeDecodeError:
            return None
        pos = stop + 1
    return fields or None


def zimbra_id_from_token(value: str | bytes) -> str | None:
    """The account id to route on: a lower-case UUID, or None. Safe to put in
    a cache key or a directory filter as is."""
    fields = decode_token(value)
    if not fields:
        return None
    zimbra_id = fields.get("id", "")
    return zimbra_id if _UUID.fullmatch(zimbra_id) else None
