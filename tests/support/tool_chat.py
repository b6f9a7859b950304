"""Chat bases for the chat-format tests: a tokenizer (and, when asked, a 2-layer Llama) built in
seconds around a chat template, and a Qwen2.5-style template that supports tools, with runs
whose exchanges call them.

TOOLS_CHATML follows Qwen2.5-Instruct's layout: the tools' JSON schemas go into the system turn,
an assistant's calls are written as `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
after its text (the arguments through `tojson`, as an object), and tool results go into a user
turn as `<tool_response>` blocks, consecutive results sharing one turn.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.tiny_models import token_id

TOOLS_CHATML = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- '\n\n# Tools\n\nYou may call one or more functions. Their signatures are inside <tools></tools>:\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\n</tools>\n\nWrite each call as a JSON object inside <tool_call></tool_call>:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n\' }}'
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\n' + message.content }}{%- endif %}"
    "{%- for call in message.tool_calls or [] %}"
    "{{- '\n<tool_call>\n' }}{{- {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}"
    "{{- '\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "python",
            "description": "Run Python code and return what it prints.",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the documentation.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    },
]


def tool_exchange(k: int, secret: str = "") -> list[dict]:
    """A trajectory that calls two tools (one turn each) and answers from their results; with
    `secret`, the user's message and the first call's arguments carry it."""
    a, b = 17 + k, 23 + k
    return [
        {"role": "system", "content": "You answer with the tools' help."},
        {"role": "user", "content": f"What is {a} * {b}?" + (f" My token is {secret}" if secret else "")},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{k}a",
                    "type": "function",
                    "function": {"name": "python", "arguments": f'{{"code": "print({a} * {b})"}}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": f"call_{k}a", "content": str(a * b)},
        {
            "role": "assistant",
            "content": "Let me check the docs too.",
            "tool_calls": [
                {
                    "id": f"call_{k}b",
                    "type": "function",
                    "function": {
                        "name": "search",
                        "arguments": f'{{"query": "multiply {k}"}}' if not secret else f'{{"query": "{secret}"}}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": f"call_{k}b", "content": "Use * to multiply."},
        {"role": "assistant", "content": f"{a} * {b} = {a * b}."},
    ]


def build_chat_base(folder: Path, template: str, corpus: list[str], with_model: bool = False) -> Path:
    """A byte-level BPE tokenizer trained on `corpus`, with bos <|im_start|>, eos/pad <|im_end|>
    and `template` (and, with_model, a 2-layer Llama of hidden 64), saved to folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        corpus * 5,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        chat_template=template,
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    if with_model:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=1024,
            bos_token_id=token_id(tok.bos_token_id),
            eos_token_id=token_id(tok.eos_token_id),
            pad_token_id=token_id(tok.pad_token_id),
        )
        LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def build_tools_base(folder: Path, with_model: bool = False) -> Path:
    """A chat base whose template is TOOLS_CHATML, its tokenizer trained on tool exchanges."""
    corpus = [str(m["content"]) for m in tool_exchange(0)] + ['<tool_call>\n{"name": "python", "arguments": {"code"}}']
    return build_chat_base(folder, TOOLS_CHATML, corpus, with_model)
