"""PROXY protocol v1 and v2 receiver, sans-IO: bytes in, one result out.

HAProxy (``send-proxy``, ``send-proxy-v2``, ``send-proxy-v2-ssl[-cn]``) and
other load balancers put this header in front of the client's first byte so
that we learn the client's real address. The spec is HAProxy's
``doc/proxy-protocol.txt``; reference/peer-proxies.md §5 has the summary.

Usage (the glue owns the socket and the timeout; the spec asks for at least
3 s, Dovecot's ``haproxy_timeout`` default)::

    if not trusted(peer_ip, cidrs):
        close()                                     # before reading anything
    parser = ProxyHeaderParser()
    while (result := parser.feed(await read())) is None:
        pass
    if isinstance(result, ProxyError):
        log(result.reason); close()
    client, local = result.endpoints(peer, local)   # header wins for PROXY
    machine.feed(result.remainder)                  # the client's first bytes

``feed`` returns None while more bytes are needed, then exactly one
`ProxyHeader` or `ProxyError`; calling it again after that is a RuntimeError
(the bytes after the header belong to the application, starting with
``remainder``). Nothing is sent to the peer before the header is complete:
the caller must not greet (IMAP/POP3 speak first) until it has a ProxyHeader.

Decisions, where the spec leaves room (spec wording quoted):

* The receiver never guesses: anything that is neither the v2 signature nor
  ``PROXY`` is an error ("MUST not try to guess whether the protocol header is
  present"). The check is done byte by byte, so a plain client is refused
  after its first byte ("abort the connection as soon as possible").
* Partial headers are waited for ("Recommendation is to be tolerant"); the
  glue's timeout bounds the wait, ``max_wait_bytes`` bounds the memory.
* v1: the line needs CRLF within 107 bytes; a bare CR or LF anywhere in it
  is an error, also inside the ignored tail of ``PROXY UNKNOWN ...`` (a lone
  CR is never part of a valid header); exactly one space between fields;
  IPv4 dotted decimal without leading zeros; IPv6 as hex groups with at most
  one ``::`` (validated by `ipaddress`, and the text re-checked: no zone
  ``%eth0``), where a dotted IPv4 tail is accepted only in the standard
  mixed form because HAProxy on a dual-stack bind sends IPv4 clients as
  ``::ffff:1.2.3.4``; ports 0-65535 without leading zeros. ``PROXY UNKNOWN``
  with or without the rest of the line: "the receiver must ignore anything
  presented before the CRLF".
* v2: version nibble must be 2, command LOCAL (0) or PROXY (1), the family
  byte one of the seven listed (0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32);
  anything else is an error ("must be rejected as invalid by receivers").
  ``16 + len`` bytes are always consumed, for LOCAL too.
* v2 with the PROXY command and a family we do not implement (UDP over IPv4
  or IPv6, UNIX stream or datagram, UNSPEC) gives command ``UNKNOWN`` and no
  addresses, i.e. use the real endpoints: "A receiver is not required to
  implement other ones, provided that it automatically falls back to the
  UNSPEC mode for the valid combinations above". The glue may still refuse
  UNKNOWN by policy.
* v2 LOCAL (health checks): no addresses are reported, whatever the family
  ("discard the protocol block including the family").
* Structure is checked the same way for every command: ``len`` must cover
  the family's address block (12, 36, 216; 0 for UNSPEC) and the bytes after
  it must be well-formed TLVs, each inside the block. A malformed block is an
  error even for LOCAL: the sender is a trusted proxy, so a broken block
  means a broken or hostile sender, and HAProxy's CRC32C on health checks
  is verified that way too.
* TLVs: every type may appear once, except NOOP (0x04, skipped, not
  reported). CRC32C (0x03) must be 4 bytes and match, computed over the
  whole header with its value zeroed ("MUST treat the TCP connection ... as
  invalid"). AUTHORITY (0x02) must be 1-255 bytes of UTF-8 without control
  characters (it is the SNI, a host name). UNIQUE_ID (0x05) is at most 128
  bytes ("up to 128 bytes"). SSL (0x20) must hold ``client`` (1 byte),
  ``verify`` (4 bytes) and well-formed sub-TLVs; VERSION, CN, CIPHER,
  SIG_ALG and KEY_ALG must be UTF-8. Other types are kept as raw bytes.
* IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) are reported as the IPv4
  text, and every IPv6 address in its compressed lower-case form, so audit,
  throttling and whitelists see one spelling per client. ``family`` still
  says what the header said (``TCP6``).
* The header's family need not match the socket's (an IPv6 client through
  an IPv4 hop): the header's addresses win; this module never sees the
  socket.
"""
from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass, field
from typing import Iterable, Union

