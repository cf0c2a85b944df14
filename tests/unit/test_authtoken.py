"""carbotui.core.authtoken: the ZM_AUTH_TOKEN format, and garbage never raising."""
from __future__ import annotations

import random

import pytest

from carbotui.core.authtoken import decode_token, encode_token, zimbra_id_from_token

ZID = "6d1bc2a4-50f0-4d4c-9c6e-0b7b8a3f2e11"


def test_encode_matches_the_documented_layout():
    token = encode_token(ZID, 1735689600000, key="abc123")
    x, y, hexdata = token.split("_", 2)
    assert (x, y) == ("0", "abc123")
    assert bytes.fromhex(hexdata) == (
        b"id=36:" + ZID.encode() + b";exp=13:1735689600000;type=6:zimbra;")


def test_round_trip():
    token = encode_token(ZID, 1735689600000)
    assert decode_token(token) == {"id": ZID, "exp": "1735689600000", "type": "zimbra"}
    assert decode_token(token.encode()) == decode_token(token)
    assert zimbra_id_from_token(token) == ZID


def test_real_zimbra_shaped_token_with_more_fields():
    data = (f"id=36:{ZID};exp=13:1735689600000;type=6:zimbra;u=36:{ZID};"
            "tid=10:1234567890;version=13:10.0.0_GA_123;csrf=1:1;").encode()
    fields = decode_token("1_d1b5c2e0f7aa_" + data.hex().upper())
    assert fields["version"] == "10.0.0_GA_123" and fields["csrf"] == "1"


def test_values_may_contain_separators_because_lengths_rule():
    data = b"id=5:a;b=c;x=0:;"
    assert decode_token("0_0_" + data.hex()) == {"id": "a;b=c", "x": ""}


def test_key_must_be_hex():
    with pytest.raises(ValueError):
        encode_token(ZID, 1, key="not hex")


def hexed(data: bytes) -> str:
    return "0_ab_" + data.hex()


@pytest.mark.parametrize("value", [
    "", "0", "0_", "0_ab", "0_ab_", "_ab_" + b"id=1:a;".hex(), "0__" + b"id=1:a;".hex(),
    "x_ab_" + b"id=1:a;".hex(), "0_zz_" + b"id=1:a;".hex(),
    "0_ab_" + b"id=1:a;".hex()[:-1],                    # odd hex length
    "0_ab_" + b"id=1:a;".hex() + "zz",
    "0_ab_6 964",                                        # fromhex would accept spaces
    hexed(b"id=2:a;"),                                   # declared length too long
    hexed(b"id=0:a;"),                                   # too short
    hexed(b"id=1:a"),                                    # no terminating ;
    hexed(b"id=1:a;junk"),                               # trailing bytes
    hexed(b"id=-1:a;"), hexed(b"id=+1:a;"), hexed(b"id=:a;"), hexed(b"id=99999:a;"),
    hexed(b"=1:a;"), hexed(b"i d=1:a;"), hexed(b"id1:a;"),
    hexed(b"id=1:a;id=1:b;"),                            # repeated field
    hexed(b"id=2:\xff\xfe;"),                            # not UTF-8
    "0_ab_" + "\u0663\u0663",                            # non-ASCII "digits"
    "0_ab_" + "a" * 5000,
    b"\xff\xfe", None, 42,
])
def test_malformed_tokens_are_none(value):
    assert decode_token(value) is None
    assert zimbra_id_from_token(value) is None


def test_id_must_look_like_a_uuid_to_route():
    assert zimbra_id_from_token(encode_token("user01@demo.test", 1)) is None
    assert zimbra_id_from_token(encode_token(ZID.upper(), 1)) is None
    assert zimbra_id_from_token(hexed(b"exp=1:1;")) is None


def test_fuzz_random_input_never_raises():
    rng = random.Random(20240601)
    good = encode_token(ZID, 1735689600000).encode()
    for _ in range(20000):
        kind = rng.random()
        if kind < 0.3:
            value = bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
        elif kind < 0.6:                      # mutate a valid token
            value = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                value[rng.randrange(len(value))] = rng.randrange(256)
            value = bytes(value)
        else:                                 # valid hex around random payloads
            payload = bytes(rng.choice(b"id=exp:;0123456789azAZ\x00\xff")
                            for _ in range(rng.randrange(40)))
            value = b"0_ab_" + payload.hex().encode()
        for candidate in (value, value.decode("latin-1")):
            result = decode_token(candidate)
            assert result is None or isinstance(result, dict)
            zimbra_id_from_token(candidate)
