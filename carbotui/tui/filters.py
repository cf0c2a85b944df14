"""The filter box language shared by the Connections and Audit screens.

    user03            any field contains "user03"
    ip:203.0.113.5    one field (account:, ip:, proto:, worker:, server:, state:)
    proto:imap ip:203 several terms: all must match
Matching is a case-insensitive substring test, so "ip:203.0.113" is a prefix.
"""
from __future__ import annotations

from carbotui.backends.worker_sockets import matches as _matches

FIELD_ALIASES = {"ip": "client", "client": "client", "account": "account", "user": "account",
                 "proto": "protocol", "protocol": "protocol", "worker": "worker",
                 "server": "server", "state": "state", "error": "error"}


def parse(query: str) -> list[tuple[str | None, str]]:
    terms = []
    for word in query.lower().split():
        field, sep, value = word.partition(":")
        if sep and field in FIELD_ALIASES and value:
            terms.append((FIELD_ALIASES[field], value))
        else:
            terms.append((None, word))
    return terms


def matches(fields: dict[str, str], terms: list[tuple[str | None, str]]) -> bool:
    """All terms match ``fields``: the rule the workers apply to their sessions too
    (carbotui.backends.worker_sockets.matches, the one definition)."""
    return _matches(fields, terms)
