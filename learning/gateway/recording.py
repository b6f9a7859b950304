"""Every answered exchange becomes a run, its reward pending until someone scores it.

How an exchange maps to a run:

- instruction: the last user message (a completion: the prompt);
- input: the conversation before it (system prompt and earlier turns), one
  `<role>: <content>` block per message, blank-line separated (a completion: empty);
- output: the answer the gateway sent (`(empty answer)` when the model said nothing);
- role, task_type, complexity, task_key: the route (a plain model name: role `gateway`);
- model: the model name requested; adapter_id and decision_id: what select_adapter chose;
- meta.gateway: backend, route level, stream or not, latency_ms, prompt_tokens,
  completion_tokens, finish_reason.

A backend that fails is recorded only when the user opted in (`learnloop gateway
--record-failures`): a failed run, reward 0.0, output `(no answer: the backend failed)`, signals
backend_error holding the backend's message, finish_reason `error`.
"""

from __future__ import annotations

from typing import Any

from learning.gateway.protocol import Call, Generation
from learning.runs import record
from learning.store import Store

PLAIN_ROLE = "gateway"
AGENT = "gateway"
EMPTY = "(empty answer)"
BACKEND_FAILED = "(no answer: the backend failed)"


def split_messages(messages: list[dict[str, str]]) -> tuple[str, str]:
    """(instruction, input) of a conversation: its last user message, and what came before it."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
    before = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages[:last])
    return messages[last]["content"], before


def log_exchange(store: Store, call: Call, gen: Generation, target: Any, meta: dict[str, Any]) -> int:
    """Record one answered exchange as a run, its reward pending; returns its id."""
    return record.log_run(store, exchange_run(call, gen, target, meta)).run_id


def log_failure(store: Store, call: Call, target: Any, meta: dict[str, Any], error: str) -> int:
    """Record an exchange the backend failed (only when the user opted in: --record-failures) as
    a failed run: reward 0.0, output BACKEND_FAILED, signals backend_error (its message)."""
    run = exchange_run(call, Generation(BACKEND_FAILED, 0, 0, "error"), target, meta)
    run["reward"] = 0.0
    run["signals"] = {"backend_error": error[:2000]}
    return record.log_run(store, run).run_id


def exchange_run(call: Call, gen: Generation, target: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The run an exchange is recorded as."""
    instruction, context = split_messages(call.messages) if call.kind == "chat" else (call.prompt, "")
    route = call.route
    run = {
        "agent": AGENT,
        "role": route.role if route else PLAIN_ROLE,
        "task_type": route.task_type if route else None,
        "complexity": route.complexity if route else None,
        "task_key": route.task_key if route else None,
        "instruction": instruction,
        "input": context,
        "output": gen.text or EMPTY,  # a run needs an output
        "reward": None,  # pending until scored: log_reward, the reward endpoint, or the request's tests
        "model": call.model,
        "decision_id": getattr(target, "decision_id", None),
        "meta": {
            "gateway": {
                **meta,
                "prompt_tokens": gen.prompt_tokens,
                "completion_tokens": gen.completion_tokens,
                "finish_reason": gen.finish_reason,
            }
        },
    }
    return run


def set_reward(store: Store, run_id: int, reward: Any, signals: Any = None, tests: Any = None) -> None:
    """Score a gateway run afterwards (learning.runs.record.set_reward)."""
    record.set_reward(store, run_id, reward, signals=signals, tests=tests)
