"""Served prompt = trained prompt: the Ollama TEMPLATE derived from the tokenizer's chat
template, checked against it before it is written.

The Jinja chat template is rendered with marker contents for a few probe conversations and cut
at the markers into the pieces every turn is made of (the text before the first turn, before
and after a user turn and an assistant turn, the generation prompt, and the system head). Those
pieces become a Go TEMPLATE over `.Messages`. Then, for sample conversations (with and without
a system message, several turns), what Ollama would render from that TEMPLATE
(learning.serve.gotemplate) plus the BOS the runtime adds must equal what
apply_chat_template(add_generation_prompt=True) renders: training tokenizes that text without
adding special tokens, so the BOS the template writes is the only one the adapter saw.

When the multi-turn TEMPLATE does not render the same, a single-turn one is tried (a system
message and one user turn), then a plain `{{ .Prompt }}` one; each fallback comes with a
warning saying what differs and what to do.
"""

from __future__ import annotations

from typing import Any

from learning.models.generate import END_OF_TURN
from learning.serve import gotemplate as gt
from learning.serve.chat_template import ANS, SYS, USR, try_render, wrap_user

PROMPT = "{{ .Prompt }}"
LLAMACPP_TEMPLATE = "chat_template.jinja"  # written beside adapter.gguf for llama-server --chat-template-file
U1, U2, A1 = USR + "1", USR + "2", ANS + "1"

SAMPLES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Write a function that adds two numbers."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Sort a list."}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Reverse a string\nin Python, {{ .System }} untouched."},
    ],
    [
        {"role": "system", "content": "Answer in code only.\nNo prose."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b = 1"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d()"},
        {"role": "user", "content": "e é ü 中"},
    ],
]


def stop_strings(tok: dict[str, Any]) -> list[str]:
    """eos, the end-of-turn tokens the tokenizer has, and what the template writes after an answer."""
    stops = [t for t in END_OF_TURN if t in tok["added"] or t == tok["eos"]]
    if tok["eos"] and tok["eos"] not in stops:
        stops.insert(0, tok["eos"])
    if tok["chat_template"]:
        full = try_render(
            tok["chat_template"], [{"role": "user", "content": USR}, {"role": "assistant", "content": ANS}], tok, False
        )
        after = full.split(ANS, 1)[1].strip() if full and ANS in full else ""
        if after and after.split()[0] not in stops:
            stops.append(after.split()[0])
    return stops


def _cut(text: str | None, markers: list[str]) -> list[str] | None:
    """text split at each marker, in order, each found once; None otherwise."""
    if text is None or any(text.count(m) != 1 for m in markers):
        return None
    parts, rest = [], text
    for marker in markers:
        if marker not in rest:  # out of order
            return None
        before, rest = rest.split(marker)
        parts.append(before)
    return [*parts, rest]


def _turn_pieces(tok: dict[str, Any]) -> dict[str, Any] | None:
    """head / user before-after / assistant before-after / generation prompt / system head, from
    probe renderings; None when the template does not render turns one after another."""
    template = tok["chat_template"]
    conv = [{"role": "user", "content": U1}, {"role": "assistant", "content": A1}, {"role": "user", "content": U2}]
    x = _cut(try_render(template, conv, tok), [U1, A1, U2])
    if x is None:
        return None
    x0, x1, x2, x3 = x
    with_sys = _cut(try_render(template, [{"role": "system", "content": SYS}, *conv], tok), [SYS, U1, A1, U2])
    system = (with_sys[0], with_sys[1]) if with_sys and with_sys[2:] == [x1, x2, x3] else None
    plain = {"head": x0, "ub": "", "ua": "", "ab": x1, "aa": x2, "gen": x3, "system": system}
    z = _cut(try_render(template, conv[:1], tok, False), [U1])
    y = _cut(try_render(template, conv[:2], tok, False), [U1, A1])
    if not z or not y or z[0] != x0 or y[:2] != [x0, x1]:
        return plain
    ua, aa = z[1], y[2]
    ub = x2[len(aa) :] if x2.startswith(aa) else None
    if ub is None or not (x1.startswith(ua) and x3.startswith(ua) and x0.endswith(ub)):
        return plain
    if system and not system[1].endswith(ub):
        return plain
    trim = len(x0) - len(ub)
    return {
        "head": x0[:trim],
        "ub": ub,
        "ua": ua,
        "ab": x1[len(ua) :],
        "aa": aa,
        "gen": x3[len(ua) :],
        "system": (system[0], system[1][: len(system[1]) - len(ub)]) if system else None,
    }


def _without_bos(text: str, tok: dict[str, Any], add_bos: bool) -> str:
    bos = tok["bos"]
    return text[len(bos) :] if add_bos and bos and text.startswith(bos) else text


