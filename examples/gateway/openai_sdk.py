"""Call the learnloop gateway with the openai Python SDK, then score the exchange.

    learnloop gateway                       # in another terminal
    python examples/gateway/openai_sdk.py

LEARNLOOP_GATEWAY (default http://127.0.0.1:8766/v1) and LEARNLOOP_TOKEN (needed when the gateway
is bound beyond loopback) say where and how to connect.
"""

from __future__ import annotations

import os

import httpx
from openai import OpenAI


def ask_and_score(base_url: str, token: str, prompt: str, reward: float) -> tuple[str, int]:
    """One routed chat call (role coder, task type python), then its reward posted back."""
    client = OpenAI(base_url=base_url, api_key=token)
    raw = client.chat.completions.with_raw_response.create(
        model="learnloop/coder/python", messages=[{"role": "user", "content": prompt}], max_tokens=32
    )
    answer, run_id = raw.parse(), int(raw.headers["x-learnloop-run-id"])
    reward_token = raw.headers["x-learnloop-reward-token"]  # lets this client score this run, once
    # Score it once you know how it went (tests passed, the user kept the edit, ...).
    scored = httpx.post(
        f"{base_url}/learnloop/runs/{run_id}/reward",
        json={"reward": reward, "reward_token": reward_token},
        headers={"authorization": f"Bearer {token}"},
    )
    scored.raise_for_status()
    return answer.choices[0].message.content or "", run_id


if __name__ == "__main__":
    url = os.environ.get("LEARNLOOP_GATEWAY", "http://127.0.0.1:8766/v1")
    text, run = ask_and_score(url, os.environ.get("LEARNLOOP_TOKEN", "unused"), "Write a function add(a, b).", 1.0)
    print(f"run {run}: {text!r}")
