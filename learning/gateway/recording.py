"""Every answered exchange becomes a run, its reward pending until someone scores it.

How an exchange maps to a run:

- instruction: the last user message (a completion: the prompt);
- input: the rest of the conversation in order (system prompt and earlier turns, then an agent's
  tool calls and tool results after it), one `<role>: <content>` block per message,
  blank-line separated (a completion: empty);
- output: the answer's text (its first choice), then its tool calls as `name(arguments)` lines
  (`(empty answer)` when the model said nothing);
- messages and tools (chat): the whole exchange in OpenAI's format, the answer's message last
  (tool calls and tool results included), and the tools offered: what `make_sft --format
  messages` trains on;
- role, task_type, complexity, task_key: the route (a plain model name: role `gateway`);
- model: the model name requested; adapter_id and decision_id: what select_adapter chose;
- meta.gateway: backend, route level, stream or not, latency_ms, prompt_tokens,
  completion_tokens, finish_reason (`aborted`: the client left mid-stream), choices (n > 1).

A backend that fails is recorded only when the user opted in (`learnloop gateway
--record-failures`): a failed run, reward 0.0, output `(no answer: the backend failed)`, signals
backend_error holding the backend's message, finish_reason `error`.

Acknowledged means stored (`Recorder`): a run gets an id reserved beforehand
(learning/runs/ids.py), one writer thread stores the routing decision and the run in one
transaction, together with whatever else is queued by then (a group commit: one fsync for many
requests), and the gateway releases the answer carrying the run id only after that commit. On
shutdown the queue is written before the gateway exits.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, NamedTuple

from learning.gateway.answers import Reply
from learning.gateway.protocol import Call, text_of
from learning.routing.router import DecisionRow, insert_decision
from learning.runs import record
from learning.runs.ids import release_run_ids, reserve_run_ids
from learning.runs.messages import render_tool_calls
from learning.runs.schema import parse_run
from learning.store import Store

BLOCK = 100  # run ids reserved at a time; the writer reserves the next block when half is used

PLAIN_ROLE = "gateway"
AGENT = "gateway"
EMPTY = "(empty answer)"
BACKEND_FAILED = "(no answer: the backend failed)"


def split_messages(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(instruction, input) of a conversation: its last user message, and every other message in
    order (what came before it, then the tool calls and results of an agent's turn after it)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
    others = messages[:last] + messages[last + 1 :]
    return text_of(messages[last].get("content")), "\n\n".join(f"{m['role']}: {_said(m)}" for m in others)


def _said(message: dict[str, Any]) -> str:
    """A message as text: its content, then any tool calls it made."""
    text = text_of(message.get("content"))
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        text = "\n".join(filter(None, [text, render_tool_calls(calls)]))
    return text


def exchange_run(call: Call, reply: Reply, target: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The run an exchange is recorded as."""
    instruction, context = split_messages(call.messages) if call.kind == "chat" else (call.prompt, "")
    route = call.route
    output = reply.text
    if reply.tool_calls:
        output = "\n".join(filter(None, [output, render_tool_calls(reply.tool_calls)]))
    run = {
        "agent": AGENT,
        "role": route.role if route else PLAIN_ROLE,
        "task_type": route.task_type if route else None,
        "complexity": route.complexity if route else None,
        "task_key": route.task_key if route else None,
        "instruction": instruction,
        "input": context,
        "output": output or EMPTY,  # a run needs an output
        "reward": None,  # pending until scored: by the reward token's holder, or by the request's tests
        "model": call.model,
        "adapter_id": getattr(target, "adapter_id", None),
        "decision_id": getattr(target, "decision_id", None),
        "meta": {
            "gateway": {
                **meta,
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "finish_reason": reply.finish_reason,
                **({"choices": reply.choices} if reply.choices > 1 else {}),
            }
        },
    }
    if call.kind == "chat":  # the whole exchange, tool calls and results included; images named, not kept
        sent = [{**m, "content": text_of(m["content"])} if isinstance(m["content"], list) else m for m in call.messages]
        run["messages"] = [*sent, reply.message()]
        run["tools"] = call.tools
    return run


def failure_run(call: Call, target: Any, meta: dict[str, Any], error: str) -> dict[str, Any]:
    """The failed run a backend failure is recorded as (only with --record-failures)."""
    run = exchange_run(call, Reply(text=BACKEND_FAILED, finish_reason="error"), target, meta)
    run["reward"] = 0.0
    run["signals"] = {"backend_error": error[:2000]}
    run.pop("messages", None)  # no answer to learn from
    run.pop("tools", None)
    return run


class Item(NamedTuple):
    decision: DecisionRow | None
    run_id: int | None
    row: record.RunRow | None
    stored: Future | None = None  # set once the item is committed (or failed)


