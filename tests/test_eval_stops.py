"""Evaluation stops where serving stops: at stop strings (the role template's sections) and at
the chat template's end-of-turn tokens, and sanity prompts are asked as the adapter is served."""

from __future__ import annotations

import json

import pytest

from learning.data.templates import BUILTIN, render, template_stops
from learning.evaluate.serving import adapter_template, served_prompts, stop_strings
from learning.models.generate import cut_at_stop, end_of_turn_tokens
from learning.registry import adapters as registry
from tests.test_chat_loss import build_chatml
from tests.test_generate import build_tiny


class ForwardCalls:
    """Counts the model's forward passes: one per generated token."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self.hook)

    def hook(self, *_):
        self.calls += 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from learning.models.generate import load_model

    return load_model(build_tiny(tmp_path_factory.mktemp("stops") / "base"), device="cpu")


def test_generation_ends_early_at_a_stop_string(tiny):
    from learning.models.generate import generate

    model, tok = tiny
    counter = ForwardCalls(model)
    prompt = ["def total(values):\n    return"]
    full = generate(model, tok, prompt, max_new_tokens=24)[0]
    without = counter.calls
    assert without == 24 and len(full) > 12  # a random model does not end on its own
    stop = full[len(full) // 3 : len(full) // 3 + 2]
    counter.calls = 0
    cut = generate(model, tok, prompt, max_new_tokens=24, stop=[stop])[0]
    assert cut == cut_at_stop(full, [stop]) and len(cut) < len(full)
    assert 0 < counter.calls < without  # it stopped generating, not just cut the text afterwards
    counter.handle.remove()


def test_generation_ends_at_the_chat_templates_end_of_turn_token(tmp_path):
    """A ChatML model whose eos is <|endoftext|> (as Qwen bases have) and that answers
    <|im_end|> at once: it ends there where serving does, and runs on when only eos stops it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learning.models.generate import generate

    folder = build_chatml(tmp_path / "chatml", with_model=True)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.eos_token = "<|endoftext|>"
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert end_of_turn_tokens(tok)[:2] == ["<|endoftext|>", "<|im_end|>"]
    with torch.no_grad():  # layers that add nothing and a head that predicts <|im_end|> everywhere
        model.model.embed_tokens.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.convert_tokens_to_ids("<|im_end|>")] = 1.0
    counter = ForwardCalls(model)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert generate(model, tok, [prompt], max_new_tokens=10, add_special_tokens=False) == [""]
    at_turn_end = counter.calls
    counter.calls = 0
    generate(model, tok, [prompt], max_new_tokens=10, add_special_tokens=False, stop_at_turn_end=False)
    assert at_turn_end == 1 and counter.calls == 10
    counter.handle.remove()


def test_end_of_turn_tokens_of_the_embedded_and_chatml_tokenizers(tmp_path):
    from transformers import AutoTokenizer

    from learning.models.tinybase import build_base

    chatml = AutoTokenizer.from_pretrained(build_chatml(tmp_path / "c"))
    assert end_of_turn_tokens(chatml)[0] == "<|im_end|>"
    tiny = AutoTokenizer.from_pretrained(build_base(tmp_path / "t", "tiny"))
    assert end_of_turn_tokens(tiny) == ["</s>"]


def test_role_template_stops():
    assert template_stops(BUILTIN["coder"]) == [
        "\nWrite code that meets the specification.",
        "\n### Specification",
        "\n### Context",
        "\n### Code",
    ]
    assert template_stops("{instruction}\n\n{input}") == []
    assert stop_strings(BUILTIN["judge"], ["\n\n"])[:2] == [
        "\n\n",
        "\nReview the code against the task. Reply with a verdict (pass or fail) and the reasons.",
    ]
    answer = "def f():\n    return 1\n### Specification\nWrite another"
    assert cut_at_stop(answer, stop_strings(BUILTIN["coder"], [])) == "def f():\n    return 1"


def test_sanity_prompts_are_rendered_as_the_adapter_is_served(store):
    folder = store.home / "datasets" / "ds-x"
    folder.mkdir(parents=True)
    mine = "Task ({role}):\n{instruction}\n\n### Answer\n"
    (folder / "metadata.json").write_text(json.dumps({"template": {"source": "argument", "text": mine}}))
    from learning.data.datasets import insert_dataset

    insert_dataset(
        store,
        dict(id="ds-x", role="coder", kind="sft", format="messages", created=0.0, path=str(folder))
        | dict(train_rows=1, test_rows=1, content_hash="x"),
    )
    registry.create_adapter(store, "a1", "coder", "base", str(store.home / "a1"), status="trained", dataset_id="ds-x")
    registry.create_adapter(store, "a2", "coder", "base", str(store.home / "a2"), status="trained")
    a1, a2 = registry.get_adapter(store, "a1"), registry.get_adapter(store, "a2")
    # The template its training dataset recorded; else the role's own.
    assert adapter_template(store, a1) == mine
    assert adapter_template(store, a2) == BUILTIN["coder"]
    assert served_prompts(a1, mine, True, ["Add two numbers."]) == [
        [{"role": "user", "content": "Task (coder):\nAdd two numbers.\n\n### Answer"}]
    ]
    raw = served_prompts(a2, BUILTIN["coder"], False, ["Add two numbers."])
    assert raw == [render(BUILTIN["coder"], {"instruction": "Add two numbers."})] and raw[0].endswith("### Code\n")
    assert served_prompts(a2, None, False, ["Add."]) == ["Add."]
