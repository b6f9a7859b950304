"""Served prompt = trained prompt: what Ollama renders from the exported TEMPLATE (and the BOS
the runtime adds) is byte- and token-identical to what transformers' apply_chat_template gives
for the same conversation, for real tokenizers built here: a ChatML one whose BOS is
<|im_start|> and which adds no BOS (as SmolLM2's), a Llama-3-style one that adds
<|begin_of_text|>, and the embedded tiny base's SentencePiece one.

Ollama's side is learning.serve.gotemplate, a renderer of the Go-template subset the TEMPLATE
uses, following Ollama's template.Execute (system collected, .Messages).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from learning.data.templates import BUILTIN, render
from learning.serve import gotemplate as gt
from learning.serve.chat_template import USR, read_tokenizer
from learning.serve.served import SAMPLES, llamacpp_template, served_prompt
from tests.support.tiny import tiny_base

SMOL_TEMPLATE = (  # SmolLM2-Instruct's chat template (a default system prompt when none is given)
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (  # Meta-Llama-3-Instruct's chat template
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' "
    "+ message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (  # Gemma-3-style: the system prompt goes into the first user turn
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}"
    "{% endif %}{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + "
    "message['content'] + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<start_of_turn>model\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (  # the system prompt goes into the LAST user turn: no multi-turn Go form
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set system = '' %}{% set loop_messages = messages %}"
    "{% endif %}{% for message in loop_messages %}{% if message['role'] == 'user' %}{% if loop.last and system %}"
    "{{ '[INST] ' + system + '\n\n' + message['content'] + '[/INST]' }}{% else %}"
    "{{ '[INST] ' + message['content'] + '[/INST]' }}{% endif %}{% else %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)


def _bpe_tokenizer(folder: Path, specials: list[str], bos: str, eos: str, template: str, add_bos: bool):
    """A byte-level BPE tokenizer trained on a few lines, saved as transformers saves it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    lines = [m["content"] for conv in SAMPLES for m in conv] + ["def add(a, b):\n    return a + b\n"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(lines, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos)
    fast.chat_template = template
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from learning.store import Store

    root = tmp_path_factory.mktemp("tokenizers")
    chatml = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    llama3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    (root / "home").mkdir()
    store = Store(root / "home")
    try:
        tiny = Path(tiny_base(store).path)
    finally:
        store.close()
    return {
        "smollm2": _bpe_tokenizer(root / "smol", chatml, "<|im_start|>", "<|im_end|>", SMOL_TEMPLATE, False),
        "llama3": _bpe_tokenizer(root / "llama3", llama3, "<|begin_of_text|>", "<|eot_id|>", LLAMA3_TEMPLATE, True),
        "gemma": _bpe_tokenizer(root / "gemma", ["<bos>", "<eos>"], "<bos>", "<eos>", GEMMA_TEMPLATE, True),
        "tiny": tiny,
    }


CONVERSATIONS = [
    *SAMPLES,
    [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "Two"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "Three"},
    ],
]


def _served_ids(hf, tok: dict, text: str) -> list[int]:
    """The token ids a runtime feeds the model: its BOS (when it adds one), then the text with
    special tokens parsed."""
    return ([hf.bos_token_id] if tok["add_bos"] else []) + hf(text, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "llama3", "gemma", "tiny"])
def test_ollama_template_renders_the_chat_template(tokenizers, name):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tokenizers[name])
    tok = read_tokenizer(tokenizers[name])
    # the BOS flag read from the files is what the tokenizer does with plain text
    assert tok["add_bos"] == (hf("x")["input_ids"][0] == hf.bos_token_id), name
    served = served_prompt(tok)
    assert served["mode"] == "messages" and not served["warnings"], served
    for conv in CONVERSATIONS:
        trained = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        ollama = gt.ollama_prompt(served["template"], conv)
        assert (hf.bos_token if tok["add_bos"] else "") + ollama == trained, (name, conv)
        trained_ids = hf.apply_chat_template(conv, tokenize=True, add_generation_prompt=True, return_dict=True)
        assert _served_ids(hf, tok, ollama) == trained_ids["input_ids"], (name, conv)


def test_chatml_keeps_its_first_im_start(tokenizers):
    """SmolLM2's BOS is <|im_start|> and its GGUF adds none: the TEMPLATE must write it."""
    tok = read_tokenizer(tokenizers["smollm2"])
    assert tok["bos"] == "<|im_start|>" and tok["add_bos"] is False
    served = served_prompt(tok)
    assert served["template"].startswith("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ else }}")
    assert gt.ollama_prompt(served["template"], SAMPLES[0]).startswith("<|im_start|>system\nYou are a helpful")
    # a GGUF that does add BOS is served differently: the runtime's BOS, and a warning
    with_bos = served_prompt(tok, add_bos=True)
    assert any("adds BOS" in w for w in with_bos["warnings"]), with_bos["warnings"]


def test_role_prompt_and_system_round_trip(tokenizers):
    """The role's instruction template around each user turn and a Modelfile SYSTEM: Ollama's
    prompt equals the chat template over the wrapped turns, as the training rows held them."""
    from transformers import AutoTokenizer

    prompt = render(BUILTIN["coder"], {"instruction": USR}).replace(USR, "{{ .Prompt }}")
    for name in ("smollm2", "llama3", "tiny"):
        hf = AutoTokenizer.from_pretrained(tokenizers[name])
        tok = read_tokenizer(tokenizers[name])
        served = served_prompt(tok, prompt, system="Be brief.")
        assert served["mode"] == "messages", served
        for conv in CONVERSATIONS[:3]:
            rows = [
                {**m, "content": render(BUILTIN["coder"], {"instruction": m["content"]}).rstrip()}
                if m["role"] == "user"
                else m
                for m in conv
            ]
            if rows[0]["role"] != "system":
                rows = [{"role": "system", "content": "Be brief."}, *rows]
            trained = hf.apply_chat_template(rows, tokenize=False, add_generation_prompt=True)
            ollama = gt.ollama_prompt(served["template"], conv, model_system="Be brief.")
            assert (hf.bos_token if tok["add_bos"] else "") + ollama == trained, (name, conv)


