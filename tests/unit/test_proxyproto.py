"""Byte transcripts for the PROXY protocol receiver (carbotui/protocols/proxyproto.py).

Every valid header is also fed one byte at a time: the result must be the
same, and the bytes after the header (the client's first IMAP/POP3 bytes)
must come out intact whichever way they were split.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import struct

import pytest

from carbotui.protocols.proxyproto import (
    PP2_CLIENT_CERT_CONN, PP2_CLIENT_SSL, PP2_SUBTYPE_SSL_CN, PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_NOOP, PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID, V2_SIGNATURE, ProxyError, ProxyHeader, ProxyHeaderParser, build_v1,
    build_v2, crc32c, ssl_tlv, trusted,
)

IMAP_FIRST = b"a001 CAPABILITY\r\n"


# ---------------------------------------------------------------- helpers

def parse(data: bytes, **kw):
    """Feed everything at once; the result (None if incomplete)."""
    return ProxyHeaderParser(**kw).feed(data)


def trickle(data: bytes, **kw):
    """Feed one byte at a time; the result with every byte after the header
    (those in the result's remainder plus those never fed) as remainder."""
    parser = ProxyHeaderParser(**kw)
    for i in range(len(data)):
        result = parser.feed(data[i:i + 1])
        if result is not None:
            if isinstance(result, ProxyHeader):
                result = dataclasses.replace(result, remainder=result.remainder + data[i + 1:])
            return result
    return None


def both(data: bytes, **kw):
    """The result of feeding ``data`` at once, checked against feeding it
    byte by byte."""
    whole = parse(data, **kw)
    assert trickle(data, **kw) == whole
    return whole


def ok(data: bytes, **kw) -> ProxyHeader:
    result = both(data, **kw)
    assert isinstance(result, ProxyHeader), result
    return result


def bad(data: bytes, why: str, **kw) -> ProxyError:
    result = both(data, **kw)
    assert isinstance(result, ProxyError), result
    assert why in result.reason, result.reason
    return result


def v2_raw(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    return (V2_SIGNATURE + bytes([ver_cmd, fam])
            + struct.pack("!H", len(body) if length is None else length) + body)


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


V4_BLOCK = bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 56324, 143)


# ---------------------------------------------------------------- v1 valid

def test_v1_tcp4_with_the_clients_first_bytes_after_it():
    h = ok(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 143\r\n" + IMAP_FIRST)
    assert (h.version, h.command, h.family) == (1, "PROXY", "TCP4")
    assert h.source == ("192.0.2.1", 56324)
    assert h.destination == ("198.51.100.7", 143)
    assert h.tlvs == {} and h.authority is None and h.ssl is None
    assert h.remainder == IMAP_FIRST
    assert h.length == 45


def test_v1_tcp6_is_reported_in_compressed_lower_case():
    h = ok(b"PROXY TCP6 2001:DB8:0:0:0:0:0:0001 2001:db8::2 1 993\r\n")
    assert h.family == "TCP6"
    assert h.source == ("2001:db8::1", 1)
    assert h.destination == ("2001:db8::2", 993)


def test_v1_tcp6_ipv4_mapped_is_reported_as_ipv4():
    # HAProxy on a dual-stack bind sends IPv4 clients this way.
    h = ok(b"PROXY TCP6 ::ffff:203.0.113.9 ::ffff:10.0.0.1 40000 143\r\n")
    assert h.family == "TCP6"
    assert h.source == ("203.0.113.9", 40000)
    assert h.destination == ("10.0.0.1", 143)
    # ... also when written in hex
    h = ok(b"PROXY TCP6 ::ffff:cb00:7109 ::1 1 2\r\n")
    assert h.source == ("203.0.113.9", 1)


def test_v1_longest_lines_from_the_spec():
    line4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(line4) == 56
    assert ok(line4).source == ("255.255.255.255", 65535)
    full = ":".join(["ffff"] * 8).encode()
    line6 = b"PROXY TCP6 " + full + b" " + full + b" 65535 65535\r\n"
    assert len(line6) == 104
    assert ok(line6).destination == (str(ipaddress.IPv6Address(full.decode())), 65535)
    worst = b"PROXY UNKNOWN " + full + b" " + full + b" 65535 65535\r\n"
    assert len(worst) == 107
    assert ok(worst).command == "UNKNOWN"


def test_v1_ports_and_octets_at_their_limits():
    h = ok(b"PROXY TCP4 0.0.0.0 10.0.0.255 0 65535\r\n")
    assert h.source == ("0.0.0.0", 0) and h.destination == ("10.0.0.255", 65535)


@pytest.mark.parametrize("line", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN 192.0.2.1 198.51.100.7 1 2\r\n",
    b"PROXY UNKNOWN whatever  the sender  put here\r\n",
    b"PROXY UNKNOWN \r\n",
])
def test_v1_unknown_with_or_without_the_rest(line):
    h = ok(line + IMAP_FIRST)
    assert (h.command, h.family, h.source, h.destination) == ("UNKNOWN", "UNSPEC", None, None)
    assert h.remainder == IMAP_FIRST


def test_v1_waits_for_the_crlf():
    parser = ProxyHeaderParser()
    for piece in (b"P", b"ROXY", b" TCP4 1.2.3.4 5.6.7.8 1 2", b"\r"):
        assert parser.feed(piece) is None
    assert parser.buffered == 31
    h = parser.feed(b"\n* extra")
    assert h.source == ("1.2.3.4", 1) and h.remainder == b"* extra"
    assert parser.buffered == 0


# ---------------------------------------------------------------- v1 invalid

@pytest.mark.parametrize("line, why", [
    # line endings
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
    (b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n", "bare LF"),
    (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "bare CR"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "bare CR"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "bare CR"),
    (b"PROXY UNKNOWN a\rb\r\n", "bare CR"),
    # spaces
    (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "exactly one space"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "exactly one space"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "exactly one space"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\t2\r\n", "expected 6 fields"),
    (b"PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "must start with 'PROXY '"),
    (b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "must start with 'PROXY '"),
    # protocol
    (b"PROXY\r\n", "unknown protocol"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY UNKNOWNX\r\n", "unknown protocol"),
    (b"PROXY unknown\r\n", "unknown protocol"),
    # field count
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected 6 fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "expected 6 fields"),
    (b"PROXY TCP4\r\n", "expected 6 fields"),
    # IPv4
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "invalid IPv4 address"),
    (b"PROXY TCP4 1.2.3.004 5.6.7.8 1 2\r\n", "invalid IPv4 address"),
    (b"PROXY TCP4 1.2.3.00 5.6.7.8 1 2\r\n", "invalid IPv4 address"),
    (b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n", "invalid IPv4 address"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "invalid IPv4 address"),
    (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "invalid IPv4 address"),
    (b"PROXY TCP4 0x1.2.3.4 5.6.7.8 1 2\r\n", "invalid IPv4 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8. 1 2\r\n", "invalid IPv4 address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "invalid IPv4 address"),
    (b"PROXY TCP4 1.2.3.4 ::ffff:5.6.7.8 1 2\r\n", "invalid IPv4 address"),
    (b"PROXY TCP4 \xd9\xa1.2.3.4 5.6.7.8 1 2\r\n", "invalid IPv4 address"),  # Arabic-Indic 1
    # IPv6
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "invalid IPv6 address"),
    (b"PROXY TCP6 :::1 ::1 1 2\r\n", "invalid IPv6 address"),
    (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "invalid IPv6 address"),
    (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "invalid IPv6 address"),
    (b"PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n", "invalid IPv6 address"),
    (b"PROXY TCP6 12345::1 ::1 1 2\r\n", "invalid IPv6 address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "invalid IPv6 address"),
    (b"PROXY TCP6 gggg::1 ::1 1 2\r\n", "invalid IPv6 address"),
    (b"PROXY TCP6 ::ffff:01.2.3.4 ::1 1 2\r\n", "invalid IPv6 address"),
    (b"PROXY TCP6 [::1] ::1 1 2\r\n", "invalid IPv6 address"),
    # ports
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 123456 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1e3 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xd9\xa1\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n", "invalid port"),
])
def test_v1_malformed(line, why):
    bad(line + IMAP_FIRST, why)


def test_v1_needs_crlf_within_107_bytes():
    full = ":".join(["ffff"] * 8).encode()
    worst = b"PROXY UNKNOWN " + full + b" " + full + b" 65535 65535"
    bad(worst + b"0\r\n", "no CRLF within the first 107 bytes")        # 108 bytes
    bad(worst + b"\r0\n", "bare CR at byte 105")
    assert "no CRLF" in parse(worst + b"0\r").reason                    # CR at 106: too late
    bad(b"PROXY UNKNOWN " + b"x" * 500, "no CRLF within the first 107 bytes")
    # Exactly 107 bytes, no CRLF yet: already hopeless.
    assert isinstance(parse((b"PROXY UNKNOWN " + b"x" * 200)[:107]), ProxyError)
    assert parse((b"PROXY UNKNOWN " + b"x" * 200)[:106]) is None


def test_anything_else_is_refused_at_the_first_wrong_byte():
    for data in (b"a001 CAPABILITY\r\n", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00",
                 b"proxy TCP4", b"PROXX", b"\r\n\r\n\x00\r\nQUIX", b" PROXY"):
        parser = ProxyHeaderParser()
        results = [parser.feed(data[i:i + 1]) for i in range(len(data))
                   if parser.result is None]
        assert isinstance(results[-1], ProxyError), data
        assert "not a PROXY protocol header" in results[-1].reason
        assert bad(data, "not a PROXY protocol header") == results[-1]
    # A prefix of either signature waits.
    assert parse(b"PROX") is None
    assert parse(V2_SIGNATURE[:11]) is None
    assert parse(b"") is None


def test_reasons_quote_little_of_the_input():
    r = parse(b"PROXY TCP4 " + b"9" * 80 + b" 5.6.7.8 1 2\r\n")
    assert isinstance(r, ProxyError) and len(r.reason) < 80
    r = parse(b"\x1b[31mhello")
    assert "\x1b" not in r.reason


def test_only_the_configured_versions():
    bad(b"PROXY UNKNOWN\r\n", "not a PROXY protocol header", allow_v1=False)
    bad(build_v2(), "not a PROXY protocol header", allow_v2=False)
    assert ok(build_v2(), allow_v1=False).command == "UNKNOWN"
    with pytest.raises(ValueError):
        ProxyHeaderParser(allow_v1=False, allow_v2=False)


# ---------------------------------------------------------------- v2 valid

def test_v2_proxy_tcp4_with_the_clients_first_bytes_after_it():
    data = build_v2(("192.0.2.1", 56324), ("198.51.100.7", 143)) + IMAP_FIRST
    assert data[12:16] == b"\x21\x11\x00\x0c"
    h = ok(data)
    assert (h.version, h.command, h.family) == (2, "PROXY", "TCP4")
    assert h.source == ("192.0.2.1", 56324) and h.destination == ("198.51.100.7", 143)
    assert h.tlvs == {} and h.authority is None and h.ssl is None
    assert h.remainder == IMAP_FIRST and h.length == 28


def test_v2_proxy_tcp6():
    h = ok(build_v2(("2001:db8::1", 40000), ("2001:db8:0:1::25", 993)) + b"x")
    assert (h.command, h.family) == ("PROXY", "TCP6")
    assert h.source == ("2001:db8::1", 40000)
    assert h.destination == ("2001:db8:0:1::25", 993)
    assert h.remainder == b"x" and h.length == 52


def test_v2_ipv4_mapped_is_reported_as_ipv4():
    h = ok(build_v2(("::ffff:203.0.113.9", 1), ("::ffff:10.0.0.1", 2)))
    assert h.family == "TCP6"
    assert h.source == ("203.0.113.9", 1) and h.destination == ("10.0.0.1", 2)


def test_v2_local_without_addresses():
    h = ok(build_v2(command="LOCAL") + b"+OK")
    assert h.command == "LOCAL" and h.family == "UNSPEC"
    assert h.source is None and h.destination is None
    assert h.remainder == b"+OK" and h.length == 16


def test_v2_local_with_addresses_ignores_them_but_skips_len_bytes():
    data = build_v2(("192.0.2.1", 1), ("198.51.100.7", 2), command="LOCAL") + IMAP_FIRST
    h = ok(data)
    assert h.command == "LOCAL" and h.family == "TCP4"
    assert h.source is None and h.destination is None
    assert h.remainder == IMAP_FIRST


def test_v2_local_skips_padding_and_checks_tlvs():
    data = build_v2(command="LOCAL", tlvs=[(PP2_TYPE_NOOP, b"\0" * 9)], crc=True)
    h = ok(data + b"rest")
    assert h.command == "LOCAL" and h.remainder == b"rest"
    assert PP2_TYPE_NOOP not in h.tlvs and PP2_TYPE_CRC32C in h.tlvs


@pytest.mark.parametrize("family, size", [
    ("UDP4", 12), ("UDP6", 36), ("UNIX_STREAM", 216), ("UNIX_DGRAM", 216), ("UNSPEC", 0),
])
def test_v2_proxy_with_a_family_we_do_not_implement_falls_back_to_unknown(family, size):
    data = build_v2(family=family, address_block=b"\x01" * size,
                    authority="imap.example.com") + b"tail"
    h = ok(data)
    assert (h.command, h.family, h.source, h.destination) == ("UNKNOWN", family, None, None)
    assert h.authority == "imap.example.com"       # TLVs after the address block
    assert h.remainder == b"tail"


def test_v2_endpoints():
    peer, local = ("10.0.0.5", 51000), ("10.0.0.9", 143)
    h = ok(build_v2(("192.0.2.1", 1), ("198.51.100.7", 2)))
    assert h.endpoints(peer, local) == (("192.0.2.1", 1), ("198.51.100.7", 2))
    for data in (build_v2(command="LOCAL"), build_v1(), build_v2(family="UDP4",
                                                                  address_block=bytes(12))):
        assert ok(data).endpoints(peer, local) == (peer, local)


def test_v2_waits_for_the_whole_header():
    data = build_v2(("2001:db8::1", 1), ("2001:db8::2", 2), authority="a.example")
    parser = ProxyHeaderParser()
    assert parser.feed(data[:15]) is None
    assert parser.feed(data[15:-1]) is None
    assert parser.buffered == len(data) - 1
    h = parser.feed(data[-1:] + b"a1 NOOP\r\n")
    assert h.authority == "a.example" and h.remainder == b"a1 NOOP\r\n"
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


def test_v2_header_at_the_size_limit():
    pad = (PP2_TYPE_NOOP, b"\0" * (300 - 16 - 12 - 3))
    data = build_v2(("192.0.2.1", 1), ("198.51.100.7", 2), tlvs=[pad])
    assert len(data) == 300
    assert ok(data, max_wait_bytes=300).command == "PROXY"
    bad(data, "exceeds the limit of 299", max_wait_bytes=299)
    # Refused as soon as the length field is in, not after waiting for it all.
    assert isinstance(parse(data[:16], max_wait_bytes=299), ProxyError)
    big = build_v2(("192.0.2.1", 1), ("198.51.100.7", 2), tlvs=[(0xE0, b"z" * 65000)])
    assert ok(big, max_wait_bytes=65551).tlvs[0xE0] == b"z" * 65000
    bad(big, "exceeds the limit of 4096")


@pytest.mark.parametrize("limit", [0, 107, 231, 65552])
def test_max_wait_bytes_range(limit):
    with pytest.raises(ValueError):
        ProxyHeaderParser(max_wait_bytes=limit)


# ---------------------------------------------------------------- v2 TLVs

def test_v2_authority_alpn_unique_id_and_custom_tlvs():
    data = build_v2(("192.0.2.1", 1), ("198.51.100.7", 2), authority="mail.example.com",
                    tlvs=[(PP2_TYPE_ALPN, b"imap"), (PP2_TYPE_NOOP, b""),
                          (PP2_TYPE_UNIQUE_ID, b"u" * 128), (PP2_TYPE_NOOP, b"\0\0"),
                          (0xE0, b"\xff\x00custom"), (0xF8, b"future")])
    h = ok(data)
    assert h.authority == "mail.example.com"
    assert h.tlvs == {PP2_TYPE_AUTHORITY: b"mail.example.com", PP2_TYPE_ALPN: b"imap",
                      PP2_TYPE_UNIQUE_ID: b"u" * 128, 0xE0: b"\xff\x00custom",
                      0xF8: b"future"}


def test_v2_authority_may_be_utf8():
    assert ok(build_v2(authority="bücher.example")).authority == "bücher.example"


def test_v2_crc32c_good():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    data = build_v2(("192.0.2.1", 1), ("198.51.100.7", 2), authority="a.example", crc=True)
    h = ok(data + IMAP_FIRST)
    assert struct.unpack("!I", h.tlvs[PP2_TYPE_CRC32C])[0] == crc32c(
        data[:-4] + b"\0\0\0\0")
    assert h.remainder == IMAP_FIRST


def test_v2_crc32c_not_last():
    body = V4_BLOCK + tlv(PP2_TYPE_CRC32C, b"\0\0\0\0") + tlv(PP2_TYPE_AUTHORITY, b"x.example")
    data = bytearray(v2_raw(0x21, 0x11, body))
    at = 16 + 12 + 3
    data[at:at + 4] = struct.pack("!I", crc32c(bytes(data)))
    assert ok(bytes(data)).authority == "x.example"


@pytest.mark.parametrize("offset", [13, 17, 27, 33, 39, 44])
def test_v2_crc32c_mismatch(offset):
    data = bytearray(build_v2(("192.0.2.1", 1), ("198.51.100.7", 2),
                              authority="a.example", crc=True))
    data[offset] ^= 0x01
    result = both(bytes(data))
    # Flipping byte 13 changes the family to something invalid; otherwise
    # the checksum no longer matches.
    assert isinstance(result, ProxyError)
    if offset != 13:
        assert "CRC32C mismatch" in result.reason


def test_v2_crc32c_wrong_size():
    body = V4_BLOCK + tlv(PP2_TYPE_CRC32C, b"\0\0\0")
    bad(v2_raw(0x21, 0x11, body), "CRC32C TLV of 3 bytes")


def test_v2_ssl_tlv_version_and_cn():
    value = ssl_tlv(client=PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, verify=0,
                    version="TLSv1.3", cn="alice@example.com",
                    cipher="TLS_AES_256_GCM_SHA384", extra=[(0x28, b"\x30\x82DER")])
    h = ok(build_v2(("192.0.2.1", 1), ("198.51.100.7", 2), tlvs=[(PP2_TYPE_SSL, value)]))
    ssl = h.ssl
    assert ssl.tls and ssl.cert_verified
    assert (ssl.version, ssl.cn, ssl.cipher) == ("TLSv1.3", "alice@example.com",
                                                 "TLS_AES_256_GCM_SHA384")
    assert ssl.sub_tlvs[0x28] == b"\x30\x82DER"
    assert h.tlvs[PP2_TYPE_SSL] == value


def test_v2_ssl_tlv_without_sub_tlvs_and_failed_verification():
    h = ok(build_v2(tlvs=[(PP2_TYPE_SSL, ssl_tlv(client=PP2_CLIENT_CERT_CONN, verify=1))]))
    assert not h.ssl.tls and not h.ssl.cert_verified
    assert h.ssl.cn is None and h.ssl.version is None


@pytest.mark.parametrize("body, why", [
    # TLVs overrunning the block, or cut short
    (V4_BLOCK + b"\x02\x00\x10abc", "TLV 0x02 of 16 bytes overruns the block"),
    (V4_BLOCK + tlv(0x01, b"h2") + b"\x02\x00", "truncated TLV header (2 bytes left)"),
    (V4_BLOCK + b"\x04", "truncated TLV header (1 bytes left)"),
    (V4_BLOCK + b"\xe0\xff\xff", "overruns the block"),
    # duplicates
    (V4_BLOCK + tlv(2, b"a.example") + tlv(2, b"b.example"), "TLV 0x02 appears twice"),
    (V4_BLOCK + tlv(0xE1, b"") + tlv(0xE1, b""), "TLV 0xe1 appears twice"),
    # AUTHORITY
    (V4_BLOCK + tlv(2, b""), "AUTHORITY of 0 bytes"),
    (V4_BLOCK + tlv(2, b"a" * 256), "AUTHORITY of 256 bytes"),
    (V4_BLOCK + tlv(2, b"\xff\xfe"), "AUTHORITY is not valid UTF-8"),
    (V4_BLOCK + tlv(2, b"a.example\r\nX: y"), "AUTHORITY contains control characters"),
    (V4_BLOCK + tlv(2, b"a\x00b"), "AUTHORITY contains control characters"),
    # UNIQUE_ID
    (V4_BLOCK + tlv(PP2_TYPE_UNIQUE_ID, b"u" * 129), "UNIQUE_ID of 129 bytes"),
    # SSL
    (V4_BLOCK + tlv(0x20, b"\x01\x00\x00\x00"), "SSL TLV of 4 bytes"),
    (V4_BLOCK + tlv(0x20, b"\x01\x00\x00\x00\x00\x22\x00\x09alice"),
     "SSL sub-TLV 0x22 of 9 bytes overruns the block"),
    (V4_BLOCK + tlv(0x20, b"\x01\x00\x00\x00\x00\x22"), "truncated SSL sub-TLV header"),
    (V4_BLOCK + tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x22, b"a") + tlv(0x22, b"b")),
     "SSL sub-TLV 0x22 appears twice"),
    (V4_BLOCK + tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(PP2_SUBTYPE_SSL_CN, b"\xc3(")),
     "SSL client CN is not valid UTF-8"),
    (V4_BLOCK + tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(PP2_SUBTYPE_SSL_VERSION, b"\x80")),
     "SSL version is not valid UTF-8"),
])
def test_v2_malformed_tlvs(body, why):
    bad(v2_raw(0x21, 0x11, body) + IMAP_FIRST, why)


def test_v2_tlv_block_is_bounded_by_len_not_by_what_follows():
    # The TLV claims 5 bytes; len ends the header after 2 of them. The
    # client's bytes after the header must not be read as TLV data.
    body = V4_BLOCK + b"\x02\x00\x05ab"
    bad(v2_raw(0x21, 0x11, body) + b"cdefgh", "overruns the block")


# ---------------------------------------------------------------- v2 invalid

@pytest.mark.parametrize("ver_cmd, fam, body, why", [
    (0x11, 0x11, V4_BLOCK, "unsupported version 1"),
    (0x31, 0x11, V4_BLOCK, "unsupported version 3"),
    (0x01, 0x11, V4_BLOCK, "unsupported version 0"),
    (0x22, 0x11, V4_BLOCK, "unknown command 2"),
    (0x2F, 0x11, V4_BLOCK, "unknown command 15"),
    (0x21, 0x13, V4_BLOCK, "invalid address family/protocol byte 0x13"),
    (0x21, 0x41, V4_BLOCK, "invalid address family/protocol byte 0x41"),
    (0x21, 0x01, V4_BLOCK, "invalid address family/protocol byte 0x01"),
    (0x21, 0x10, V4_BLOCK, "invalid address family/protocol byte 0x10"),
    (0x20, 0x23, V4_BLOCK, "invalid address family/protocol byte 0x23"),
    (0x21, 0x11, V4_BLOCK[:11], "length 11 is shorter than the 12-byte TCP4 address block"),
    (0x21, 0x21, V4_BLOCK, "length 12 is shorter than the 36-byte TCP6 address block"),
    (0x21, 0x31, bytes(215), "length 215 is shorter than the 216-byte UNIX_STREAM"),
    (0x20, 0x11, V4_BLOCK[:4], "length 4 is shorter than the 12-byte TCP4"),
])
def test_v2_malformed_header(ver_cmd, fam, body, why):
    bad(v2_raw(ver_cmd, fam, body) + IMAP_FIRST, why)


def test_v2_bad_bytes_are_refused_before_the_rest_arrives():
    parser = ProxyHeaderParser()
    assert parser.feed(V2_SIGNATURE) is None
    assert isinstance(parser.feed(b"\x13"), ProxyError)          # version 1
    parser = ProxyHeaderParser()
    assert parser.feed(V2_SIGNATURE + b"\x21") is None
    assert isinstance(parser.feed(b"\x99"), ProxyError)          # family


def test_v2_partial_header_then_eof():
    parser = ProxyHeaderParser()
    data = build_v2(("192.0.2.1", 1), ("198.51.100.7", 2))
    assert parser.feed(data[:20]) is None
    err = parser.feed_eof()
    assert isinstance(err, ProxyError) and "after 20 bytes" in err.reason
    assert parser.result == err
    with pytest.raises(RuntimeError):
        parser.feed(data[20:])
    with pytest.raises(RuntimeError):
        parser.feed_eof()


def test_feed_after_an_error_is_a_glue_bug():
    parser = ProxyHeaderParser()
    assert isinstance(parser.feed(b"x"), ProxyError)
    with pytest.raises(RuntimeError):
        parser.feed(b"y")


# ---------------------------------------------------------------- trust

def test_trusted():
    cidrs = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
    assert trusted("10.1.2.3", cidrs)
    assert trusted("192.0.2.7", cidrs)
    assert not trusted("192.0.2.8", cidrs)
    assert trusted("2001:db8::5", cidrs)
    assert not trusted("2001:db9::5", cidrs)
    assert trusted("::ffff:10.9.9.9", cidrs)          # dual-stack socket
    assert not trusted("::ffff:11.9.9.9", cidrs)
    assert not trusted("not an ip", cidrs)
    assert not trusted("10.0.0.1", [])
    nets = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    assert trusted("127.0.0.1", nets) and trusted("::1", nets)
    assert trusted("10.0.0.1", ["10.0.0.1/8"])         # host bits are tolerated
    with pytest.raises(ValueError):
        trusted("10.0.0.1", ["10.0.0.0/33"])


# ---------------------------------------------------------------- builders

def test_builders():
    assert build_v1(("192.0.2.1", 5), ("198.51.100.7", 143)) == \
        b"PROXY TCP4 192.0.2.1 198.51.100.7 5 143\r\n"
    assert build_v1(("2001:DB8::1", 5), ("::1", 143)) == b"PROXY TCP6 2001:db8::1 ::1 5 143\r\n"
    assert build_v1() == b"PROXY UNKNOWN\r\n"
    for call in (lambda: build_v1(("1.2.3.4", 1), ("::1", 2)),
                 lambda: build_v1(("1.2.3.4", 1), None),
                 lambda: build_v1(("1.2.3.4", 70000), ("1.2.3.4", 1)),
                 lambda: build_v2(("1.2.3.4", 1), ("::1", 2)),
                 lambda: build_v2(None, ("::1", 2)),
                 lambda: build_v2(tlvs=[(0x100, b"")])):
        with pytest.raises(ValueError):
            call()
    assert build_v2(command="LOCAL") == V2_SIGNATURE + b"\x20\x00\x00\x00"
