"""A renderer for the subset of Go's text/template that learnloop writes into Modelfiles, and
Ollama's way of filling a TEMPLATE from a chat request, so an export can check what Ollama
will send to the model before anyone runs Ollama.

The subset: text; `{{ .Field }}`, `{{ $.Field }}` and `{{ "string" }}`; `if` / `else if` /
`else` / `end` with a field, `eq A B...` or `not X` as condition; `range .Messages` (with
`else`); the trim markers `{{- ` and ` -}}`. Anything else is refused (ValueError), so a
template outside the subset cannot pass a check by accident.

`ollama_prompt` follows Ollama's template.Execute: system messages are collected into
`.System` (joined by a blank line), consecutive messages of one role merged, and a template
that uses `.Messages` gets the whole conversation; any other template is executed once per
(system, prompt, response) turn, the last one cut at `{{ .Response }}`.
"""

from __future__ import annotations

import json
import re
from typing import Any

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
ARG = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')


def _lex(text: str) -> list[tuple[str, str]]:
    """("text", literal) and ("action", body) items, with the trim markers applied."""
    items: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for match in ACTION.finditer(text):
        literal = text[pos : match.start()]
        if trim_next:
            literal = literal.lstrip(" \t\r\n")
        if match.group(1):
            literal = literal.rstrip(" \t\r\n")
        items.append(("text", literal))
        items.append(("action", match.group(2).strip()))
        pos, trim_next = match.end(), bool(match.group(3))
    tail = text[pos:]
    items.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    return [i for i in items if i != ("text", "")]


def parse(text: str) -> list:
    """The template as a list of nodes: ("text", s), ("expr", args), ("if", [(cond, body)...], else),
    ("range", args, body, else)."""
    items = _lex(text)
    nodes, pos = _parse_list(items, 0, top=True)
    return nodes


def _parse_list(items: list[tuple[str, str]], pos: int, top: bool = False) -> tuple[list, int]:
    nodes: list = []
    while pos < len(items):
        kind, body = items[pos]
        if kind == "text":
            nodes.append(("text", body))
            pos += 1
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in ("end", "else"):
            if top:
                raise ValueError(f"unexpected {{{{ {body} }}}}")
            return nodes, pos
        if word == "if":
            node, pos = _parse_if(items, pos)
            nodes.append(node)
        elif word == "range":
            inner, pos = _parse_list(items, pos + 1)
            other: list = []
            if items[pos][1] == "else":
                other, pos = _parse_list(items, pos + 1)
            _expect_end(items, pos)
            nodes.append(("range", _args(body[len("range") :]), inner, other))
            pos += 1
        else:
            nodes.append(("expr", _args(body)))
            pos += 1
    if not top:
        raise ValueError("a block is not closed with {{ end }}")
    return nodes, pos


def _parse_if(items: list[tuple[str, str]], pos: int) -> tuple[tuple, int]:
    branches, other = [], []
    cond = _args(items[pos][1][len("if") :])
    while True:
        body, pos = _parse_list(items, pos + 1)
        branches.append((cond, body))
        action = items[pos][1]
        if action.startswith("else if "):
            cond = _args(action[len("else if ") :])
            continue
        if action == "else":
            other, pos = _parse_list(items, pos + 1)
        _expect_end(items, pos)
        return ("if", branches, other), pos + 1


def _expect_end(items: list[tuple[str, str]], pos: int) -> None:
    if pos >= len(items) or items[pos][1] != "end":
        raise ValueError("a block is not closed with {{ end }}")


def _args(text: str) -> list[str]:
    args = ARG.findall(text.strip())
    if not args:
        raise ValueError("an empty action")
    for arg in args:
        if not (arg.startswith('"') or arg.startswith(".") or arg.startswith("$.") or arg in ("eq", "not")):
            raise ValueError(f"{arg!r} is outside the template subset learnloop writes")
    return args


def _value(arg: str, dot: Any, root: dict[str, Any]) -> Any:
    if arg.startswith('"'):
        return json.loads(arg)
    scope, path = (root, arg[2:]) if arg.startswith("$.") else (dot, arg[1:])
    if not path:
        return scope
    for part in path.split("."):
        if not isinstance(scope, dict) or part not in scope:
            raise ValueError(f"no field {arg}")
        scope = scope[part]
    return scope


