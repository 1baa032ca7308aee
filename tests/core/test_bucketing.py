"""Bucketing: golden vectors, determinism across processes, range, uniformity, canonical ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.bucketing import BUCKETS, bucket_of, canonical_id

# Computed once from the documented formula; a change here moves users between variants.
GOLDEN = [
    ("", "alice", 328),
    ("", "", 1883),
    ("checkout-2026-11", "acme", 8549),
    ("checkout-2026-11", "ACME", 1517),
    ("checkout-2026-11", "globex", 6816),
    ("checkout-2026-11", "user-42", 5320),
    ("shop-demo", "staff", 5591),
    ("salt", "Zo\u00eb", 1061),
    ("salt", "Zoe\u0308", 1061),  # NFD form of the previous id
    ("salt", "  padded  ", 4766),
    ("salt", "東京", 8012),
    ("s\u00e9l", "🚀-tenant", 1627),
    ("a" * 40, "1234567890", 7040),
]


@pytest.mark.parametrize(("salt", "ident", "bucket"), GOLDEN)
def test_golden_vectors(salt: str, ident: str, bucket: int) -> None:
    assert bucket_of(salt, ident) == bucket


def test_formula_is_the_documented_one() -> None:
    raw = xxhash.xxh3_64_intdigest(b"checkout-2026-11\x00acme")
    assert bucket_of("checkout-2026-11", "acme") == raw % 10_000


@given(st.text(max_size=40), st.text(max_size=80))
def test_bucket_in_range(salt: str, ident: str) -> None:
    ident = ident.encode("utf-8", "replace").decode()  # lone surrogates are not identities
    salt = salt.encode("utf-8", "replace").decode()
    assert 0 <= bucket_of(salt, ident) < BUCKETS


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_canonical_variants_share_a_bucket(ident: str) -> None:
    variants = [ident, f"  {ident}\t", unicodedata.normalize("NFD", ident)]
    assert len({bucket_of("s", v) for v in variants}) == 1
    assert canonical_id(canonical_id(ident)) == canonical_id(ident)


def test_canonical_id_keeps_case_and_inner_spaces() -> None:
    assert canonical_id(" Acme Corp\n") == "Acme Corp"
    assert canonical_id("Zoe\u0308") == "Zo\u00eb"


IDS = ["alice", "bob", "東京", "🚀", "", "user-123456", "Zoë"]


def test_same_bucket_in_other_processes() -> None:
    script = (
        "import json, sys; from proxy.core.bucketing import bucket_of; "
        "print(json.dumps([bucket_of('salt-x', i) for i in json.loads(sys.argv[1])]))"
    )
    expected = [bucket_of("salt-x", i) for i in IDS]
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script, json.dumps(IDS)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(out.stdout) == expected


@pytest.mark.parametrize("salt", ["", "checkout-2026-11", "shop-demo"])
def test_near_uniform(salt: str) -> None:
    bins = 100
    n = 20_000
    counts = [0] * bins
    for i in range(n):
        counts[bucket_of(salt, f"user-{i}") * bins // BUCKETS] += 1
    expected = n / bins
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < 200  # 99 degrees of freedom: mean 99, sd 14


def test_new_salt_draws_a_new_cohort() -> None:
    ids = [f"tenant-{i}" for i in range(2_000)]
    first = {i for i in ids if bucket_of("v1", i) < 1_000}
    second = {i for i in ids if bucket_of("v2", i) < 1_000}
    assert len(first & second) < 60  # about 10% of 10% = 20 expected
