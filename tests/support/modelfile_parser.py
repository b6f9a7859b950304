"""How Ollama reads a Modelfile (the state machine of its parser/parser.go, ParseFile), in Python,
to check what the Modelfiles learnloop writes say to Ollama: a bare value runs to the end of its
line; a value in quotes or triple quotes runs to the newline after its closing quotes; there are
no escapes."""

from __future__ import annotations

COMMANDS = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message"}


def _unquote(text: str) -> tuple[bool, str]:
    if text.startswith('"""'):
        return (True, text[3:-3]) if len(text) >= 6 and text.endswith('"""') else (False, "")
    if text.startswith('"'):
        return (True, text[1:-1]) if len(text) >= 2 and text.endswith('"') else (False, "")
    return True, text


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """The (command, value) pairs Ollama reads; PARAMETER gives (its name, value)."""
    commands: list[tuple[str, str]] = []
    state, buf, name = "nil", "", ""
    for ch in text:
        if state == "value":
            if ch in "\r\n":
                ok, value = _unquote(buf.strip())
                if ok:
                    commands.append((name, value))
                    state, buf = "nil", ""
                    continue
            buf += ch
        elif state == "comment":
            state = "nil" if ch in "\r\n" else state
        elif state == "nil":
            if ch == "#":
                state = "comment"
            elif ch not in " \t\r\n":
                state, buf = "name", ch
        elif state == "name":
            if ch.isascii() and ch.isalpha():
                buf += ch
            elif ch in " \t" and buf.lower() in COMMANDS:
                name, buf = buf.lower(), ""
                state = "parameter" if name == "parameter" else "value"
            else:
                raise ValueError(f"invalid command {buf + ch!r}")
        elif state == "parameter":
            if ch.isascii() and (ch.isalnum() or ch == "_"):
                buf += ch
            elif ch in " \t":
                name, state, buf = buf, "value", ""
            else:
                raise ValueError(f"invalid parameter {buf + ch!r}")
    if state == "value":
        ok, value = _unquote(buf.strip())
        if not ok:
            raise ValueError("unexpected end of file")
        commands.append((name, value))
    elif state not in ("nil", "comment"):
        raise ValueError("unexpected end of file")
    return commands