def _evaluate(args: list[str], dot: Any, root: dict[str, Any]) -> Any:
    if args[0] == "eq":
        values = [_value(a, dot, root) for a in args[1:]]
        return any(values[0] == v for v in values[1:])
    if args[0] == "not":
        return not _truth(_evaluate(args[1:], dot, root))
    if len(args) != 1:
        raise ValueError(f"{' '.join(args)!r} is outside the template subset learnloop writes")
    return _value(args[0], dot, root)


def _truth(value: Any) -> bool:
    return bool(value)  # Go: false, 0, nil and empty strings, slices and maps are false


def _run(nodes: list, dot: Any, root: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            value = _evaluate(node[1], dot, root)
            out.append("<no value>" if value is None else str(value))
        elif node[0] == "if":
            body = next((b for cond, b in node[1] if _truth(_evaluate(cond, dot, root))), node[2])
            _run(body, dot, root, out)
        else:
            items = _evaluate(node[1], dot, root) or []
            for item in items:
                _run(node[2], item, root, out)
            if not items:
                _run(node[3], dot, root, out)


def render(template: str | list, values: dict[str, Any]) -> str:
    """The template (text or parsed nodes) executed with `values` as its dot."""
    out: list[str] = []
    _run(parse(template) if isinstance(template, str) else template, values, values, out)
    return "".join(out)


# ---- what Ollama does with a template ----------------------------------------------------------


def _fields(nodes: list) -> set[str]:
    found: set[str] = set()
    for node in nodes:
        if node[0] == "expr":
            found |= {a.lstrip("$.").split(".")[0].lower() for a in node[1] if a.startswith((".", "$."))}
        elif node[0] == "if":
            for cond, body in node[1]:
                found |= _fields([("expr", cond)]) | _fields(body)
            found |= _fields(node[2])
        elif node[0] == "range":
            found |= _fields([("expr", node[1])]) | _fields(node[2]) | _fields(node[3])
    return found


def _cut_at_response(nodes: list, state: list[bool]) -> list:
    """The nodes up to the first `.Response` (Ollama deletes it and everything after it)."""
    kept = []
    for node in nodes:
        if state[0]:
            break
        if node[0] == "expr" and any(a.lstrip("$.").split(".")[0] == "Response" for a in node[1]):
            state[0] = True
            break
        if node[0] == "if":
            node = ("if", [(c, _cut_at_response(b, state)) for c, b in node[1]], _cut_at_response(node[2], state))
        elif node[0] == "range":
            node = ("range", node[1], _cut_at_response(node[2], state), _cut_at_response(node[3], state))
        kept.append(node)
    return kept


def collate(messages: list[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """Ollama's collate: all system contents joined by a blank line, and runs of one role merged."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    merged: list[dict[str, str]] = []
    for m in messages:
        if merged and merged[-1]["role"] == m["role"] and m["role"] != "tool":
            merged[-1] = {**merged[-1], "content": merged[-1]["content"] + "\n\n" + m["content"]}
        else:
            merged.append(dict(m))
    return "\n\n".join(system), merged


def ollama_prompt(template: str, messages: list[dict[str, str]], model_system: str | None = None) -> str:
    """The text Ollama's chat endpoint renders from `template` for `messages` (role/content
    dicts), with the Modelfile's SYSTEM put first when the conversation has no system message."""
    if model_system and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": model_system}, *messages]
    nodes = parse(template)
    used = _fields(nodes)
    if "messages" not in used and "response" not in used:
        nodes = [*nodes, ("expr", [".Response"])]  # Ollama appends {{ .Response }}
    system, merged = collate(messages)
    if "messages" in used:
        msgs = [{"Role": m["role"], "Content": m["content"]} for m in merged]
        return render(nodes, {"System": system, "Messages": msgs, "Response": ""})
    out, turn = [], {"System": "", "Prompt": "", "Response": ""}
    for m in merged:
        if (m["role"] == "system" and (turn["Prompt"] or turn["Response"])) or (
            m["role"] == "user" and turn["Response"]
        ):
            out.append(render(nodes, turn))
            turn = {"System": "", "Prompt": "", "Response": ""}
        key = {"system": "System", "user": "Prompt", "assistant": "Response"}.get(m["role"])
        if key:
            turn[key] = m["content"]
    out.append(render(_cut_at_response(nodes, [False]), turn))
    return "".join(out)


def literal(text: str) -> str:
    """Text written into a Go template so that it renders as itself (`{{` becomes an action)."""
    return text.replace("{{", '{{ "{{" }}')
