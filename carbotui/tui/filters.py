"""The filter box language shared by the Connections and Audit screens.

    user03            any field contains "user03"
    ip:203.0.113.5    one field (account:, ip:, proto:, worker:, server:, state:)
    proto:imap ip:203 several terms: all must match
Matching is a case-insensitive substring test, so "ip:203.0.113" is a prefix.
"""
from __future__ import annotations

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
    for field, value in terms:
        if field is None:
            if not any(value in str(v).lower() for v in fields.values()):
                return False
        elif value not in str(fields.get(field, "")).lower():
            return False
    return True
