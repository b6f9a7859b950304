"""The in-process backend's generation loop: one thread owns the model and advances every active
request in turn, one step each, so one long request does not stall the rest.

A step is one forward pass of one request with its own KV cache, under its own adapter: a chunk of
its prompt (CHUNK tokens; a long prompt takes several turns) or one new token. Requests are taken
round-robin, up to ACTIVE at once (the others wait in order); a request whose consumer went away
(`Job.cancelled`) is dropped at its next turn. Greedy decoding is the argmax of the last logits
(with the model's generation_config repetition_penalty, as generate applies it), so answers are
token for token what `model.generate` gives; with a temperature, softmax(logits / temperature)
is sampled.

Each job reports from this thread through its `deliver` callback: text pieces as they become
stable (when asked), then its Generation, or the exception that ended it. torch is imported in
the thread.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from learning.gateway.protocol import Generation
from learning.models.generate import cut_at_stop

CHUNK = 256  # prompt tokens per prefill step
KEPT = 64  # finished jobs kept in Scheduler.finished (their counts, not their caches)
ACTIVE = 16  # jobs that take turns at once (each holds a KV cache); later ones wait their turn in order


class Stopped(Exception):
    """The scheduler was closed before the job was answered."""


class Owner(Protocol):
    """What the scheduler needs from the backend that loaded the model."""

    model: Any
    tokenizer: Any

    def use_adapter(self, adapter_id: str | None, adapter_path: str | None) -> contextlib.AbstractContextManager: ...


@dataclass(eq=False)
class Job:
    """One request: its prompt's token ids and how to answer it, then its state as it runs."""

    ids: list[int]
    max_new: int
    deliver: Callable[[object], None]  # a str piece, the Generation, or the exception that ended it
    temperature: float | None = None
    stops: list[str] = field(default_factory=list)
    eos: frozenset[int] = frozenset()
    adapter: tuple[str | None, str | None] = (None, None)
    pieces: bool = True  # deliver text pieces as they come (a stream), not only the Generation
    cancelled: bool = False  # set by the consumer; the job is dropped at its next turn
    steps: int = 0  # forward passes run for it
    outcome: str = ""  # once finished: stop, length, cancelled or failed
    prompt_tokens: int = 0  # once finished (its token lists are then dropped)
    completion_tokens: int = 0
    new: list[int] = field(default_factory=list)
    prefilled: int = 0
    cache: Any = None
    sent: int = 0  # incremental decoding: new[sent:read] is text already given out
    read: int = 0


