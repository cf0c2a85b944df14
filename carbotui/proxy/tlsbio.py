"""Server-side TLS for the implicit-TLS mail listeners (IMAPS, POP3S), lighter than uvloop's.

uvloop's SSLProtocol mallocs a 256 KiB read buffer per connection and the socket reads
into it, so every idle session keeps the touched pages of its own buffer (and a 256 KiB
mapping); it also holds an application-side transport object and a few deques. Here ONE
object is both the protocol of the plain TCP transport (a buffered one: uvloop takes any
object with ``get_buffer`` for one; asyncio's own loop, which asks isinstance, calls
``data_received``) and the transport the application protocol sees, and the TCP transport reads into one
buffer shared by the whole process: the loop is single-threaded, and what it reads is
copied into the connection's incoming MemoryBIO before anything else runs. Decrypted
records are gathered in a second shared buffer and handed over as one bytes object.

    accept -> (TCP) connection_made -> handshake (deadline) -> app.connection_made(self)
           -> data_received / write ... -> close(): close_notify, then TCP close

Semantics are those of asyncio's TLS transports as the mail sessions use them:
``connection_made`` only after a completed handshake (a failed or late one just closes the
TCP connection; the application never hears of it), ``eof_received`` on the peer's
close_notify or TCP FIN (a false answer closes), ``pause_reading`` holds back the records
not yet delivered, the TCP transport's write flow control is forwarded to the
application, and ``get_extra_info`` answers ``ssl_object``, ``sslcontext``, ``peercert``,
``cipher``, ``compression`` and, from the TCP transport, ``peername``, ``sockname``,
``socket``. Renegotiation does not exist in TLS 1.3 and is refused by OpenSSL's defaults
for 1.2 servers in Python (no SSL_OP_ALLOW_CLIENT_RENEGOTIATION); a KeyUpdate is answered
by OpenSSL through the outgoing BIO, flushed after every read.

Measured (same tree, the listeners' hook on and off): an idle IMAPS session through the
proxy, 2,000 on 2 workers, 30.1 -> 24.0 KB RSS (bench/tls_idle.py proxy); a bare server,
23.5 (uvloop) -> 16.6 KB per idle connection, 94.5 -> 36.4 KB after a 1 MB download
(bench/tls_idle.py --burst 1024); per session 3,151,965 -> 3,142,778 instructions (IMAPS)
and 3,059,926 -> 3,058,268 (POP3S), bench/instructions_tls.py: CPU-neutral, OpenSSL's
handshake is ~70 % of it. (The figures in commit f167782's message compared with an older
tree, before other changes to the mail path.)

Compiled by mypyc (setup.py MYPYC_MODULES) as a native class, hence no asyncio base
classes (a native class cannot have them; nothing checks isinstance on this one). It keeps
OpenSSL's C object (_ssl._SSLSocket) without ssl.SSLObject's Python wrapper, reads no
record after the handshake unless one came with the client's Finished, and asks
SSL_pending only after a full-size record. IMAPS per session (bench/instructions_tls.py,
200 sessions, from main d89284c): 3,087,390 -> 3,060,223 (the C object, no read after the
handshake) -> 3,025,610 (mypyc); idle IMAPS session 24.0 KB either way (tls_idle.py proxy).
OpenSSL's own work per handshake is ~100k instructions less than nginx's in the bench
(same TLS 1.3, TLS_AES_256_GCM_SHA384, X25519, ecdsa_secp256r1_sha256 and certificate;
nginx's mail module, ``ssl_session_tickets off`` and its default ``ssl_session_cache
none``, still sends two stateful TLS 1.3 tickets it never stores; carbotui none).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, Final

from carbotui.proxy.timers import for_loop

log: Final = logging.getLogger("carbotui.proxy.tlsbio")

RECORD: Final = 16384          # the largest TLS plaintext record (RFC 8446 5.1)
READ_SIZE: Final = 256 * 1024  # one socket read (as uvloop's SSL_READ_MAX_SIZE)
# Written into the incoming BIO at most this much at a time: the BIO keeps the largest
# buffer it ever held, so big uploads leave ~20 KiB in it, not the whole read.
FEED: Final = 4096

# Shared by every connection of the process (see the module's docstring). The plaintext
# buffer holds what one socket read decrypts to (less than what was read) plus a record.
_cipher: Final = bytearray(READ_SIZE)
_cipher_view: Final = memoryview(_cipher)
_plain: Final = bytearray(READ_SIZE + 2 * RECORD)
_plain_view: Final = memoryview(_plain)
_PLAIN_ROOM: Final = READ_SIZE + RECORD         # len(_plain) - RECORD

# _REFUSED: closing before the handshake completed (the application never knew of it)
_HANDSHAKE: Final = 0
_OPEN: Final = 1
_CLOSING: Final = 2
_CLOSED: Final = 3
_REFUSED: Final = 4


class TlsServer:
    """One TLS connection: BufferedProtocol of the TCP transport, Transport of ``app``."""

    __slots__ = ("_app", "_tcp", "_sslobj", "_in", "_out", "_state", "_timer",
                 "_app_paused", "_write_paused", "_delivering", "_settled")

    def __init__(self, app: Any, context: ssl.SSLContext,
                 handshake_timeout: float = 10.0):
        self._app: Any = app
        self._tcp: Any = None
        self._in: Any = ssl.MemoryBIO()
        self._out: Any = ssl.MemoryBIO()
        # The C object itself (_ssl._SSLSocket), not ssl.SSLObject's Python wrapper around
        # it: no Python frames per call and ~160 bytes less per session (the wrapper, its
        # __dict__ and the owner weakref). Without an owner, the SNI callback gets this
        # object (it has the ``context`` setter the callbacks use); get_extra_info
        # ("ssl_object") wraps it in an ssl.SSLObject when asked.
        wrap = context._wrap_bio          # type: ignore[attr-defined]
        self._sslobj: Any = wrap(self._in, self._out, True, None, owner=None, session=None)
        self._state: int = _HANDSHAKE
        self._timer: Any = handshake_timeout
        self._app_paused = False
        self._write_paused = False
        self._delivering = False
        self._settled: Any = None         # handshake_done()'s future, made when asked

    # -- the TCP side (protocol) ------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self._tcp = transport
        # the handshake deadline on the loop's shared timers (timers.py)
        self._timer = for_loop(asyncio.get_running_loop()).call_later(self._timer,
                                                                     self._too_slow)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _cipher_view

    def buffer_updated(self, nbytes: int) -> None:
        feed = self._in.write
        if nbytes <= FEED or self._state != _OPEN or self._app_paused:
            feed(_cipher_view[:nbytes])
            if self._state == _HANDSHAKE:
                self._handshake()
            elif self._state == _OPEN and not self._app_paused:
                self._deliver()
            return
        # A big read: fed in pieces, each drained into the plaintext buffer, so the BIO
        # never holds more than a record and a piece; delivered as one chunk.
        offset = 0
        got = 0
        while offset < nbytes:
            feed(_cipher_view[offset:min(offset + FEED, nbytes)])
            offset += FEED
            got, end = self._decrypt(got)
            if end is not None:
                self._hand_over(got)
                self._ended(end)
                return
            if got > _PLAIN_ROOM:
                self._hand_over(got)
                got = 0
                if self._state != _OPEN or self._app_paused:
                    # The rest waits in the BIO (bounded: TCP reading is paused).
                    feed(_cipher_view[offset:nbytes])
                    return
        self._hand_over(got)
        self._flush()

    def data_received(self, data: bytes) -> None:
        """What a loop that does not take this for a BufferedProtocol (asyncio's own: it
        asks isinstance, uvloop looks for get_buffer) hands over: the same path."""
        view = memoryview(data)
        while len(view) > READ_SIZE:                    # (asyncio reads 256 KiB at most)
            _cipher_view[:READ_SIZE] = view[:READ_SIZE]
            self.buffer_updated(READ_SIZE)
            view = view[READ_SIZE:]
            if self._state == _CLOSED:
                return
        n = len(view)
        _cipher_view[:n] = view
        self.buffer_updated(n)

    def eof_received(self) -> bool:
        # A TCP FIN without close_notify (a truncation attack cannot hurt a line protocol
        # that would lose only its unfinished last command).
        if self._state == _OPEN:
            self._peer_done()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self._state in (_OPEN, _CLOSING) and self._app is not None
        self._state = _CLOSED
        self._cancel_timer()
        app, self._app = self._app, None          # no cycle app <-> transport left
        if was_open:
            app.connection_lost(exc)
        self._settle()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._state == _OPEN:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._state == _OPEN:
            self._app.resume_writing()

    # -- handshake ----------------------------------------------------------------
    def handshake_done(self) -> Any:
        """None once the handshake is over (the application has its connection, or the
        connection is refused or gone); before that, a future resolved when it is. The
        session exists only from then on: a PROXY listener's drain waits on this."""
        if self._state != _HANDSHAKE:
            return None
        if self._settled is None:
            self._settled = asyncio.get_running_loop().create_future()
        return self._settled

    def _settle(self) -> None:
        settled = self._settled
        if settled is not None:
            self._settled = None
            if not settled.done():
                settled.set_result(None)

    def _handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ValueError) as exc:       # garbage, no shared cipher ...
            log.debug("TLS handshake with %s failed: %s", self._peer(), exc)
            self._flush()                               # the alert, if OpenSSL made one
            self._state = _REFUSED
            self._tcp.close()
            return
        self._cancel_timer()
        self._flush()
        self._state = _OPEN
        self._app.connection_made(self)
        self._settle()
        if self._write_paused and self._state == _OPEN:
            self._app.pause_writing()
        # Records that came with the client's Finished, if any: OpenSSL (no read-ahead)
        # leaves them in the incoming BIO. Nothing there (the usual case): no read, which
        # would only raise SSLWantReadError.
        if (self._state == _OPEN and not self._app_paused
                and (self._in.pending or self._sslobj.pending())):
            self._deliver()

    def _too_slow(self) -> None:
        self._timer = None
        if self._state == _HANDSHAKE:
            log.debug("TLS handshake with %s timed out", self._peer())
            self._state = _REFUSED
            self._tcp.abort()

    # -- reading ------------------------------------------------------------------
    def _decrypt(self, got: int) -> tuple[int, object]:
        """Records from the incoming BIO into the plaintext buffer from ``got`` on, until
        it wants more or the buffer is full. -> (bytes in the buffer, None | "eof" | exc)"""
        sslobj = self._sslobj
        read = sslobj.read
        incoming = self._in
        try:
            while got <= _PLAIN_ROOM:
                n: int = read(RECORD, _plain_view[got:])
                if not n:
                    return got, "eof"               # close_notify
                got += n
                # All read: no SSLWantReadError to raise. A read of less than RECORD
                # emptied its record (OpenSSL hands out one record's plaintext per read,
                # without read-ahead), so only a full one can leave plaintext pending.
                if not incoming.pending and (n < RECORD or not sslobj.pending()):
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            return got, "eof"
        except ssl.SSLError as exc:
            return got, exc
        return got, None

    def _hand_over(self, got: int) -> None:
        if got and self._state == _OPEN:
            self._app.data_received(bytes(_plain_view[:got]))

    def _deliver(self) -> None:
        """Everything decryptable now, as one data_received (then again while the
        application keeps reading and the buffer filled up)."""
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._state == _OPEN and not self._app_paused:
                got, end = self._decrypt(0)
                self._hand_over(got)
                if end is not None:
                    self._ended(end)
                    return
                if got <= _PLAIN_ROOM:
                    break
            self._flush()
        finally:
            self._delivering = False

    def _ended(self, end) -> None:
        if end == "eof":
            self._flush()
            if self._state == _OPEN:
                self._peer_done()
            return
        log.debug("TLS error from %s: %s", self._peer(), end)
        self._flush()
        self._fail(end)

    def _peer_done(self) -> None:
        """The peer will send no more (close_notify or FIN)."""
        keep_open = self._app.eof_received()
        if not keep_open and self._state == _OPEN:
            self.close()

    def _fail(self, exc: Exception) -> None:
        if self._state in (_OPEN, _HANDSHAKE):
            self._state = _CLOSING if self._state == _OPEN else _REFUSED
            self._tcp.abort()

    # -- writing ------------------------------------------------------------------
    def _flush(self) -> None:
        out = self._out
        if out.pending and self._tcp is not None and not self._tcp.is_closing():
            self._tcp.write(out.read())

    # -- the application side (transport) ----------------------------------------
    def write(self, data) -> None:
        if self._state != _OPEN:
            return                              # closing: dropped, as asyncio does
        write = self._sslobj.write
        out = self._out
        try:
            if len(data) <= RECORD:
                write(data)
                self._tcp.write(out.read())
                return
            view = memoryview(data)
            # One record at a time out of the BIO, so it never holds more than one; all
            # of them to the TCP transport in one call (one send, not one per record).
            read = out.read
            records = []
            for start in range(0, len(view), RECORD):
                write(view[start:start + RECORD])
                records.append(read())
            self._tcp.writelines(records)
        except ssl.SSLError as exc:
            log.debug("TLS write to %s failed: %s", self._peer(), exc)
            self._fail(exc)

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close for the writer")

    def close(self) -> None:
        """close_notify, then the TCP connection (which first sends what is buffered).
        The peer's close_notify is not waited for (RFC 8446 6.1 permits that)."""
        if self._state == _OPEN:
            self._state = _CLOSING
            try:
                self._sslobj.shutdown()       # what SSLObject.unwrap() calls
            except (ssl.SSLError, ValueError):
                pass                          # WantRead: our close_notify is out anyway
            self._flush()
            self._tcp.close()
        elif self._state == _HANDSHAKE:
            self._state = _REFUSED
            self._tcp.close()

    def abort(self) -> None:
        if self._tcp is not None and self._state != _CLOSED:
            if self._state != _REFUSED:
                self._state = _CLOSING if self._state != _HANDSHAKE else _REFUSED
            self._tcp.abort()

    def is_closing(self) -> bool:
        return self._state != _OPEN

    def pause_reading(self) -> None:
        self._app_paused = True
        if self._tcp is not None and not self._tcp.is_closing():
            self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if not self._app_paused:
            return
        self._app_paused = False
        if self._state != _OPEN:
            return
        self._tcp.resume_reading()
        if self._in.pending or self._sslobj.pending():
            # Records that came before the pause: soon, not inside the caller's frame.
            asyncio.get_running_loop().call_soon(self._resume_delivery)

    def _resume_delivery(self) -> None:
        if self._state == _OPEN and not self._app_paused:
            self._deliver()

    def is_reading(self) -> bool:
        return not self._app_paused and self._state == _OPEN

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._tcp.get_write_buffer_size() + self._out.pending

    def get_write_buffer_limits(self):
        return self._tcp.get_write_buffer_limits()

    def set_protocol(self, protocol) -> None:
        self._app = protocol

    def get_protocol(self):
        return self._app

    def get_extra_info(self, name: str, default=None):
        sslobj = self._sslobj
        if name == "ssl_object":
            # asyncio's contract: an ssl.SSLObject (what SSLObject._create makes, around
            # the C object this connection already has; a new wrapper per call)
            wrapper = ssl.SSLObject.__new__(ssl.SSLObject)
            wrapper._sslobj = sslobj          # type: ignore[attr-defined]
            return wrapper
        if sslobj is not None:
            if name == "sslcontext":
                return sslobj.context
            if name == "peercert":
                return sslobj.getpeercert()
            if name == "cipher":
                return sslobj.cipher()
            if name == "compression":
                return sslobj.compression()
        return self._tcp.get_extra_info(name, default) if self._tcp is not None else default

    # -- helpers ------------------------------------------------------------------
    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and not isinstance(timer, (int, float)):
            timer.cancel()                 # a timers.Deadline

    def _peer(self) -> str:
        peer = self._tcp.get_extra_info("peername") if self._tcp is not None else None
        return peer[0] if peer else "?"

    def __repr__(self) -> str:
        return f"<TlsServer {('handshake', 'open', 'closing', 'closed', 'refused')[self._state]}>"


def server_factory(app_factory, context: ssl.SSLContext, handshake_timeout: float = 10.0):
    """A protocol factory for loop.create_server / connect_accepted_socket (ssl=None):
    each connection gets a TlsServer around ``app_factory(**kw)``."""
    def factory(**kw) -> TlsServer:
        return TlsServer(app_factory(**kw), context, handshake_timeout)
    return factory