__all__ = [
    "ProxyHeaderParser", "ProxyHeader", "ProxyError", "ProxyResult", "SslInfo",
    "trusted", "build_v1", "build_v2", "ssl_tlv", "crc32c",
    "V2_SIGNATURE", "V1_MAX_LINE", "DEFAULT_MAX_WAIT",
    "PP2_TYPE_ALPN", "PP2_TYPE_AUTHORITY", "PP2_TYPE_CRC32C", "PP2_TYPE_NOOP",
    "PP2_TYPE_UNIQUE_ID", "PP2_TYPE_SSL", "PP2_TYPE_NETNS",
    "PP2_SUBTYPE_SSL_VERSION", "PP2_SUBTYPE_SSL_CN", "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_SIG_ALG", "PP2_SUBTYPE_SSL_KEY_ALG",
    "PP2_CLIENT_SSL", "PP2_CLIENT_CERT_CONN", "PP2_CLIENT_CERT_SESS",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY"
V1_MAX_LINE = 107                     # bytes, CRLF included
_V2_HEADER = 16
_V2_MAX_TOTAL = _V2_HEADER + 0xFFFF
# nginx reads at most 4096 bytes of PROXY header; HAProxy's own v2 headers
# (addresses, SSL TLVs with cipher and CN, unique id, CRC) stay well below.
DEFAULT_MAX_WAIT = 4096
# The largest fixed part any header needs: v2 with UNIX addresses.
_MIN_MAX_WAIT = _V2_HEADER + 216

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30

PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

_MAX_UNIQUE_ID = 128
_MAX_AUTHORITY = 255

# v2 family byte -> (family name, address block size, implemented)
_FAMILIES: dict[int, tuple[str, int, bool]] = {
    0x00: ("UNSPEC", 0, False),
    0x11: ("TCP4", 12, True),
    0x12: ("UDP4", 12, False),
    0x21: ("TCP6", 36, True),
    0x22: ("UDP6", 36, False),
    0x31: ("UNIX_STREAM", 216, False),
    0x32: ("UNIX_DGRAM", 216, False),
}
_FAMILY_BYTES = {name: byte for byte, (name, _, _) in _FAMILIES.items()}

Address = tuple[str, int]


# --------------------------------------------------------------------- results

@dataclass(frozen=True, slots=True)
class SslInfo:
    """The PP2_TYPE_SSL TLV: how the client talked to the load balancer."""
    client: int                       # PP2_CLIENT_* bit field
    verify: int                       # 0: the client certificate was verified
    version: str | None = None        # e.g. "TLSv1.3"
    cn: str | None = None             # client certificate's Common Name
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    sub_tlvs: dict[int, bytes] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        """The client connected over SSL/TLS."""
        return bool(self.client & PP2_CLIENT_SSL)

    @property
    def cert_verified(self) -> bool:
        """The client presented a certificate on this connection and it was
        verified (what ``send-proxy-v2-ssl-cn`` + SASL EXTERNAL relies on)."""
        return bool(self.client & PP2_CLIENT_CERT_CONN) and self.verify == 0


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete, valid PROXY header.

    ``command`` is ``PROXY`` (use ``source``/``destination``), ``LOCAL`` (v2
    health check from the balancer itself: use the real endpoints) or
    ``UNKNOWN`` (v1 ``PROXY UNKNOWN``, or v2 PROXY with a family we do not
    implement: use the real endpoints). ``family`` is one of TCP4, TCP6,
    UDP4, UDP6, UNIX_STREAM, UNIX_DGRAM, UNSPEC (v1 UNKNOWN is UNSPEC).
    ``remainder`` holds the bytes that followed the header in the same reads:
    the client's first application bytes.
    """
    command: str
    family: str
    source: Address | None
    destination: Address | None
    tlvs: dict[int, bytes]
    authority: str | None
    version: int
    remainder: bytes = field(default=b"", repr=False)
    ssl: SslInfo | None = None
    length: int = 0                   # bytes the header itself took on the wire

    def endpoints(self, peer: Address, local: Address) -> tuple[Address, Address]:
        """(client, server) addresses to use: the header's for PROXY, else the
        socket's own ``peer`` and ``local``."""
        if self.command == "PROXY" and self.source and self.destination:
            return self.source, self.destination
        return peer, local


@dataclass(frozen=True, slots=True)
class ProxyError:
    """The bytes are not a valid PROXY header; close the connection without
    answering. ``reason`` is for the log (it never quotes more than a few
    bytes of the input)."""
    reason: str


ProxyResult = Union[ProxyHeader, ProxyError]


# --------------------------------------------------------------------- crc32c

def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli, RFC 4960 appendix B), as the PP2_TYPE_CRC32C TLV
    uses it. ``crc32c(b"123456789") == 0xE3069283``."""
    table = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --------------------------------------------------------------------- v1 text

_V4_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_V4_TEXT = re.compile(_V4_OCTET + rb"(?:\." + _V4_OCTET + rb"){3}")
# Hex groups and colons, optionally ending in a dotted IPv4 (mixed notation);
# ipaddress checks the structure (1-4 digits per group, one "::", 128 bits).
_V6_TEXT = re.compile(rb"[0-9A-Fa-f:]{2,39}|[0-9A-Fa-f:]{1,30}:" + _V4_TEXT.pattern)
_PORT_TEXT = re.compile(rb"0|[1-9][0-9]{0,4}")


class _Invalid(Exception):
    """Internal: the header is invalid; the message becomes ProxyError.reason."""


def _show(token: bytes, limit: int = 24) -> str:
    """A short, printable rendering of a bad token for the reason text."""
    text = token[:limit].decode("ascii", "backslashreplace")
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return repr(text + ("..." if len(token) > limit else ""))


def _ip_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _v1_address(token: bytes, family: bytes) -> str:
    if family == b"TCP4":
        if not _V4_TEXT.fullmatch(token):
            raise _Invalid(f"v1: invalid IPv4 address {_show(token)}")
        return str(ipaddress.IPv4Address(token.decode("ascii")))
    if not _V6_TEXT.fullmatch(token):
        raise _Invalid(f"v1: invalid IPv6 address {_show(token)}")
    try:
        ip = ipaddress.IPv6Address(token.decode("ascii"))
    except ValueError:
        raise _Invalid(f"v1: invalid IPv6 address {_show(token)}") from None
    return _ip_text(ip)


def _v1_port(token: bytes) -> int:
    if not _PORT_TEXT.fullmatch(token) or int(token) > 65535:
        raise _Invalid(f"v1: invalid port {_show(token)}")
    return int(token)


def _parse_v1_line(line: bytes) -> tuple[str, str, Address | None, Address | None]:
    """``line`` is the header without its CRLF. Returns (command, family,
    source, destination)."""
    if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
        return "UNKNOWN", "UNSPEC", None, None
    parts = line.split(b" ")
    if parts[0] != b"PROXY":
        raise _Invalid("v1: the line must start with 'PROXY '")
    if b"" in parts:
        raise _Invalid("v1: fields must be separated by exactly one space")
    if len(parts) < 2 or parts[1] not in (b"TCP4", b"TCP6"):
        raise _Invalid(f"v1: unknown protocol {_show(parts[1] if len(parts) > 1 else b'')}"
                       " (expected TCP4, TCP6 or UNKNOWN)")
    if len(parts) != 6:
        raise _Invalid(f"v1: expected 6 fields, got {len(parts)}")
    family = parts[1]
    src = _v1_address(parts[2], family)
    dst = _v1_address(parts[3], family)
    sport = _v1_port(parts[4])
    dport = _v1_port(parts[5])
    return "PROXY", family.decode(), (src, sport), (dst, dport)


# --------------------------------------------------------------------- v2 TLVs

def _iter_tlvs(block: bytes, offset: int, where: str) -> Iterable[tuple[int, int, int]]:
    """(type, value start, value end) for each TLV in ``block[offset:]``;
    every TLV must lie wholly inside the block."""
    end = len(block)
    while offset < end:
        if end - offset < 3:
            raise _Invalid(f"v2: truncated {where} header ({end - offset} bytes left)")
        kind = block[offset]
        size = (block[offset + 1] << 8) | block[offset + 2]
        start = offset + 3
        if start + size > end:
            raise _Invalid(f"v2: {where} 0x{kind:02x} of {size} bytes overruns the block "
                           f"({end - start} bytes left)")
        yield kind, start, start + size
        offset = start + size


def _utf8(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _Invalid(f"v2: {what} is not valid UTF-8") from None


_SSL_STRINGS = {
    PP2_SUBTYPE_SSL_VERSION: ("version", "SSL version"),
    PP2_SUBTYPE_SSL_CN: ("cn", "SSL client CN"),
    PP2_SUBTYPE_SSL_CIPHER: ("cipher", "SSL cipher"),
    PP2_SUBTYPE_SSL_SIG_ALG: ("sig_alg", "SSL signature algorithm"),
    PP2_SUBTYPE_SSL_KEY_ALG: ("key_alg", "SSL key algorithm"),
}
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _parse_ssl(value: bytes) -> SslInfo:
    if len(value) < 5:
        raise _Invalid(f"v2: SSL TLV of {len(value)} bytes is shorter than its 5-byte head")
    client = value[0]
    (verify,) = struct.unpack_from("!I", value, 1)
    subs: dict[int, bytes] = {}
    strings: dict[str, str] = {}
    for kind, start, end in _iter_tlvs(value, 5, "SSL sub-TLV"):
        if kind in subs:
            raise _Invalid(f"v2: SSL sub-TLV 0x{kind:02x} appears twice")
        sub = value[start:end]
        subs[kind] = sub
        if kind in _SSL_STRINGS:
            name, what = _SSL_STRINGS[kind]
            strings[name] = _utf8(sub, what)
    return SslInfo(client=client, verify=verify, sub_tlvs=subs, **strings)


# --------------------------------------------------------------------- parser

_NEED_MORE = None
_DETECT, _V1, _V2, _DONE = range(4)


class ProxyHeaderParser:
    """Reads one PROXY header (v1 or v2) from the start of a connection.

    ``max_wait_bytes`` is the largest header accepted (v2 ``16 + len``; a v1
    line is at most 107 bytes anyway) and so the most this parser buffers
    while it waits. It must be at least 232 (a v2 header with UNIX addresses)
    and at most 65551 (the largest v2 header).
    """

    def __init__(self, max_wait_bytes: int = DEFAULT_MAX_WAIT, *,
                 allow_v1: bool = True, allow_v2: bool = True) -> None:
        if not _MIN_MAX_WAIT <= max_wait_bytes <= _V2_MAX_TOTAL:
            raise ValueError(f"max_wait_bytes must be {_MIN_MAX_WAIT}..{_V2_MAX_TOTAL}, "
                             f"not {max_wait_bytes}")
        if not (allow_v1 or allow_v2):
            raise ValueError("allow at least one of v1 and v2")
        self.max_wait_bytes = max_wait_bytes
        self.allow_v1 = allow_v1
        self.allow_v2 = allow_v2
        self._buf = bytearray()
        self._state = _DETECT
        self._result: ProxyResult | None = None

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of the header."""
        return len(self._buf)

    @property
    def result(self) -> ProxyResult | None:
        return self._result

    def feed(self, data: bytes | bytearray | memoryview) -> ProxyResult | None:
        """Take the next bytes of the connection. None: the header is not
        complete yet. Raises RuntimeError once a result was returned."""
        if self._state == _DONE:
            raise RuntimeError("ProxyHeaderParser.feed() after the header was parsed; "
                               "later bytes belong to the application")
        self._buf += data
        try:
            result = self._step()
        except _Invalid as e:
            result = ProxyError(str(e))
        if result is not None:
            self._state = _DONE
            self._result = result
            self._buf = bytearray()
        return result

    def feed_eof(self) -> ProxyError:
        """The peer closed (or the glue's timeout fired) before a result."""
        if self._state == _DONE:
            raise RuntimeError("ProxyHeaderParser.feed_eof() after the header was parsed")
        self._state = _DONE
        have = len(self._buf)
        self._buf = bytearray()
        self._result = ProxyError(f"connection closed after {have} bytes of an "
                                  f"incomplete PROXY header")
        return self._result

    # ------------------------------------------------------------ internals

    def _step(self) -> ProxyResult | None:
        buf = self._buf
        if self._state == _DETECT:
            n = min(len(buf), len(V2_SIGNATURE))
            head = bytes(buf[:n])
            if self.allow_v2 and head == V2_SIGNATURE[:n]:
                if n < len(V2_SIGNATURE):
                    return _NEED_MORE
                self._state = _V2
            elif self.allow_v1 and head[:5] == _V1_PREFIX[:min(n, 5)]:
                if n < len(_V1_PREFIX):
                    return _NEED_MORE
                self._state = _V1
            else:
                if not buf:
                    return _NEED_MORE
                # Quote up to the first byte that fits neither signature, so
                # that the reason does not depend on how the input was split.
                end = 1
                while (self.allow_v2 and head[:end] == V2_SIGNATURE[:end]
                       or self.allow_v1 and head[:end] == _V1_PREFIX[:end]):
                    end += 1
                raise _Invalid(f"not a PROXY protocol header (starts with {_show(head[:end])})")
        if self._state == _V1:
            return self._step_v1()
        return self._step_v2()

    def _step_v1(self) -> ProxyResult | None:
        buf = self._buf
        lf = buf.find(b"\n", 0, V1_MAX_LINE)
        limit = lf if lf >= 0 else min(len(buf), V1_MAX_LINE)
        # Decide on the earliest offending byte, so that any split of the
        # same input gives the same answer.
        cr = buf.find(b"\r", 0, limit)
        if cr >= 0 and cr + 1 != lf:                 # not the CRLF itself
            if cr == V1_MAX_LINE - 1:
                raise _Invalid(f"v1: no CRLF within the first {V1_MAX_LINE} bytes")
            if cr + 1 == len(buf):
                return _NEED_MORE                    # maybe a CRLF: wait for the LF
            raise _Invalid(f"v1: bare CR at byte {cr}")
        if lf < 0:
            if len(buf) >= V1_MAX_LINE:
                raise _Invalid(f"v1: no CRLF within the first {V1_MAX_LINE} bytes")
            return _NEED_MORE
        if lf == 0 or buf[lf - 1] != 0x0D:
            raise _Invalid(f"v1: bare LF at byte {lf}")
        line = bytes(buf[:lf - 1])
        command, family, src, dst = _parse_v1_line(line)
        return ProxyHeader(command=command, family=family, source=src, destination=dst,
                           tlvs={}, authority=None, version=1,
                           remainder=bytes(buf[lf + 1:]), length=lf + 1)

    def _step_v2(self) -> ProxyResult | None:
        buf = self._buf
        have = len(buf)
        if have < 13:
            return _NEED_MORE
        ver_cmd = buf[12]
        if ver_cmd >> 4 != 2:
            raise _Invalid(f"v2: unsupported version {ver_cmd >> 4} (only 2 is valid)")
        cmd = ver_cmd & 0x0F
        if cmd not in (0, 1):
            raise _Invalid(f"v2: unknown command {cmd} (expected LOCAL 0 or PROXY 1)")
        if have < 14:
            return _NEED_MORE
        fam = buf[13]
        if fam not in _FAMILIES:
            raise _Invalid(f"v2: invalid address family/protocol byte 0x{fam:02x}")
        family, addr_len, implemented = _FAMILIES[fam]
        if have < _V2_HEADER:
            return _NEED_MORE
        (length,) = struct.unpack_from("!H", buf, 14)
        if length < addr_len:
            raise _Invalid(f"v2: length {length} is shorter than the {addr_len}-byte "
                           f"{family} address block")
        total = _V2_HEADER + length
        if total > self.max_wait_bytes:
            raise _Invalid(f"v2: header of {total} bytes exceeds the limit of "
                           f"{self.max_wait_bytes}")
        if have < total:
            return _NEED_MORE
        block = bytes(buf[:total])
        remainder = bytes(buf[total:])

        src = dst = None
        if cmd == 0:
            command = "LOCAL"
        elif implemented:
            command = "PROXY"
            src, dst = _v2_addresses(block, fam)
        else:
            command = "UNKNOWN"                       # fall back to UNSPEC mode

        tlvs: dict[int, bytes] = {}
        crc_at = -1
        for kind, start, end in _iter_tlvs(block, _V2_HEADER + addr_len, "TLV"):
            if kind == PP2_TYPE_NOOP:
                continue
            if kind in tlvs:
                raise _Invalid(f"v2: TLV 0x{kind:02x} appears twice")
            tlvs[kind] = block[start:end]
            if kind == PP2_TYPE_CRC32C:
                crc_at = start
        if crc_at >= 0:
            _check_crc(block, crc_at, tlvs[PP2_TYPE_CRC32C])
        authority = None
        if PP2_TYPE_AUTHORITY in tlvs:
            authority = _authority(tlvs[PP2_TYPE_AUTHORITY])
        unique = tlvs.get(PP2_TYPE_UNIQUE_ID)
        if unique is not None and len(unique) > _MAX_UNIQUE_ID:
            raise _Invalid(f"v2: UNIQUE_ID of {len(unique)} bytes (at most {_MAX_UNIQUE_ID})")
        ssl = _parse_ssl(tlvs[PP2_TYPE_SSL]) if PP2_TYPE_SSL in tlvs else None
        return ProxyHeader(command=command, family=family, source=src, destination=dst,
                           tlvs=tlvs, authority=authority, version=2, remainder=remainder,
                           ssl=ssl, length=total)


