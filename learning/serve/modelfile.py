"""An Ollama Modelfile for an exported adapter: FROM the base, ADAPTER the GGUF, and the
TEMPLATE and stop tokens taken from the tokenizer's own chat template (a missing template or
stop token is what makes exported models run on or talk gibberish).

Reads tokenizer_config.json (and chat_template.jinja) directly and renders the Jinja chat
template the way transformers does, so it needs no torch or transformers.
"""

from __future__ import annotations

import json
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any

from learning.errors import InvalidInput, shown

# Sentinels rendered through the chat template, then replaced by Ollama's Go template fields.
SYS, USR, ANS = "\x01LLSYS\x01", "\x01LLUSR\x01", "\x01LLANS\x01"
# End-of-turn tokens of common families, used as stops when the tokenizer has them.
KNOWN_EOT = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>", "<|end_of_text|>")


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


# Ollama runs these on its own engine, which (at least up to Ollama 0.22) refuses LoRA adapters
# when the model first loads ("loras are not yet implemented"), although `ollama create` accepts them.
OLLAMA_OWN_ENGINE = ("gemma3", "gemma3_text", "qwen3")


def own_engine_warning(model_type: str | None) -> str | None:
    if model_type not in OLLAMA_OWN_ENGINE:
        return None
    return (
        f"Ollama runs {model_type} on its own engine, whose releases so far fail at load with 'loras are "
        "not yet implemented': if yours does, serve adapter.gguf with llama.cpp (llama-server --lora) or "
        "export 'merged'"
    )


def read_tokenizer(folder: Path) -> dict[str, Any]:
    """chat_template, bos/eos and the added tokens of a tokenizer folder (empty when absent)."""
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text()
    added = {_token_text(t) for t in (cfg.get("added_tokens_decoder") or {}).values()}
    tok_json = folder / "tokenizer.json"
    if tok_json.exists():
        added |= {t.get("content") for t in json.loads(tok_json.read_text()).get("added_tokens", [])}
    return {
        "chat_template": template,
        "bos": _token_text(cfg.get("bos_token")),
        "eos": _token_text(cfg.get("eos_token")),
        "added": {a for a in added if a},
    }


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


def _render(template: str, messages: list[dict[str, str]], tok: dict[str, Any], generation: bool) -> str:
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


def ollama_template(tok: dict[str, Any], prompt: str | None = None, raw: bool = False) -> tuple[str, list[str]]:
    """The Go TEMPLATE equivalent of how the adapter saw its prompts, and the stop strings.

    prompt: the role's instruction template with `{{ .Prompt }}` where the instruction goes, so
    a caller sends just the instruction; raw: the adapter was trained on plain prompt/completion
    text (no chat turns), so the template is that text alone."""
    stops = [t for t in KNOWN_EOT if t in tok["added"] or t == tok["eos"]]
    if tok["eos"] and tok["eos"] not in stops:
        stops.insert(0, tok["eos"])
    template = tok["chat_template"]
    if raw or not template:
        return (prompt or "{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}\n") + "{{ .Response }}", stops
    user = (prompt or "{{ .Prompt }}").rstrip()  # chat rows carry the prompt right-stripped

    def go(text: str) -> str:
        if tok["bos"] and text.startswith(tok["bos"]):
            text = text[len(tok["bos"]) :]  # the runtime adds BOS itself
        return text.replace(SYS, "{{ .System }}").replace(USR, user)

    plain = go(_render(template, [{"role": "user", "content": USR}], tok, True))
    try:
        with_system = go(
            _render(template, [{"role": "system", "content": SYS}, {"role": "user", "content": USR}], tok, True)
        )
    except Exception:  # noqa: BLE001 - templates that refuse a system turn
        with_system = None
    body = (
        plain
        if not with_system or "{{ .System }}" not in with_system
        else "{{ if .System }}" + with_system + "{{ else }}" + plain + "{{ end }}"
    )
    # What the template writes after an answer ends the turn: a stop string too.
    try:
        full = _render(template, [{"role": "user", "content": USR}, {"role": "assistant", "content": ANS}], tok, False)
        after = full.split(ANS, 1)[1].strip()
        if after and after.split()[0] not in stops:
            stops.append(after.split()[0])
    except Exception:  # noqa: BLE001
        pass
    return body + "{{ .Response }}", stops


# ---- values written into the file ------------------------------------------------------------
# Ollama's parser ends a bare value at a space or a line break and has no escapes: a quoted
# value runs to the next `"` (or `"""`) that ends a word. So a value that could end its line
# or its quotes early is refused, naming the field, rather than written.


def controls(text: str, allowed: str = "") -> list[str]:
    """The control and line-separator characters in text (as escapes), but those allowed."""
    found = {c for c in text if c not in allowed and unicodedata.category(c) in ("Cc", "Zl", "Zp")}
    return sorted(repr(c)[1:-1] for c in found)


def plain_value(value: Any, field: str, quoted: bool = False) -> str:
    """A value written bare after its keyword (FROM, ADAPTER, PARAMETER): one line, no `"`;
    put in double quotes when it holds a space (or always, with quoted)."""
    text = str(value)
    bad = controls(text)
    if bad or '"' in text or not text.strip():
        why = f"control characters {', '.join(bad)}" if bad else "'\"'" if '"' in text else "nothing"
        raise InvalidInput(
            f"{field} {shown(text)} cannot be written into a Modelfile: it holds {why}. "
            "Give a plain name (one line, no quotes)."
        )
    return f'"{text}"' if quoted or " " in text else text


def block_value(text: str, field: str) -> str:
    """A value written in triple quotes (TEMPLATE, SYSTEM): lines and tabs are fine, `\"\"\"` and
    other control characters are not (the format has no escape for them)."""
    bad = controls(text, "\n\r\t")
    if bad or '"""' in text:
        why = f"control characters {', '.join(bad)}" if bad else '\'"""\', which would end the value early'
        raise InvalidInput(f"{field} {shown(text)} cannot be written into a Modelfile: it holds {why}.")
    return '"""' + text + '"""'


def modelfile_text(
    base: str,
    adapter_file: str,
    tok: dict[str, Any],
    system: str | None,
    parameters: dict[str, Any],
    prompt: str | None = None,
    raw: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The Modelfile, and the same content as the fields of Ollama's /api/create."""
    template, stops = ollama_template(tok, prompt, raw)
    lines = [
        "# Generated by learnloop: base + LoRA adapter. FROM must be the exact base the adapter was trained on.",
        f"FROM {plain_value(base, 'from_model (FROM)')}",
        f"ADAPTER {plain_value('./' + adapter_file, 'ADAPTER')}",
        f"TEMPLATE {block_value(template, 'TEMPLATE (the chat template with the role prompt)')}",
    ]
    if system:
        lines.append(f"SYSTEM {block_value(system, 'system prompt (SYSTEM)')}")
    for key, value in parameters.items():
        lines.append(f"PARAMETER {plain_value(key, 'parameter name')} {plain_value(value, f'PARAMETER {key}')}")
    for stop in stops:
        lines.append(f"PARAMETER stop {plain_value(stop, 'stop token (PARAMETER stop)', quoted=True)}")
    fields = {"template": template, "system": system, "parameters": {**parameters, "stop": stops}}
    return "\n".join(lines) + "\n", fields