class Scheduler:
    """The thread that runs jobs; started on the first submit, stopped by close()."""

    def __init__(self, owner: Owner, interleave: bool = True, chunk: int = CHUNK, active: int = ACTIVE):
        self.owner, self.interleave, self.chunk, self.limit = owner, interleave, chunk, active
        self.cond = threading.Condition()
        self.pending: list[Job] = []
        self.thread: threading.Thread | None = None
        self.closing = False
        self.finished: collections.deque[Job] = collections.deque(maxlen=KEPT)
        self.steps = 0  # forward passes, all jobs together
        self.takes: set[str] | None = None  # the model's forward's parameters

    def submit(self, job: Job) -> None:
        with self.cond:
            self.closing = False
            self.pending.append(job)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="inprocess-generation", daemon=True)
                self.thread.start()
            self.cond.notify()

    def close(self, timeout: float = 30) -> None:
        """Stop the thread: jobs still queued or running get a Stopped."""
        with self.cond:
            self.closing = True
            self.cond.notify()
            thread = self.thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        active: list[Job] = []
        while True:
            with self.cond:
                while not self.pending and not active and not self.closing:
                    self.cond.wait()
                if self.closing:
                    for job in active + self.pending:
                        self._end(job, "failed", Stopped("The gateway is shutting down."))
                    self.pending.clear()
                    self.thread = None
                    return
                taken = self.pending[: max(0, self.limit - len(active))]
                del self.pending[: len(taken)]
                active.extend(taken)
            for job in active[:1] if not self.interleave else list(active):
                if self._turn(job):
                    active.remove(job)

    def _turn(self, job: Job) -> bool:
        """One step of `job`; True when it is over (answered, cancelled or failed)."""
        if job.cancelled:
            self._end(job, "cancelled")
            return True
        try:
            if not self._step(job):
                return False
            answer = self._generation(job)
        except Exception as exc:  # noqa: BLE001 - any failure of the model is this request's answer
            self._end(job, "failed", exc)
            return True
        self._end(job, job.outcome, answer)
        return True

    def _end(self, job: Job, outcome: str, item: object = None) -> None:
        """Finish `job` (kept in `finished` with its counts only) and give out its last item."""
        job.outcome, job.cache = outcome, None
        job.prompt_tokens, job.completion_tokens, job.ids, job.new = len(job.ids), len(job.new), [], []
        self.finished.append(job)
        if item is not None:
            self._deliver(job, item)

    def _deliver(self, job: Job, item: object) -> None:
        try:
            job.deliver(item)
        except RuntimeError:  # the consumer's event loop is closed: nobody is waiting
            job.cancelled = True

    def _step(self, job: Job) -> bool:
        """One forward pass: the next chunk of the prompt, or one new token. True when finished."""
        import torch

        owner = self.owner
        if job.prefilled < len(job.ids):
            size = len(job.ids) if not self.interleave else self.chunk
            feed = job.ids[job.prefilled : job.prefilled + size]
        else:
            feed = job.new[-1:]
        with owner.use_adapter(*job.adapter):
            model = owner.model
            with torch.inference_mode():
                takes = self._takes(model)
                cache = "cache" if "cache" in takes else "past_key_values"  # renamed in transformers 5.2x
                kwargs: dict[str, Any] = {cache: job.cache}
                if "logits_to_keep" in takes:  # only the last position's logits are needed
                    kwargs["logits_to_keep"] = 1
                out = model(input_ids=torch.tensor([feed], device=model.device), use_cache=True, **kwargs)
        job.steps += 1
        self.steps += 1
        job.cache = getattr(out, cache)
        if job.prefilled < len(job.ids):
            job.prefilled += len(feed)
            if job.prefilled < len(job.ids):
                return False
        token = self._pick(job, out.logits[0, -1, :])
        job.new.append(token)
        if job.pieces:
            piece = self._piece(job)
            if piece:
                self._deliver(job, piece)
        if token in job.eos or self._holds_stop(job):
            job.outcome = "stop"
        elif len(job.new) >= job.max_new:
            job.outcome = "length"
        return bool(job.outcome)

    def _takes(self, model: Any) -> set[str]:
        """The parameters of the model's forward (a PEFT model's: its base model's)."""
        if self.takes is None:
            import inspect

            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            self.takes = set(inspect.signature(base.forward).parameters)
        return self.takes

    def _pick(self, job: Job, logits: Any) -> int:
        import torch

        scores = logits.float()
        penalty = getattr(getattr(self.owner.model, "generation_config", None), "repetition_penalty", None)
        if penalty not in (None, 1.0):  # as generate applies the model's generation_config
            seen = torch.tensor(job.ids + job.new, device=scores.device)
            picked = scores.gather(0, seen)
            scores = scores.scatter(0, seen, torch.where(picked < 0, picked * penalty, picked / penalty))
        if job.temperature:
            probs = torch.softmax(scores / job.temperature, dim=-1)
            return int(torch.multinomial(probs, 1).item())
        return int(torch.argmax(scores).item())

    def _holds_stop(self, job: Job) -> bool:
        """Whether the new text now holds a stop string: only the last tokens are decoded (a stop
        string of n characters that has just appeared lies within the last n + 1 tokens)."""
        if not job.stops:
            return False
        window = max(len(s) for s in job.stops) + 1
        text = self.owner.tokenizer.decode(job.new[-window:], skip_special_tokens=True)
        return any(s in text for s in job.stops)

    def _piece(self, job: Job) -> str:
        """The text the new token adds, once it is stable (not the start of a multi-byte
        character): new[sent:] decoded, less new[sent:read] decoded, as vLLM detokenizes."""
        decode = self.owner.tokenizer.decode
        before = decode(job.new[job.sent : job.read], skip_special_tokens=True)
        text = decode(job.new[job.sent :], skip_special_tokens=True)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        job.sent, job.read = job.read, len(job.new)
        return text[len(before) :]

    def _generation(self, job: Job) -> Generation:
        full = self.owner.tokenizer.decode(job.new, skip_special_tokens=True)
        text = cut_at_stop(full, job.stops)
        return Generation(text, len(job.ids), len(job.new), job.outcome)
