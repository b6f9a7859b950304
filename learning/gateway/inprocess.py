"""The in-process backend: one base model loaded in this process, each adapter loaded once
beside it and switched per step (PEFT's set_adapter; disable_adapter for the base).

A request's prompt is tokenized first and checked against the model's context: a prompt that
leaves no room for an answer is refused (BadRequest, a 400) before anything is generated, and
max_tokens is clipped to the room left (finish_reason "length" when the answer reaches it).
Generation runs in one scheduler thread (learning/gateway/scheduler.py) that interleaves the
active requests a step at a time, each with its own KV cache and adapter, so a long prompt does
not stall the other clients. It ends at eos or as soon as the text holds one of the request's
stop strings (the text is cut there). A stream whose consumer goes away (the client
disconnected) or a cancelled complete() drops its request at its next step. torch,
transformers and peft are imported when the model first loads, not with the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from learning.data.formats import chat_messages
from learning.gateway.protocol import DEFAULT_MAX_TOKENS, BadRequest, Call, Generation
from learning.gateway.scheduler import Job, Scheduler, Stopped
from learning.models.generate import cut_at_stop, load_model, stop_token_ids

UNSET_LENGTH = 10**12  # transformers' model_max_length when the tokenizer does not know it (1e30)


class BackendError(Exception):
    """The backend could not answer: the gateway says 502 with this message."""


class InProcess:
    name = "inprocess"

    def __init__(self, base: str, device: str | None = None, *, interleave: bool = True):
        """interleave=False runs one request at a time, each to its end, its prompt in one step
        (the behaviour before the scheduler; bench/gateway_fairness.py compares the two)."""
        self.base, self.device = base, device
        self.model: Any = None
        self.tokenizer: Any = None
        self.adapters: set[str] = set()
        self.current: str | None = None  # the adapter last set active
        self.context: int | None = None  # the model's context in tokens (None: unknown)
        self.lock = threading.Lock()  # loading the model, once
        self.scheduler = Scheduler(self, interleave=interleave)

    def _load(self) -> None:
        with self.lock:
            if self.model is None:
                try:
                    model, self.tokenizer = load_model(self.base, device=self.device)
                except Exception as exc:  # noqa: BLE001 - a model that does not load is the backend's answer
                    raise BackendError(f"The in-process model failed to load: {type(exc).__name__}: {exc}") from exc
                self.context = context_of(model, self.tokenizer)
                self.model = model

    def use_adapter(self, adapter_id: str | None, adapter_path: str | None) -> contextlib.AbstractContextManager:
        """Switch to the adapter (loading it on first use), or switch adapters off for the base.
        Called by the scheduler thread before each step; the adapter set last is kept."""
        from peft import PeftModel

        if adapter_id is None or adapter_path is None:
            if isinstance(self.model, PeftModel):
                return self.model.disable_adapter()
            return contextlib.nullcontext()
        if adapter_id not in self.adapters:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(adapter_path, adapter_name=adapter_id)
            else:
                self.model = PeftModel.from_pretrained(self.model, adapter_path, adapter_name=adapter_id)
            self.model.eval()
            self.adapters.add(adapter_id)
            self.current = None
        if self.current != adapter_id:
            self.model.set_adapter(adapter_id)
            self.current = adapter_id
        return contextlib.nullcontext()

    def _job(self, call: Call, target: Any, pieces: bool) -> Job:
        """The request as a job: its prompt tokenized and checked against the context (in a
        worker thread: a long prompt takes a while to tokenize)."""
        self._load()
        tok = self.tokenizer
        if call.kind == "chat":
            tools = getattr(call, "tools", None)
            extra = {"tools": tools} if tools else {}
            messages = chat_messages(
                [_text_only(m, i) for i, m in enumerate(call.messages)]
            )  # as training rendered them
            try:
                text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
            except Exception as exc:  # noqa: BLE001 - the template refuses this conversation (raise_exception)
                raise BadRequest(f"The model's chat template refused the messages: {exc}", "messages") from None
            ids = tok(str(text), add_special_tokens=False)["input_ids"]
        else:
            ids = tok(call.prompt)["input_ids"]
        param = "messages" if call.kind == "chat" else "prompt"
        if not ids:
            raise BadRequest("The prompt is empty: there is nothing to answer.", param)
        room = None if self.context is None else self.context - len(ids)
        if room is not None and room < 1:
            raise BadRequest(
                f"The prompt is {len(ids)} tokens and the model's context is {self.context} tokens: "
                "no room is left for an answer. Shorten the prompt.",
                param,
            )
        wanted = call.max_tokens if call.max_tokens is not None else DEFAULT_MAX_TOKENS
        stops = [s for s in call.stop if s]
        return Job(
            ids=list(ids),
            max_new=max(1, min(wanted, room) if room is not None else wanted),
            deliver=_nobody,
            temperature=call.temperature or None,
            stops=stops,
            eos=frozenset(stop_token_ids(tok) or [tok.eos_token_id]),
            adapter=(target.adapter_id, target.adapter_path) if target is not None else (None, None),
            pieces=pieces,
        )

    async def _run(self, call: Call, target: Any, pieces: bool) -> AsyncGenerator[str | Generation, None]:
        """The job's pieces (when asked) and its Generation; the job is cancelled if this ends first."""
        job = await asyncio.to_thread(self._job, call, target, pieces)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue[object]()

        def deliver(item: object) -> None:  # from the scheduler thread
            loop.call_soon_threadsafe(queue.put_nowait, item)

        job.deliver = deliver
        self.scheduler.submit(job)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Stopped):
                    raise BackendError(str(item))
                if isinstance(item, BaseException):
                    raise BackendError(f"The in-process model failed: {type(item).__name__}: {item}") from item
                assert isinstance(item, (str, Generation))  # what a job delivers
                yield item
                if isinstance(item, Generation):
                    return
        finally:
            job.cancelled = True  # the consumer went away (or it is over): drop it at its next turn

    async def complete(self, call: Call, target: Any) -> Generation:
        items = self._run(call, target, pieces=False)
        try:
            async for item in items:
                if isinstance(item, Generation):
                    return item
        finally:
            await items.aclose()
        raise BackendError("The in-process model ended without an answer.")

    async def stream(self, call: Call, target: Any) -> AsyncIterator[str | Generation]:
        """Text pieces as they come (cut at the first stop string), then the Generation."""
        items = self._run(call, target, pieces=True)
        received = sent = ""
        hold = max((len(s) for s in call.stop), default=1) - 1  # a stop string may start in a piece
        gen = None
        try:
            async for item in items:
                if isinstance(item, Generation):
                    gen = item
                    break
                received += item
                kept = cut_at_stop(received, call.stop)
                safe = kept if len(kept) < len(received) else received[: len(received) - hold]
                if len(safe) > len(sent):
                    yield safe[len(sent) :]
                    sent = safe
        finally:
            await items.aclose()
        if gen is None:
            raise BackendError("The in-process model ended without an answer.")
        if gen.text.startswith(sent) and len(gen.text) > len(sent):
            yield gen.text[len(sent) :]
        yield gen

    async def aclose(self) -> None:
        """Stop the scheduler thread (the gateway is shutting down)."""
        await asyncio.to_thread(self.scheduler.close)


def context_of(model: Any, tokenizer: Any) -> int | None:
    """The model's context in tokens: its config's max_position_embeddings, else the tokenizer's
    model_max_length when it is a real one (transformers sets a huge number when unknown)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        return positions
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < UNSET_LENGTH:
        return length
    return None


def _nobody(item: object) -> None:
    """A job's deliver until its consumer is attached."""


def _text_only(message: dict[str, Any], i: int) -> dict[str, Any]:
    """A message whose content parts are all text, joined (the model here reads text only)."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    if any(part.get("type") != "text" for part in content):
        raise BadRequest(f"messages[{i}]: the in-process model reads text only (send images to a runtime).", "messages")
    return {**message, "content": "".join(part["text"] for part in content)}