def _v2_addresses(block: bytes, fam: int) -> tuple[Address, Address]:
    if fam == 0x11:
        src = ipaddress.IPv4Address(block[16:20])
        dst = ipaddress.IPv4Address(block[20:24])
        sport, dport = struct.unpack_from("!HH", block, 24)
    else:
        src = ipaddress.IPv6Address(block[16:32])
        dst = ipaddress.IPv6Address(block[32:48])
        sport, dport = struct.unpack_from("!HH", block, 48)
    return (_ip_text(src), sport), (_ip_text(dst), dport)


def _check_crc(block: bytes, at: int, value: bytes) -> None:
    if len(value) != 4:
        raise _Invalid(f"v2: CRC32C TLV of {len(value)} bytes (must be 4)")
    (sent,) = struct.unpack("!I", value)
    zeroed = block[:at] + b"\0\0\0\0" + block[at + 4:]
    if crc32c(zeroed) != sent:
        raise _Invalid("v2: CRC32C mismatch")


def _authority(value: bytes) -> str:
    if not 1 <= len(value) <= _MAX_AUTHORITY:
        raise _Invalid(f"v2: AUTHORITY of {len(value)} bytes (must be 1-{_MAX_AUTHORITY})")
    text = _utf8(value, "AUTHORITY")
    if _CONTROL.search(text):
        raise _Invalid("v2: AUTHORITY contains control characters")
    return text