def test_raw_adapters_serve_the_role_prompt():
    tok = {"chat_template": SMOL_TEMPLATE, "bos": "<|im_start|>", "eos": "<|im_end|>", "add_bos": False, "added": set()}
    prompt = render(BUILTIN["coder"], {"instruction": USR}).replace(USR, "{{ .Prompt }}")
    served = served_prompt(tok, prompt, raw=True)
    for instruction in ("Add two numbers.", "Use {{ braces }} and\nlines."):
        assert gt.ollama_prompt(served["template"], [{"role": "user", "content": instruction}]) == render(
            BUILTIN["coder"], {"instruction": instruction}
        )
    braces = served_prompt(tok, "Fill {{ .x }} in: {{ .Prompt }}\n", raw=True)  # a role text with Go syntax
    assert gt.ollama_prompt(braces["template"], [{"role": "user", "content": "y"}]) == "Fill {{ .x }} in: y\n"


def test_templates_without_a_multi_turn_form_fall_back_with_a_warning():
    tok = {"chat_template": MISTRAL_TEMPLATE, "bos": "<s>", "eos": "</s>", "add_bos": True, "added": set()}
    served = served_prompt(tok)
    assert served["mode"] == "single-turn" and "longer conversations will not" in served["warnings"][0]
    for conv in SAMPLES[:2]:
        from learning.serve.chat_template import render_chat

        assert gt.ollama_prompt(served["template"], conv) == render_chat(MISTRAL_TEMPLATE, conv, tok)[len("<s>") :]
    odd = {**tok, "chat_template": "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"}
    plain = served_prompt(odd)
    assert plain["mode"] == "plain" and plain["template"] == "{{ .Prompt }}"
    assert any("send prompts already rendered" in w for w in plain["warnings"])


def test_llamacpp_template_wraps_the_role_prompt(tokenizers):
    from transformers import AutoTokenizer

    prompt = render(BUILTIN["fixer"], {"instruction": USR}).replace(USR, "{{ .Prompt }}")
    hf = AutoTokenizer.from_pretrained(tokenizers["smollm2"])
    chat = llamacpp_template(read_tokenizer(tokenizers["smollm2"]), prompt)
    assert chat["template"] is not None and "add_bos_token=false" in chat["checks"][0]
    for conv in SAMPLES:
        rows = [
            {**m, "content": render(BUILTIN["fixer"], {"instruction": m["content"]}).rstrip()}
            if m["role"] == "user"
            else m
            for m in conv
        ]
        assert hf.apply_chat_template(
            conv, chat_template=chat["template"], tokenize=False, add_generation_prompt=True
        ) == hf.apply_chat_template(rows, tokenize=False, add_generation_prompt=True)


def test_go_subset_renderer():
    values = {"System": "", "Messages": [{"Role": "user", "Content": "hi"}], "Response": ""}
    assert gt.render("a {{- .System -}} b", values) == "ab"
    assert (
        gt.render('{{ range .Messages }}{{ if eq .Role "x" }}X{{ else if eq .Role "user" }}U{{ end }}{{ end }}', values)
        == "U"
    )
    assert gt.render("{{ range .Messages }}{{ .Content }}{{ else }}none{{ end }}", {"Messages": []}) == "none"
    assert gt.render(gt.literal("{{ .System }}"), values) == "{{ .System }}"
    assert gt.render("{{ if not .System }}no system{{ end }}", values) == "no system"
    for bad in ("{{ if .System }}open", "{{ end }}", '{{ template "x" }}', "{{ .System | printf }}"):
        with pytest.raises(ValueError):
            gt.render(bad, values)
    # Ollama's legacy path: one render per turn, the last cut at .Response
    legacy = "<{{ .Prompt }}>{{ .Response }}</a>"
    conv = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "r1"},
        {"role": "user", "content": "q2"},
    ]
    assert gt.ollama_prompt(legacy, conv) == "<q1>r1</a><q2>"


def test_export_records_what_is_served(store, tokenizers, tmp_path):
    """An Ollama export of an adapter on a ChatML base: the Modelfile keeps <|im_start|>, the
    checks say what was compared, and the llama.cpp chat template sits beside the GGUF."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from learning.registry.adapters import create_adapter
    from learning.serve.export import export_adapter

    base = tmp_path / "base"
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(cfg).save_pretrained(base)
    for f in tokenizers["smollm2"].iterdir():
        shutil.copy2(f, base / f.name)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(str(tmp_path / "adapter"))
    create_adapter(store, "chat-1", "coder", str(base), str(tmp_path / "adapter"), status="trained")
    result = export_adapter(store, "chat-1", "ollama", from_model="smollm2:135m")
    out = Path(result.out_dir)
    record = json.loads((out / "served-prompt.json").read_text())
    assert record["mode"] == "messages" and record["runtime_adds_bos"] is False
    assert "<|im_start|>system\n{{ .System }}" in (out / "Modelfile").read_text()
    assert any("byte-identical" in c for c in result.checks) and any(
        "llama.cpp chat template" in c for c in result.checks
    )
    assert "### Specification" in (out / "chat_template.jinja").read_text()
