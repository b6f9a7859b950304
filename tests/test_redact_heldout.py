"""Redaction on the held-out corpus (tests/support/redact_heldout.py): provider token formats the rules
were not tuned on, in contexts with no secret-like name, must all go; realistic ordinary text
(lockfiles, SHAs, UUIDs, digests, base64 blobs, look-alike identifiers) must stay byte for byte."""

from __future__ import annotations

import pytest

from learning.data.redact import Redactor, redact
from tests.support.redact_heldout import heldout_secrets, realistic_code

HELDOUT = heldout_secrets()
REALISTIC = realistic_code()


@pytest.mark.parametrize("planted", HELDOUT, ids=[f"{p.name}-{i}" for i, p in enumerate(HELDOUT)])
def test_every_heldout_format_is_redacted(planted):
    out = redact(planted.text)
    assert planted.secret not in out
    assert f"[{planted.placeholder}]" in out


def test_heldout_corpus_covers_the_common_providers():
    names = {p.name.split("_")[0] for p in HELDOUT}
    for provider in (
        "aws", "github", "gitlab", "slack", "stripe", "gcp", "openai", "anthropic", "huggingface", "npm", "pypi",
        "sendgrid", "twilio", "shopify", "digitalocean", "azure", "jwt", "private", "mysql", "redis",
    ):  # fmt: skip
        assert provider in names, provider
    github = {p.secret.split("_")[0] for p in HELDOUT if p.name.startswith("github_")}
    assert github == {"ghp", "gho", "ghu", "ghs", "ghr", "github"}


@pytest.mark.parametrize("code", REALISTIC, ids=[f"{i}-{c.splitlines()[0][:30]}" for i, c in enumerate(REALISTIC)])
def test_realistic_ordinary_text_is_unchanged(code):
    assert redact(code) == code


def test_heldout_output_is_stable_under_a_second_pass():
    once = [redact(p.text) for p in HELDOUT]
    again = Redactor()
    assert [again(t) for t in once] == once and not again.counts


@pytest.mark.parametrize(
    "text",
    [
        "pip install sk-learn-helpers-for-integration-tests\n",  # kebab-case after "sk-": not an OpenAI key
        "TASK" + "0123456789abcdef" * 2 + "\n",  # "SK" + hex inside a word: not a Twilio key
        "digest = 'SK" + "0123456789abcdef" * 3 + "'\n",  # longer than a Twilio key: a hash
        "npm_config_registry=https://registry.npmjs.org/\n",
        "url = 'http://:8080/health'  # no credentials\n",
    ],
)
def test_lookalikes_stay(text):
    assert redact(text) == text