# --------------------------------------------------------------------- trust

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def trusted(peer_ip: str, cidrs: Iterable[str | Network]) -> bool:
    """Whether a connection from ``peer_ip`` may send a PROXY header (the
    socket's own peer address, never a header's). ``cidrs`` are networks or
    strings like ``10.0.0.0/8``, ``2001:db8::/32`` or a single address; a
    malformed string is a configuration error (ValueError). An IPv4-mapped
    peer (``::ffff:10.0.0.1`` from a dual-stack socket) matches IPv4
    networks. An unparseable peer is not trusted."""
    try:
        ip = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    forms = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        forms.append(ip.ipv4_mapped)
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False) if isinstance(cidr, str) else cidr
        if any(form in net for form in forms):
            return True
    return False


# --------------------------------------------------------------------- senders

def _family_of(source: Address, destination: Address) -> int:
    a = ipaddress.ip_address(source[0])
    b = ipaddress.ip_address(destination[0])
    if a.version != b.version:
        raise ValueError("source and destination must be the same IP version")
    return a.version


def build_v1(source: Address | None = None, destination: Address | None = None) -> bytes:
    """A v1 line: ``PROXY TCP4|TCP6 src dst sport dport\\r\\n``, or
    ``PROXY UNKNOWN\\r\\n`` when no addresses are given."""
    if source is None or destination is None:
        if source is not None or destination is not None:
            raise ValueError("give both source and destination, or neither")
        return b"PROXY UNKNOWN\r\n"
    version = _family_of(source, destination)
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    for port in (source[1], destination[1]):
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
    return b"PROXY TCP%d %s %s %d %d\r\n" % (
        version, str(src).encode(), str(dst).encode(), source[1], destination[1])


