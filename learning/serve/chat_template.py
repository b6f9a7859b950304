"""The tokenizer's chat template, read and rendered the way transformers renders it, and
whether the tokenizer (and so the GGUF converted from it) adds a BOS token by itself.

Reads tokenizer_config.json, chat_template.jinja and tokenizer.json directly, so it needs no
torch or transformers. A GGUF base carries its own flag (`tokenizer.ggml.add_bos_token`):
`gguf_add_bos` reads it, and it wins over the tokenizer files when the served base is a GGUF.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

# Sentinels rendered through the chat template, then found again in the output.
SYS, USR, ANS = "\x01LLSYS\x01", "\x01LLUSR\x01", "\x01LLANS\x01"


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _adds_bos(cfg: dict[str, Any], tok_json: dict[str, Any] | None, folder: Path) -> bool:
    """As llama.cpp's converter (gguf.SpecialVocab) decides: tokenizer_config's add_bos_token,
    else a post-processor that puts the BOS first, else SentencePiece's default (adds it)."""
    if isinstance(cfg.get("add_bos_token"), bool):
        return cfg["add_bos_token"]
    post = (tok_json or {}).get("post_processor") or {}
    for processor in post.get("processors", [post]):
        if processor.get("type") == "RobertaProcessing":
            return True
        single = processor.get("single") or []
        if processor.get("type") == "TemplateProcessing" and len(single) > 1:
            first = single[0].get("SpecialToken", {}).get("id")
            return first is not None and first in (_token_text(cfg.get("bos_token")), _token_text(cfg.get("cls_token")))
    return tok_json is None and (folder / "tokenizer.model").exists()


def read_tokenizer(folder: Path) -> dict[str, Any]:
    """chat_template, bos/eos, whether BOS is added to every prompt (add_bos) and the added
    tokens of a tokenizer folder (empty when absent)."""
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text()
    added = {_token_text(t) for t in (cfg.get("added_tokens_decoder") or {}).values()}
    tok_path = folder / "tokenizer.json"
    tok_json = json.loads(tok_path.read_text()) if tok_path.exists() else None
    if tok_json:
        added |= {t.get("content") for t in tok_json.get("added_tokens", [])}
    return {
        "chat_template": template,
        "bos": _token_text(cfg.get("bos_token")),
        "eos": _token_text(cfg.get("eos_token")),
        "add_bos": _adds_bos(cfg, tok_json, folder),
        "added": {a for a in added if a},
    }


def gguf_add_bos(path: Path) -> bool | None:
    """A GGUF file's `tokenizer.ggml.add_bos_token` (None when it has none or is unreadable)."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("tokenizer.ggml.add_bos_token")
        return None if field is None else bool(field.parts[field.data[0]][0])
    except Exception:  # noqa: BLE001 - not a GGUF: the tokenizer files decide
        return None


def _generation_tag():
    """{% generation %}...{% endgeneration %} (marks assistant text for training): renders its body."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return Generation


def render_chat(template: str, messages: list[dict[str, str]], tok: dict[str, Any], generation: bool = True) -> str:
    """The Jinja chat template rendered as transformers' apply_chat_template(tokenize=False) does."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _generation_tag()]
    )
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f))
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=generation, bos_token=tok["bos"] or "", eos_token=tok["eos"] or ""
    )


def try_render(template: str, messages: list[dict[str, str]], tok: dict[str, Any], generation: bool = True):
    """render_chat, or None when the template refuses these messages (e.g. a system turn)."""
    try:
        return render_chat(template, messages, tok, generation)
    except Exception:  # noqa: BLE001 - raise_exception, or a template that expects other input
        return None


def wrap_user(messages: list[dict[str, str]], prefix: str, suffix: str) -> list[dict[str, str]]:
    """The messages with each user turn inside the role's instruction template (as training saw it)."""
    return [
        {**m, "content": (prefix + m["content"] + suffix).rstrip() if (prefix or suffix) else m["content"]}
        if m["role"] == "user"
        else m
        for m in messages
    ]


def jinja_string(text: str) -> str:
    """A Jinja string literal for text (only the escapes every Jinja implementation knows)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


def wrapping_template(template: str, prefix: str, suffix: str) -> str:
    """The chat template with each user turn put inside the role's instruction template first,
    for runtimes that render the Jinja template themselves (llama.cpp's --jinja)."""
    if not (prefix or suffix):
        return template
    if suffix.strip():  # the row's rstrip() only takes the suffix's own trailing whitespace
        content = f"{jinja_string(prefix)} + m['content'] + {jinja_string(suffix.rstrip())}"
    else:
        content = f"({jinja_string(prefix)} + m['content']).rstrip()"
    return (
        "{%- set ns = namespace(messages=[]) -%}{%- for m in messages -%}{%- if m['role'] == 'user' -%}"
        f"{{%- set ns.messages = ns.messages + [{{'role': 'user', 'content': {content}}}] -%}}"
        "{%- else -%}{%- set ns.messages = ns.messages + [m] -%}{%- endif -%}{%- endfor -%}"
        "{%- set messages = ns.messages %}" + template
    )
