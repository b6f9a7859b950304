"""The in-process backend: one base model loaded in this process, each adapter loaded once
beside it and switched per request (PEFT's set_adapter; disable_adapter for the base).

Generation ends at eos or as soon as the text holds one of the request's stop strings (the text
is cut there). It runs in a worker thread so the event loop keeps answering; one generation at a
time (the adapter switch and the weights are shared). torch, transformers and peft are
imported when the model first loads, not with the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from learning.gateway.protocol import Call, Generation
from learning.models.generate import cut_at_stop, load_model, stop_criteria, stop_token_ids


class BackendError(Exception):
    """The backend could not answer: the gateway says 502 with this message."""


class InProcess:
    name = "inprocess"

    def __init__(self, base: str, device: str | None = None):
        self.base, self.device = base, device
        self.model: Any = None
        self.tokenizer: Any = None
        self.adapters: set[str] = set()
        self.lock = threading.Lock()

    def _load(self) -> None:
        if self.model is None:
            self.model, self.tokenizer = load_model(self.base, device=self.device)

    def _use(self, adapter_id: str | None, adapter_path: str | None) -> contextlib.AbstractContextManager:
        """Switch to the adapter (loading it on first use), or switch adapters off for the base."""
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
        self.model.set_adapter(adapter_id)
        return contextlib.nullcontext()

    def _inputs(self, call: Call) -> Any:
        tok = self.tokenizer
        if call.kind == "chat":
            text = tok.apply_chat_template(call.messages, add_generation_prompt=True, tokenize=False)
            return tok(str(text), return_tensors="pt", add_special_tokens=False).to(self.model.device)
        return tok(call.prompt, return_tensors="pt").to(self.model.device)

    def _generate(self, call: Call, target: Any, streamer: Any = None) -> Generation:
        import torch
        from transformers import StoppingCriteriaList

        with self.lock:
            try:
                self._load()
                adapter = (target.adapter_id, target.adapter_path) if target is not None else (None, None)
                with self._use(*adapter), torch.inference_mode():
                    inputs = self._inputs(call)
                    sample = bool(call.temperature)
                    stops = [s for s in call.stop if s]  # generation ends once the text holds one
                    until = stop_criteria(self.tokenizer, stops, inputs["input_ids"].shape[1]) if stops else None
                    out = self.model.generate(
                        **inputs,
                        max_new_tokens=call.max_tokens,
                        do_sample=sample,
                        temperature=call.temperature if sample else None,
                        top_p=None,
                        top_k=None,
                        eos_token_id=stop_token_ids(self.tokenizer) or self.tokenizer.eos_token_id,
                        pad_token_id=self.tokenizer.pad_token_id,
                        stopping_criteria=StoppingCriteriaList([until]) if until else None,
                        streamer=streamer,
                    )
            except Exception as exc:  # noqa: BLE001 - any failure of the model is the backend's answer
                if streamer is not None:
                    streamer.end()
                raise BackendError(f"The in-process model failed: {type(exc).__name__}: {exc}") from exc
        new = out[0, inputs["input_ids"].shape[1] :]
        full = self.tokenizer.decode(new, skip_special_tokens=True)
        text = cut_at_stop(full, call.stop)
        finish = "length" if len(new) >= call.max_tokens and text == full else "stop"
        return Generation(text, int(inputs["input_ids"].shape[1]), int(len(new)), finish)

    async def complete(self, call: Call, target: Any) -> Generation:
        return await asyncio.to_thread(self._generate, call, target)

    async def stream(self, call: Call, target: Any) -> AsyncIterator[str | Generation]:
        """Text pieces as they come (cut at the first stop string), then the Generation."""
        from transformers import TextIteratorStreamer

        await asyncio.to_thread(self._ensure_tokenizer)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        task = asyncio.ensure_future(asyncio.to_thread(self._generate, call, target, streamer))
        pieces = _pieces(iter(streamer))
        received = sent = ""
        hold = max((len(s) for s in call.stop), default=1) - 1  # a stop string may start in a piece
        while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
            received += piece
            kept = cut_at_stop(received, call.stop)
            safe = kept if len(kept) < len(received) else received[: len(received) - hold]
            if len(safe) > len(sent):
                yield safe[len(sent) :]
                sent = safe
            if len(kept) < len(received):  # a stop string: the rest is not sent
                break
        gen = await task
        if gen.text.startswith(sent) and len(gen.text) > len(sent):
            yield gen.text[len(sent) :]
        yield gen

    def _ensure_tokenizer(self) -> None:
        with self.lock:
            self._load()


def _pieces(it: Iterator[str]) -> Iterator[str]:
    for piece in it:
        if piece:
            yield piece
