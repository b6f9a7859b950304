"""Reward tokens: who may give a pending run its reward.

A run recorded without a reward (log_run without one, or an exchange the gateway answered) is
handed out with a reward token: a random capability, returned once with the run id (log_run's
`reward_token`, the gateway's `x-learnloop-reward-token` header). Only its sha256 is stored on
the run; log_reward with the token fills the reward once (learning/runs/rewards.py).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 24  # 192 random bits, 32 characters of URL-safe base64


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What the run stores of its token: the hex sha256 of its UTF-8 text."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Does the token given hash to the one stored (compared in constant time)?"""
    return hmac.compare_digest(token_hash(token), stored_hash)
