"""Redaction on the labelled corpus: every planted secret goes, ordinary code stays byte for byte."""

from __future__ import annotations

from collections import Counter

import pytest

from learning.data.redact import TYPES, Redactor, looks_secret, redact
from tests.support.redact_corpus import ORDINARY_CODE, planted_secrets

PLANTED = planted_secrets()


@pytest.mark.parametrize("planted", PLANTED, ids=[f"{p.name}-{i}" for i, p in enumerate(PLANTED)])
def test_every_planted_secret_is_replaced_by_its_typed_placeholder(planted):
    out = redact(planted.text)
    assert planted.secret not in out
    assert f"[{planted.placeholder}]" in out


def test_corpus_covers_every_type_and_provider():
    assert {p.placeholder for p in PLANTED} == set(TYPES)
    names = " ".join(p.name for p in PLANTED)
    for provider in (
        "aws",
        "gcp",
        "azure",
        "github",
        "gitlab",
        "slack",
        "stripe",
        "openai",
        "anthropic",
        "huggingface",
        "jwt",
        "private_key",
        "postgres",
        "url_token",
        "generic",
        "email",
        "phone",
    ):
        assert provider in names, provider


@pytest.mark.parametrize("code", ORDINARY_CODE, ids=[c.splitlines()[0][:40] for c in ORDINARY_CODE])
def test_ordinary_code_is_unchanged(code):
    assert redact(code) == code


def test_counts_by_type_and_context_kept():
    counts: Counter = Counter()
    text = (
        "conn = 'postgresql://app:s3cretPassw0rd@db:5432/x'  # owner: ana@example.org\n"
        "OPENAI_API_KEY=sk-proj-" + "a1B2" * 12 + "\ncall +1 415 555 2671\n"
    )
    out = redact(text, counts)
    assert out == (
        "conn = 'postgresql://app:[PASSWORD]@db:5432/x'  # owner: [EMAIL]\nOPENAI_API_KEY=[API_KEY]\ncall [PHONE]\n"
    )
    assert counts == {"PASSWORD": 1, "EMAIL": 1, "API_KEY": 1, "PHONE": 1}


def test_redactor_accumulates_and_is_idempotent():
    r = Redactor()
    once = "".join(r(p.text) for p in PLANTED)
    assert sum(r.counts.values()) >= len(PLANTED)
    again = Redactor()
    assert again(once) == once and not again.counts  # placeholders are never redacted again


@pytest.mark.parametrize(
    "value, secret",
    [
        ("hunter2hunter2", True),
        ("Zx81kQ0pL2mN", True),
        ("correcthorsebatterystaple", False),
        ("settings.API_KEY", False),
        ("changeme", False),
        ("<your-token>", False),
        ("${SECRET}", False),
        ("short1", False),
        ("db-credentials", False),
        ("xxxxxxxxxxxxxxxx", False),
    ],
)
def test_generic_values(value, secret):
    assert looks_secret(value) is secret


def test_provider_prefix_inside_a_word_is_not_a_key():
    text = "subtask-" + "abcdefghij" * 3 + " and mask_live_" + "x1" * 10
    assert redact(text) == text


def test_quoted_letters_only_secret_needs_mixed_case_and_entropy():
    assert looks_secret("correcthorseBatteryStapleQ", quoted=True)
    assert not looks_secret("correcthorseBatteryStapleQ")  # bare: could be a name
    assert not looks_secret("DATABASE_PASSWORD", quoted=True)