def ssl_tlv(*, client: int = PP2_CLIENT_SSL, verify: int = 0, version: str | None = None,
            cn: str | None = None, cipher: str | None = None,
            extra: Iterable[tuple[int, bytes]] = ()) -> bytes:
    """The value of a PP2_TYPE_SSL TLV (for ``build_v2(tlvs=...)``)."""
    subs = []
    for kind, text in ((PP2_SUBTYPE_SSL_VERSION, version), (PP2_SUBTYPE_SSL_CN, cn),
                       (PP2_SUBTYPE_SSL_CIPHER, cipher)):
        if text is not None:
            subs.append((kind, text.encode("utf-8")))
    subs.extend(extra)
    return struct.pack("!BI", client, verify) + b"".join(_tlv(k, v) for k, v in subs)


def _tlv(kind: int, value: bytes) -> bytes:
    if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
        raise ValueError(f"bad TLV 0x{kind:x} of {len(value)} bytes")
    return struct.pack("!BH", kind, len(value)) + value


def build_v2(source: Address | None = None, destination: Address | None = None, *,
             command: str = "PROXY", family: int | str | None = None,
             address_block: bytes | None = None,
             tlvs: Iterable[tuple[int, bytes]] | dict[int, bytes] = (),
             authority: str | None = None, crc: bool = False) -> bytes:
    """A v2 header, the way HAProxy builds it.

    With addresses: TCP4 or TCP6 by their version. Without: family UNSPEC and
    no address block (what HAProxy sends for LOCAL health checks). ``family``
    (a byte or a name like ``"UNIX_STREAM"``) and ``address_block`` override
    both, for tests. TLVs come in the order given (AUTHORITY first if
    ``authority`` is set); ``crc=True`` appends a CRC32C TLV and fills it in.
    """
    cmd = {"LOCAL": 0, "PROXY": 1}[command]
    if source is not None and destination is not None:
        version = _family_of(source, destination)
        fam = 0x11 if version == 4 else 0x21
        src = ipaddress.ip_address(source[0]).packed
        dst = ipaddress.ip_address(destination[0]).packed
        block = src + dst + struct.pack("!HH", source[1], destination[1])
    elif source is None and destination is None:
        fam, block = 0x00, b""
    else:
        raise ValueError("give both source and destination, or neither")
    if family is not None:
        fam = _FAMILY_BYTES[family] if isinstance(family, str) else family
    if address_block is not None:
        block = address_block
    items = list(tlvs.items()) if isinstance(tlvs, dict) else list(tlvs)
    if authority is not None:
        items.insert(0, (PP2_TYPE_AUTHORITY, authority.encode("utf-8")))
    body = block + b"".join(_tlv(k, v) for k, v in items)
    if crc:
        body += _tlv(PP2_TYPE_CRC32C, b"\0\0\0\0")
    if len(body) > 0xFFFF:
        raise ValueError("v2 header too long")
    header = V2_SIGNATURE + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body
    if crc:
        header = header[:-4] + struct.pack("!I", crc32c(header))
    return header
