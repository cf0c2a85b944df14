"""Transcript helpers shared by the sans-IO mail machine tests (test_imap, test_pop3):
feed bytes, collect what the machine sends and the other events, and check that feeding
byte by byte gives the same transcript as feeding everything at once; and for the HTTP/1.1
parsers (test_http11, test_fuzz_parsers), events with adjacent Data joined."""
from __future__ import annotations

import codecs

from carbotui.protocols.events import BackendFailed, LoginOK, LoginRejected, Send
from carbotui.protocols.http11 import Data


def run(machine, *chunks: bytes) -> tuple[bytes, list]:
    """Feed the chunks; return (every byte sent, the other events in order)."""
    return split([event for chunk in chunks for event in machine.feed(chunk)])


def split(events: list) -> tuple[bytes, list]:
    sent = b"".join(e.data for e in events if isinstance(e, Send))
    return sent, [e for e in events if not isinstance(e, Send)]


def bytewise(make, data: bytes) -> tuple[bytes, list]:
    """Feed ``data`` to one fresh machine at once and to another one byte at a
    time; the transcripts must be identical. Returns the transcript."""
    whole = run(make(), data)
    trickled = run(make(), *(data[i:i + 1] for i in range(len(data))))
    assert trickled == whole
    return whole


FINAL = (LoginOK, LoginRejected, BackendFailed)


def login_transcript(machine, *chunks: bytes) -> tuple[bytes, list, bytes]:
    """Feed a backend login machine until its final event; return (bytes
    sent, events, bytes received after the final reply)."""
    events: list = []
    for i, chunk in enumerate(chunks):
        events += machine.feed(chunk)
        if any(isinstance(e, FINAL) for e in events):
            return *split(events), machine.leftover() + b"".join(chunks[i + 1:])
    return *split(events), b""


def login_bytewise(make, data: bytes) -> tuple[bytes, list, bytes]:
    """``bytewise`` for backend login machines, which refuse input after
    their final event."""
    whole = login_transcript(make(), data)
    trickled = login_transcript(make(), *(data[i:i + 1] for i in range(len(data))))
    assert trickled == whole
    return whole


def merged(events: list) -> list:
    """Events with adjacent Data joined, so transcripts don't depend on how
    the input was split."""
    out: list = []
    for ev in events:
        if isinstance(ev, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def script(text: str) -> list[tuple[bytes, bytes]]:
    """A transcript written as one multi-line script: each non-blank line is
    ``what is sent | what is expected back``, in Python byte-escape notation
    (``\\x00``, ``\\r\\n``); both sides are stripped of the spaces around the
    ``|``, and the sent side may be empty. Returns the (send, expect) pairs."""
    pairs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        send, sep, expect = line.partition("|")
        assert sep, f"script line without '|': {line!r}"
        pairs.append(tuple(codecs.escape_decode(side.encode("latin-1"))[0]
                           for side in (send.rstrip(), expect.strip())))
    return pairs