def _messages_template(p: dict[str, Any], tok: dict[str, Any], add_bos: bool, prefix: str, suffix: str) -> str:
    L = gt.literal
    head = L(_without_bos(p["head"], tok, add_bos))
    if p["system"]:
        sys_head = L(_without_bos(p["system"][0], tok, add_bos)) + "{{ .System }}" + L(p["system"][1])
        head = "{{ if .System }}" + sys_head + ("{{ else }}" + head if head else "") + "{{ end }}"
    return (
        head + '{{ range .Messages }}{{ if eq .Role "user" }}' + L(p["ub"] + prefix) + "{{ .Content }}"
        f'{L(suffix + p["ua"])}{{{{ else if eq .Role "assistant" }}}}{L(p["ab"])}{{{{ .Content }}}}{L(p["aa"])}'
        "{{ end }}{{ end }}" + L(p["gen"])
    )


def _single_turn_template(tok: dict[str, Any], add_bos: bool, prefix: str, suffix: str) -> str | None:
    def go(text: str | None) -> str | None:
        cut = _cut(text, [SYS, USR] if text and SYS in text else [USR])
        if cut is None:
            return None
        cut[0] = _without_bos(cut[0], tok, add_bos)
        pieces = [gt.literal(c) for c in cut]
        pieces[-2] += gt.literal(prefix)
        pieces[-1] = gt.literal(suffix) + pieces[-1]
        fields = ["{{ .System }}", PROMPT] if len(cut) == 3 else [PROMPT]
        return "".join(p + f for p, f in zip(pieces, fields)) + pieces[-1]

    template = tok["chat_template"]
    plain = go(try_render(template, [{"role": "user", "content": USR}], tok))
    sys = go(try_render(template, [{"role": "system", "content": SYS}, {"role": "user", "content": USR}], tok))
    if plain is None:
        return None
    body = (
        plain
        if sys is None or "{{ .System }}" not in sys
        else "{{ if .System }}" + sys + "{{ else }}" + plain + "{{ end }}"
    )
    return body + "{{ .Response }}"


def compare(
    template: str, tok: dict[str, Any], add_bos: bool, prefix: str, suffix: str, system: str | None, samples
) -> tuple[list[str], int]:
    """Differences between what Ollama renders and what the chat template renders, per sample
    (and how many samples the chat template could render at all)."""
    problems, rendered = [], 0
    for i, conv in enumerate(samples):
        full = [{"role": "system", "content": system}, *conv] if system and conv[0]["role"] != "system" else conv
        expected = try_render(tok["chat_template"], wrap_user(full, prefix, suffix), tok)
        if expected is None:
            continue
        rendered += 1
        served = gt.ollama_prompt(template, conv, system)
        if _without_bos(expected, tok, add_bos) != served:
            problems.append(f"sample {i + 1}: Ollama would send {served[:160]!r}, training saw {expected[:160]!r}")
    return problems, rendered


def served_prompt(
    tok: dict[str, Any],
    prompt: str | None = None,
    raw: bool = False,
    system: str | None = None,
    add_bos: bool | None = None,
) -> dict[str, Any]:
    """The Ollama TEMPLATE for an adapter, its stops, and what was checked (checks, warnings).

    prompt: the role's instruction template with `{{ .Prompt }}` where the instruction goes;
    raw: trained on prompt/completion text; system: the Modelfile's SYSTEM; add_bos: whether the
    served base adds BOS (its GGUF's flag), default the tokenizer's."""
    tok = {"add_bos": True, **tok}  # a tokenizer read without the flag: BOS left to the runtime, as before
    runtime_bos = tok["add_bos"] if add_bos is None else add_bos
    stops, checks, warnings = stop_strings(tok), [], []
    bos = tok["bos"]
    bos_note = f"the runtime adds BOS {bos!r} itself" if runtime_bos and bos else "the runtime adds no BOS"
    if runtime_bos != tok["add_bos"] and bos:
        warnings.append(
            f"the served GGUF {'adds' if runtime_bos else 'does not add'} BOS {bos!r} but the tokenizer trained with "
            f"{'adds' if tok['add_bos'] else 'does not add'} it: prompts differ by that token"
        )
    prefix, _, suffix = (prompt or PROMPT).partition(PROMPT)
    if raw or not tok["chat_template"]:
        text = (
            gt.literal(prefix) + PROMPT + gt.literal(suffix)
            if prompt
            else "{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}\n"
        )
        template = text + "{{ .Response }}"
        probe = "Write a function that adds two numbers."
        served = gt.ollama_prompt(template, [{"role": "user", "content": probe}])
        want = prefix + probe + suffix if prompt else probe + "\n"
        if served != want:
            raise ValueError(f"the raw TEMPLATE renders {served!r}, not {want!r}")  # a bug here, not bad input
        checks.append(f"TEMPLATE renders the {'role prompt' if prompt else 'prompt'} as trained (raw text); {bos_note}")
        return {"template": template, "stops": stops, "mode": "raw", "checks": checks, "warnings": warnings}
    suffix_r = suffix.rstrip() if suffix.strip() else ""  # chat rows hold the prompt right-stripped
    rendered = try_render(tok["chat_template"], [{"role": "user", "content": USR}], tok) or ""
    if runtime_bos and bos and not rendered.startswith(bos):
        warnings.append(
            f"the chat template writes no BOS but the runtime adds {bos!r}: the model sees one token training did not"
        )
    if not runtime_bos and bos and rendered.startswith(bos):
        checks.append(f"BOS {bos!r} kept in TEMPLATE: the chat template writes it and the runtime does not add it")
    return _choose(tok, runtime_bos, prefix, suffix_r, system, stops, checks + [bos_note], warnings)


