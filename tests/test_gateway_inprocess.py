"""The in-process backend's scheduler, on a real (random, tiny) Llama and a trained LoRA: greedy
answers token for token what model.generate gives, with and without the adapter, while requests
interleave; prompts past the context refused before any work; a long request does not stall
short ones; a consumer that goes away ends its generation."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from learning.gateway.inprocess import BackendError, InProcess, context_of
from learning.gateway.protocol import BadRequest, Call, Generation
from tests.support.tiny_models import PROMPT, build_base, toy_rows, train_toy_adapter

pytestmark = pytest.mark.slow

CONTEXT = 1024
FILLER = "return 5 "  # a prompt's filler: a few tokens each time
PROMPTS = [
    "def f():\n",
    "### Task: write a function that returns 7\n### Code:\n",
    "x" * 12,
    PROMPT.format(n=3),  # the adapter's task
    FILLER * 150,  # over one prefill chunk (256 tokens)
]
LONG = PROMPTS[-1]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The random tiny base (with a chat template and a 1,024-token context), a LoRA trained a
    few steps on the toy task (short answers, ended by eos) and one with random weights (long
    answers, unlike the base's)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learning.models.tinybase import CHAT_TEMPLATE

    root = tmp_path_factory.mktemp("inprocess")
    base = build_base(root / "base")
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template, tok.model_max_length = CHAT_TEMPLATE, CONTEXT
    tok.save_pretrained(base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "max_position_embeddings": CONTEXT}))
    toy = train_toy_adapter(base, root / "toy", toy_rows(0, 8), steps=30)
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    noisy = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora)
    with torch.no_grad():
        for name, param in noisy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1.0)
    noisy.save_pretrained(str(root / "noisy"))
    return base, toy, root / "noisy"


@pytest.fixture(scope="module")
def backend(models):
    served = InProcess(str(models[0]), device="cpu")
    yield served
    asyncio.run(served.aclose())


def target(adapter: Path | None) -> Any:
    return None if adapter is None else SimpleNamespace(adapter_id=adapter.name, adapter_path=str(adapter))


def completion(prompt: str, max_tokens: int | None = 24, **kw) -> Call:
    return Call(kind="completion", model="m", prompt=prompt, max_tokens=max_tokens, **kw)


def chat(content: str, max_tokens: int = 24, **kw) -> Call:
    return Call(kind="chat", model="m", messages=[{"role": "user", "content": content}], max_tokens=max_tokens, **kw)


def reference(models: tuple[Path, ...], calls: list[tuple[Call, Path | None]]) -> list[str]:
    """What model.generate answers (learning.models.generate, one prompt a batch: no padding)."""
    from learning.models.generate import generate, load_model

    out = []
    for adapter in (None, *models[1:]):
        model, tok = load_model(models[0], adapter_path=adapter, device="cpu")
        for call, _ in (c for c in calls if c[1] == adapter):
            if call.kind == "chat":
                text = str(tok.apply_chat_template(call.messages, add_generation_prompt=True, tokenize=False))
                special = False
            else:
                text, special = call.prompt, True
            answer = generate(model, tok, [text], call.max_tokens or 0, call.stop, 1, add_special_tokens=special)
            out.append((call, answer[0]))
    order = {id(call): i for i, (call, _) in enumerate(calls)}
    return [a for _, a in sorted(out, key=lambda ca: order[id(ca[0])])]


async def answers(backend: InProcess, calls: Sequence[tuple[Call, Path | None]]) -> list[Generation]:
    return list(await asyncio.gather(*(backend.complete(call, target(adapter)) for call, adapter in calls)))


async def streamed(backend: InProcess, call: Call, adapter: Path | None = None) -> tuple[str, Generation]:
    text, gen = "", None
    async for item in backend.stream(call, target(adapter)):
        if isinstance(item, Generation):
            gen = item
        else:
            assert gen is None and item  # pieces first, never empty, then the Generation last
            text += item
    assert gen is not None
    return text, gen


def test_interleaved_greedy_answers_are_what_generate_gives(models, backend):
    adapters = (None, *models[1:])
    calls = [(completion(p), adapter) for p in PROMPTS for adapter in adapters]
    calls += [(chat("Write a function add"), adapter) for adapter in adapters]
    got = asyncio.run(answers(backend, calls))  # all at once: steps of every adapter interleave
    assert [g.text for g in got] == reference(models, calls)
    base, toy, noisy = got[0::3], got[1::3], got[2::3]
    assert all(b.text != t.text and b.text != n.text for b, t, n in zip(base, toy, noisy))  # each adapter counts
    assert all(g.completion_tokens == 24 and g.finish_reason == "length" for g in base + noisy)
    assert all(g.finish_reason == ("length" if g.completion_tokens == 24 else "stop") for g in toy)
    assert got[3 * PROMPTS.index(LONG)].prompt_tokens > 256  # the long prompt was prefilled in chunks

    # stop strings: a piece of each unstopped answer ends it there, as generate's stop criteria do
    stopped = [(replace(c, stop=[g.text[10:12]]), a) for (c, a), g in zip(calls, got) if len(g.text) > 12]
    got = asyncio.run(answers(backend, stopped))
    assert [g.text for g in got] == reference(models, stopped)
    assert all(g.finish_reason == "stop" and g.completion_tokens < 24 for g in got)


def test_a_stream_sends_the_answer_in_pieces(models, backend):
    whole = asyncio.run(backend.complete(completion(PROMPTS[1], 40), target(models[2])))
    text, gen = asyncio.run(streamed(backend, completion(PROMPTS[1], 40), models[2]))
    assert text == gen.text == whole.text and gen.completion_tokens == whole.completion_tokens
    stop = whole.text[20:23]
    text, gen = asyncio.run(streamed(backend, completion(PROMPTS[1], 40, stop=[stop]), models[2]))
    assert text == gen.text == whole.text[: whole.text.index(stop)] and gen.finish_reason == "stop"


def test_the_models_repetition_penalty_applies_as_in_generate(models, backend):
    from learning.models.generate import generate, load_model

    model, tok = load_model(models[0], device="cpu")
    model.generation_config.repetition_penalty = 1.5
    want = generate(model, tok, PROMPTS, 24, batch_size=1)
    served = InProcess(str(models[0]), device="cpu")
    try:
        asyncio.run(served.complete(completion("x", 1), None))  # loads the model
        served.model.generation_config.repetition_penalty = 1.5
        got = asyncio.run(answers(served, [(completion(p), None) for p in PROMPTS]))
    finally:
        asyncio.run(served.aclose())
    assert [g.text for g in got] == want
    plain = asyncio.run(backend.complete(completion(PROMPTS[0]), None))
    assert plain.text != want[0]  # the penalty changed the answer


def test_tools_reach_the_chat_template_and_its_refusal_is_a_bad_request(backend):
    from learning.models.tinybase import CHAT_TEMPLATE

    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    asyncio.run(backend.complete(completion("x", 1), None))  # loads the tokenizer
    try:
        backend.tokenizer.chat_template = "{% if tools %}{{ tools | tojson }}{% endif %}" + CHAT_TEMPLATE
        plain = asyncio.run(backend.complete(chat("add 1 and 2", 2), None))
        told = asyncio.run(backend.complete(chat("add 1 and 2", 2, tools=tools), None))
        assert told.prompt_tokens > plain.prompt_tokens + 10
        backend.tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
        with pytest.raises(BadRequest, match="roles must alternate") as refused:
            asyncio.run(backend.complete(chat("add", 2), None))
        assert refused.value.param == "messages"
    finally:
        backend.tokenizer.chat_template = CHAT_TEMPLATE


def test_text_parts_are_joined_images_refused_and_tool_arguments_rendered_as_in_training(backend):
    parts = [{"type": "text", "text": "add 1 "}, {"type": "text", "text": "and 2"}]
    joined = asyncio.run(
        backend.complete(
            Call(kind="chat", model="m", messages=[{"role": "user", "content": parts}], max_tokens=4), None
        )
    )
    assert joined.text == asyncio.run(backend.complete(chat("add 1 and 2", 4), None)).text
    image = [*parts, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    with pytest.raises(BadRequest, match="text only"):
        asyncio.run(backend.complete(Call(kind="chat", model="m", messages=[{"role": "user", "content": image}]), None))
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    history = [{"role": "user", "content": "add"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    backend.tokenizer.chat_template = (
        "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.arguments | tojson }}{% endfor %}"
        "{{ m.content or '' }}{% endfor %}"
    )
    try:  # the arguments reach the template as the object, as in training: not quoted twice
        rendered = asyncio.run(backend.complete(Call(kind="chat", model="m", messages=history, max_tokens=1), None))
        assert rendered.prompt_tokens == len(backend.tokenizer('add{"a": 1}', add_special_tokens=False)["input_ids"])
    finally:
        from learning.models.tinybase import CHAT_TEMPLATE

        backend.tokenizer.chat_template = CHAT_TEMPLATE


def test_requests_past_the_active_limit_wait_their_turn(backend):
    calls = [(completion(p, 8), None) for p in PROMPTS]
    want = [g.text for g in asyncio.run(answers(backend, calls))]
    backend.scheduler.limit = 2
    try:
        assert [g.text for g in asyncio.run(answers(backend, calls))] == want
    finally:
        backend.scheduler.limit = 16


def test_sampling_answers_within_max_tokens(backend):
    gen = asyncio.run(backend.complete(completion(PROMPTS[0], 12, temperature=1.0), None))
    assert 0 < gen.completion_tokens <= 12


def filler(backend: InProcess, tokens: int) -> str:
    """A prompt of about `tokens` tokens (at least)."""
    asyncio.run(backend.complete(completion("x", 1), None))  # loads the tokenizer
    per = len(backend.tokenizer(FILLER * 100)["input_ids"]) / 100
    text = FILLER * int(tokens / per)
    while len(backend.tokenizer(text)["input_ids"]) < tokens:
        text += FILLER
    return text


def test_a_prompt_past_the_context_is_refused_before_any_work(backend):
    long = filler(backend, CONTEXT)
    steps = backend.scheduler.steps
    for call in (completion(long), chat(long)):
        with pytest.raises(BadRequest) as refused:
            asyncio.run(backend.complete(call, None))
        assert f"context is {CONTEXT} tokens" in str(refused.value) and refused.value.param in ("prompt", "messages")
        with pytest.raises(BadRequest):
            asyncio.run(anext_of(backend.stream(call, None)))
    assert backend.scheduler.steps == steps  # nothing was generated


async def anext_of(items: Any) -> Any:
    return await items.__anext__()


def test_max_tokens_is_clipped_to_the_room_left(backend):
    prompt = filler(backend, CONTEXT - 12)
    n = len(backend.tokenizer(prompt)["input_ids"])
    for max_tokens in (100, None):  # None: the default 256, clipped too
        gen = asyncio.run(backend.complete(completion(prompt, max_tokens), None))
        assert gen.prompt_tokens == n and gen.completion_tokens == CONTEXT - n and gen.finish_reason == "length"


def test_the_context_is_the_configs_else_a_real_tokenizer_length():
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=2048))
    assert context_of(model, SimpleNamespace(model_max_length=512)) == 2048
    bare = SimpleNamespace(config=SimpleNamespace())
    assert context_of(bare, SimpleNamespace(model_max_length=512)) == 512
    assert context_of(bare, SimpleNamespace(model_max_length=int(1e30))) is None


async def long_and_short(backend: InProcess, long: Call, short: Call, shorts: int) -> dict[str, Any]:
    """A long request streamed; once it is generating, short requests one after another.
    Returns the short ones' latencies, the long one's time, and when each finished."""
    started = time.perf_counter()
    items = backend.stream(long, None)
    await items.__anext__()  # the long one has been prefilled and is generating
    ended: dict[str, Any] = {}

    async def drain() -> Generation:
        async for item in items:
            if isinstance(item, Generation):
                ended["long"] = time.perf_counter()
                return item
        raise AssertionError("no Generation")

    rest = asyncio.create_task(drain())
    latencies = []
    for _ in range(shorts):
        t = time.perf_counter()
        await backend.complete(short, None)
        ended["short"] = time.perf_counter()
        latencies.append(ended["short"] - t)
    gen = await rest
    return {"shorts": latencies, "long_s": ended["long"] - started, "gen": gen, **ended}


def test_a_long_request_does_not_stall_short_ones(models, backend):
    long = completion(filler(backend, 700), 300)
    short = completion(PROMPTS[0], 4)
    fair = asyncio.run(long_and_short(backend, long, short, 3))
    assert fair["gen"].completion_tokens == 300  # the premise: the long one ran to its max_tokens
    assert fair["short"] < fair["long"]  # every short one was answered while the long one went on
    assert statistics.median(fair["shorts"]) < fair["long_s"] / 5

    serial = InProcess(str(models[0]), device="cpu", interleave=False)  # the old behaviour, for contrast
    try:
        one = asyncio.run(long_and_short(serial, long, short, 1))
    finally:
        asyncio.run(serial.aclose())
    assert one["short"] > one["long"]  # the short one waited for the whole long one


def test_a_stream_closed_early_ends_its_generation(backend):
    backend.scheduler.finished.clear()
    call = completion(PROMPTS[1], 600)  # clipped to the room left, still hundreds of steps

    async def scenario() -> float:
        items = backend.stream(call, None)
        await items.__anext__()
        await items.aclose()  # the client went away
        t = time.perf_counter()
        await backend.complete(completion(PROMPTS[0], 4), None)
        return time.perf_counter() - t

    asyncio.run(scenario())
    cancelled = [j for j in backend.scheduler.finished if j.outcome == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0].steps < 20 < cancelled[0].max_new
    assert [j.outcome for j in backend.scheduler.finished][-1] == "length"  # the next one ran to its end


def test_a_cancelled_completion_ends_its_generation(backend):
    backend.scheduler.finished.clear()

    async def scenario() -> None:
        task = asyncio.create_task(backend.complete(completion(PROMPTS[1], 600), None))
        steps = backend.scheduler.steps
        while backend.scheduler.steps < steps + 3:  # it is generating
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if backend.scheduler.finished:
                return
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    job = backend.scheduler.finished[-1]
    assert job.outcome == "cancelled" and job.steps < 100 < job.max_new


def test_a_failing_adapter_is_a_backend_error_and_the_rest_go_on(tmp_path, backend):
    broken = SimpleNamespace(adapter_id="missing", adapter_path=str(tmp_path / "missing"))
    with pytest.raises(BackendError, match="in-process model failed"):
        asyncio.run(backend.complete(completion(PROMPTS[0], 4), broken))
    assert asyncio.run(backend.complete(completion(PROMPTS[0], 4), None)).completion_tokens == 4


def test_the_scheduler_stops_with_the_gateway_and_starts_again(backend):
    asyncio.run(backend.aclose())
    assert backend.scheduler.thread is None
    assert asyncio.run(backend.complete(completion(PROMPTS[0], 4), None)).completion_tokens == 4