class Recorder:
    """Stores the gateway's decisions and runs from one writer thread, many per transaction.

    `submit` checks the run (the same checks as log_run), gives it its id and queues it with
    its decision; it returns at once, with a future that is done once the run is committed (the
    gateway releases an answer only then: a run id a client holds survives a crash). `flush`
    waits until everything queued so far is stored; `close` writes the rest, hands back unused
    ids and stops the thread."""

    def __init__(self, store: Store):
        self.store = store
        self.cond = threading.Condition()
        self.queue: list[Item] = []
        self.ids: deque[int] = deque()  # reserved, not handed out yet
        self.want_block, self.closed = True, False  # the first block is reserved at once, off any request
        self.reserving = False  # the writer is reserving a block now
        self.queued = self.written = 0  # items ever queued, items ever stored (or given up)
        self.commits = 0  # transactions the writer committed
        self.thread = threading.Thread(target=self._loop, name="learnloop-recorder", daemon=True)
        self.thread.start()

    def record(self, decision: DecisionRow | None, run: dict[str, Any], reward_token: str | None = None) -> int:
        """Queue a run (and the decision that routed it); returns the id it will be stored under."""
        return self.submit(decision, run, reward_token)[0]

    def submit(
        self, decision: DecisionRow | None, run: dict[str, Any], reward_token: str | None = None
    ) -> tuple[int, Future]:
        """Queue a run (and the decision that routed it); returns the id it will be stored under
        and a future done when it is (its exception: why it could not be).
        reward_token: the token handed out with a pending run (only its hash is stored)."""
        checked = parse_run(run)
        if checked.adapter_id:  # as log_run: an adapter the registry knows
            record.check_adapters(self.store, [checked.adapter_id])
        row = record.row_of(checked, reward_token=reward_token)
        with self.cond:
            self._await_ids()
            run_id = self.ids.popleft()
            self.want_block = self.want_block or (len(self.ids) < BLOCK // 2 and not self.reserving)
            stored: Future = Future()
            self._put(Item(decision, run_id, row, stored))
        return run_id, stored

    def _await_ids(self, wait_s: float = 60.0) -> None:
        """Ids at hand: the writer reserves the next block when half of one is used, so this waits
        only at a burst past it (or if the writer could not reserve: it tries again)."""
        deadline = time.monotonic() + wait_s
        while not self.ids:
            if self.closed or time.monotonic() > deadline:
                raise RuntimeError("the gateway's recorder has no run ids to give (is the database writable?)")
            self.want_block = self.want_block or not self.reserving
            self.cond.notify_all()
            self.cond.wait(0.5)

    def decision(self, decision: DecisionRow) -> None:
        """Queue a decision with no run (a backend failed and failures are not recorded)."""
        with self.cond:
            self._put(Item(decision, None, None))

    def _put(self, item: Item) -> None:
        if self.closed:
            raise RuntimeError("the gateway's recorder is closed")
        self.queue.append(item)
        self.queued += 1
        self.cond.notify_all()

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until everything queued so far is stored; False if that took longer than timeout."""
        with self.cond:
            target = self.queued
            return self.cond.wait_for(lambda: self.written >= target, timeout)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join()

    def _loop(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.queue or self.want_block or self.closed)
                batch, self.queue = self.queue, []
                want, self.want_block = self.want_block and not self.closed, False
                self.reserving = want
                closing = self.closed and not batch
                unused = list(self.ids) if closing else []
            if closing:
                self._release(unused)
                return
            block = self._write(batch, want)
            for item in batch:
                if item.stored is not None and not item.stored.done():
                    item.stored.set_result(item.run_id)
            with self.cond:
                self.ids.extend(block)
                self.reserving = False
                self.written += len(batch)
                self.cond.notify_all()

    def _write(self, batch: list[Item], want_block: bool) -> range:
        """Store a batch in one transaction (and reserve the next block of ids in it)."""
        try:
            with self.store.write() as conn:
                self._insert(conn, batch)
                block = reserve_run_ids(conn, BLOCK) if want_block else range(0)
            self.commits += 1
            return block
        except Exception as exc:  # noqa: BLE001 - one bad item must not cost the others: one by one
            if not batch:
                print(f"learnloop gateway: could not reserve run ids: {type(exc).__name__}: {exc}", file=sys.stderr)
            for item in batch:
                try:
                    with self.store.write() as conn:
                        self._insert(conn, [item])
                except Exception as err:  # noqa: BLE001 - reported, never the request's content
                    what = f"run {item.run_id}" if item.run_id else f"decision {item.decision and item.decision.id}"
                    print(f"learnloop gateway: {what} could not be stored: {type(err).__name__}", file=sys.stderr)
                    if item.stored is not None:
                        item.stored.set_exception(RuntimeError(f"{what} could not be stored: {type(err).__name__}"))
            return range(0)  # a block asked for is asked for again by the next request that needs it

    def _insert(self, conn: Any, batch: list[Item]) -> None:
        for item in batch:
            if item.decision is not None:
                insert_decision(conn, item.decision)
        runs = [(item.run_id, item.row) for item in batch if item.run_id is not None and item.row is not None]
        record.insert_runs(self.store, [row for _, row in runs], conn, ids=[run_id for run_id, _ in runs])

    def _release(self, unused: list[int]) -> None:
        if unused and unused == list(range(unused[0], unused[-1] + 1)):
            try:
                with self.store.write() as conn:
                    release_run_ids(conn, range(unused[0], unused[-1] + 1))
            except Exception:  # noqa: BLE001 - the ids stay a gap; nothing is lost
                pass