def _choose(tok, add_bos, prefix, suffix, system, stops, checks, warnings) -> dict[str, Any]:
    """The first TEMPLATE that renders the samples as the chat template does."""
    pieces = _turn_pieces(tok)
    if pieces is not None:
        template = _messages_template(pieces, tok, add_bos, prefix, suffix)
        problems, n = compare(template, tok, add_bos, prefix, suffix, system, SAMPLES)
        if not problems:
            if not pieces["system"]:
                warnings.append("the chat template has no system turn: a system message is left out of the prompt")
            checks.insert(
                0,
                f"TEMPLATE renders {n} sample conversations (system or not, up to 3 turns) byte-identical to the chat template",
            )
            return {"template": template, "stops": stops, "mode": "messages", "checks": checks, "warnings": warnings}
    single = _single_turn_template(tok, add_bos, prefix, suffix)
    if single is not None:
        problems, n = compare(single, tok, add_bos, prefix, suffix, system, SAMPLES[:2])
        if not problems and n:
            warnings.append(
                "the chat template could not be written as a multi-turn Ollama TEMPLATE: one system message and one "
                "user turn render as in training, longer conversations will not"
            )
            checks.insert(
                0, f"TEMPLATE renders {n} single-turn sample conversations byte-identical to the chat template"
            )
            return {"template": single, "stops": stops, "mode": "single-turn", "checks": checks, "warnings": warnings}
    warnings.append(
        "the chat template could not be written as an Ollama TEMPLATE that renders the same text: the Modelfile "
        "passes prompts through ({{ .Prompt }}); send prompts already rendered with the tokenizer's chat template"
    )
    return {"template": PROMPT, "stops": stops, "mode": "plain", "checks": checks, "warnings": warnings}


# ---- llama.cpp: the Jinja template itself -------------------------------------------------------


def llamacpp_template(tok: dict[str, Any], prompt: str | None = None, raw: bool = False) -> dict[str, Any]:
    """What llama-server needs to render the trained prompt: the chat template (with the role
    prompt put around each user turn) for `--jinja --chat-template-file`, checked against the
    chat template for the sample conversations. None as template for raw adapters (clients
    send the role prompt to /completion) and tokenizers without a chat template."""
    bos, add_bos = tok["bos"], tok.get("add_bos", True)
    bos_note = (
        f"llama-server (--jinja) drops the BOS {bos!r} the template writes and adds it from the GGUF "
        "(add_bos_token=true)"
        if add_bos and bos
        else "the GGUF adds no BOS (add_bos_token=false): the BOS text the template writes, if any, stays"
    )
    if raw or not tok["chat_template"]:
        why = "raw prompt/completion adapter" if raw else "no chat template"
        return {"template": None, "checks": [f"llama.cpp: {why}: send the prompt as trained to /completion"]}
    prefix, _, suffix = (prompt or PROMPT).partition(PROMPT)
    suffix = suffix.rstrip() if suffix.strip() else ""
    from learning.serve.chat_template import wrapping_template

    template = wrapping_template(tok["chat_template"], prefix, "" if not prompt else suffix)
    n, problems = 0, []
    for i, conv in enumerate(SAMPLES):
        expected = try_render(tok["chat_template"], wrap_user(conv, prefix, suffix), tok)
        if expected is None:
            continue
        n += 1
        if try_render(template, conv, tok) != expected:
            problems.append(f"sample {i + 1}")
    if problems:
        raise ValueError(f"the llama.cpp template renders {', '.join(problems)} differently")  # a bug here
    return {
        "template": template,
        "checks": [f"llama.cpp chat template renders {n} sample conversations as the chat template does; {bos_note}"],
    }
