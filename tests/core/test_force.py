"""Forced variants: who may force, and that only an intact, unexpired token for this service and
this variant is honoured (property tests: any tampered byte, any other service or variant, any
time at or after the expiry is refused)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.force import MAX_VALUE_BYTES, ForcePolicy, forced_variant, mint, signature
from proxy.core.routing import Variant

KEY = b"k" * 32
NOW = 1_800_000_000.0
LATER = 1_800_003_600
TOKENS = ForcePolicy(trusted=False, key=KEY)
TRUSTED = ForcePolicy(trusted=True)
BOTH = ForcePolicy(trusted=True, key=KEY)

services = st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)
variants = st.sampled_from(list(Variant))
expiries = st.integers(min_value=int(NOW) + 1, max_value=10**12 - 1)


def token(service: str = "shop", variant: Variant = Variant.CANARY, exp: int = LATER) -> bytes:
    return mint(KEY, service, variant, exp).encode("ascii")


def test_the_signature_is_hmac_sha256_of_service_variant_and_expiry() -> None:
    expected = hmac.new(KEY, b"shop|canary|1800003600", hashlib.sha256).hexdigest()
    assert signature(KEY, "shop", "canary", LATER) == expected
    assert token() == f"canary;exp={LATER};sig={expected}".encode()


@pytest.mark.parametrize("variant", list(Variant))
def test_a_bare_variant_is_honoured_from_a_trusted_peer_only(variant: Variant) -> None:
    value = variant.value.encode()
    assert forced_variant(TRUSTED, "shop", value, True, NOW) is variant
    assert forced_variant(TRUSTED, "shop", value, False, NOW) is None
    # `trusted: false`: even a trusted peer needs a token.
    assert forced_variant(TOKENS, "shop", value, True, NOW) is None


def test_a_valid_token_is_honoured_from_any_peer_while_it_holds() -> None:
    assert forced_variant(TOKENS, "shop", token(), False, NOW) is Variant.CANARY
    assert forced_variant(BOTH, "shop", token(variant=Variant.STABLE), True, NOW) is Variant.STABLE
    assert forced_variant(TOKENS, "shop", token(exp=LATER), False, LATER - 0.5) is Variant.CANARY
    assert forced_variant(TOKENS, "shop", token(exp=LATER), False, LATER) is None


def test_a_token_needs_a_key_and_is_judged_by_itself_even_from_a_trusted_peer() -> None:
    assert forced_variant(TRUSTED, "shop", token(), True, NOW) is None
    forged = token()[:-1] + (b"0" if token()[-1:] != b"0" else b"1")
    assert forced_variant(BOTH, "shop", forged, True, NOW) is None


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"Canary",
        b"canary ",
        b"both",
        b"canary;exp=1800003600",
        b"canary;sig=" + b"0" * 64,
        b"canary;exp=01800003600;sig=" + b"0" * 64,
        b"canary;exp=-1;sig=" + b"0" * 64,
        b"canary;exp=1800003600;sig=" + b"A" * 64,
        b"canary;exp=1800003600;sig=" + b"0" * 63,
        b"canary;exp=1800003600;sig=" + b"0" * 65,
        b"canary" + b" " * MAX_VALUE_BYTES,
    ],
)
def test_malformed_values_are_refused_from_every_peer(value: bytes) -> None:
    assert forced_variant(BOTH, "shop", value, True, NOW) is None
    assert forced_variant(BOTH, "shop", value, False, NOW) is None


def test_a_value_longer_than_the_bound_is_refused_unread() -> None:
    long = token() + b";" + b"x" * MAX_VALUE_BYTES
    assert len(long) > MAX_VALUE_BYTES
    assert forced_variant(BOTH, "shop", long, True, NOW) is None


def test_mint_refuses_an_expiry_before_1970() -> None:
    with pytest.raises(ValueError, match="positive Unix time"):
        mint(KEY, "shop", Variant.CANARY, 0)


@given(services, variants, expiries)
def test_every_minted_token_is_honoured_before_its_expiry(
    service: str, variant: Variant, exp: int
) -> None:
    value = mint(KEY, service, variant, exp).encode()
    assert len(value) <= MAX_VALUE_BYTES
    assert forced_variant(TOKENS, service, value, False, NOW) is variant
    assert forced_variant(TOKENS, service, value, False, exp) is None


@given(services, variants, expiries, st.data())
def test_any_tampered_byte_is_refused(
    service: str, variant: Variant, exp: int, data: st.DataObject
) -> None:
    value = bytearray(mint(KEY, service, variant, exp).encode())
    index = data.draw(st.integers(0, len(value) - 1), label="index")
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != value[index]), label="byte")
    value[index] = replacement
    assert forced_variant(TOKENS, service, bytes(value), False, NOW) is None


@given(services, services, variants, expiries)
def test_a_token_for_another_service_is_refused(
    service: str, other: str, variant: Variant, exp: int
) -> None:
    value = mint(KEY, other, variant, exp).encode()
    assert (forced_variant(TOKENS, service, value, False, NOW) is not None) == (service == other)


@given(services, expiries)
def test_a_signature_for_the_other_variant_is_refused(service: str, exp: int) -> None:
    sig = signature(KEY, service, "stable", exp)
    value = f"canary;exp={exp};sig={sig}".encode()
    assert forced_variant(TOKENS, service, value, False, NOW) is None


@given(services, variants, expiries, st.binary(min_size=32, max_size=64))
def test_a_token_signed_with_another_key_is_refused(
    service: str, variant: Variant, exp: int, other: bytes
) -> None:
    value = mint(other, service, variant, exp).encode()
    assert (forced_variant(TOKENS, service, value, False, NOW) is not None) == (other == KEY)


@given(services, variants, st.integers(min_value=1, max_value=int(NOW)), st.floats(0, 1e6))
def test_an_expired_token_is_refused(
    service: str, variant: Variant, exp: int, after: float
) -> None:
    value = mint(KEY, service, variant, exp).encode()
    assert forced_variant(TOKENS, service, value, False, exp + after) is None
