"""A generated corpus of small Python programs and instructions for pretraining the embedded base.

Function, parameter and constant names are drawn at random (often made-up words), so the
model can only write the right name by copying it from the instruction or the signature:
that copying is the skill a LoRA later builds on. The corpus is generic on purpose: plain
code, docstrings, comments, questions and chat turns, never one task format.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

WORDS = (
    "total count value item items data result name text line lines word words number numbers key keys "
    "index size score scores price prices user users node nodes row rows col path file record records "
    "amount limit offset left right first last head tail temp acc buf chunk part parts label"
).split()
VERBS = (
    "get compute make build find count sum scale shift double add mul apply parse format clean merge "
    "split join filter pick check load save update reset to flip sort rev upper lower strip"
).split()
SYLLABLES = ("ka lo mi ra ve zu ti po ne sa qu fe bo xi da lu ri ma ko pe ny gi ho wa ze").split()
CHAT_USER, CHAT_ASSISTANT = "<|user|>", "<|assistant|>"


def made_up(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def ident(rng: random.Random, kind: str = "var") -> str:
    """A snake_case name: real words, made-up words or a mix."""
    if kind == "fn":  # mostly names that can only be copied, never recalled
        r = rng.random()
        if r < 0.4:
            return made_up(rng)
        if r < 0.7:
            return f"{made_up(rng)}_{made_up(rng)}"
        return "_".join(
            [rng.choice(VERBS)]
            + [rng.choice(WORDS) if rng.random() < 0.4 else made_up(rng) for _ in range(rng.randint(1, 2))]
        )
    r = rng.random()
    if r < 0.1:
        return rng.choice("abcnxyzijkpqst")
    if r < 0.4:
        return rng.choice(WORDS)
    if r < 0.8:
        return made_up(rng)
    return f"{rng.choice(WORDS)}_{made_up(rng) if rng.random() < 0.5 else rng.choice(WORDS)}"


def distinct(rng: random.Random, n: int) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = ident(rng)
        if name not in names:
            names.append(name)
    return names


def const(rng: random.Random) -> int:
    # Two-digit constants are drawn twice as often as the others: copying both digits of "23" from
    # the request is the skill that add and multiply tasks with unseen constants need.
    return rng.choice([rng.randint(0, 9), rng.randint(10, 99), rng.randint(10, 99), rng.randint(100, 999)])


# Each shape returns (signature params, body lines, English description).
def shape_binary(rng, p):
    a, b = p[0], p[1]
    op, word = rng.choice(
        [
            ("+", "the sum of"),
            ("-", "the difference of"),
            ("*", "the product of"),
            ("//", "the floor division of"),
            ("%", "the remainder of"),
            ("**", "the power of"),
        ]
    )
    return [a, b], [f"return {a} {op} {b}"], f"return {word} {a} and {b}"


def shape_const(rng, p):
    x, k = p[0], const(rng)
    op, word = rng.choice([("+", "plus"), ("-", "minus"), ("*", "times"), ("//", "divided by"), ("%", "modulo")])
    return [x], [f"return {x} {op} {k}"], f"return {x} {word} {k}"


def shape_list_map(rng, p):
    xs, x, k = p[0], p[1], const(rng)
    op, word = rng.choice([("+", "plus"), ("*", "times"), ("-", "minus")])
    return [xs], [f"return [{x} {op} {k} for {x} in {xs}]"], f"return each element of {xs} {word} {k}"


def shape_list_reduce(rng, p):
    xs = p[0]
    expr, word = rng.choice(
        [
            (f"sum({xs})", "the sum of"),
            (f"max({xs})", "the largest element of"),
            (f"min({xs})", "the smallest element of"),
            (f"len({xs})", "the length of"),
            (f"{xs}[::-1]", "the reverse of"),
            (f"sorted({xs})", "a sorted copy of"),
            (f"list(reversed({xs}))", "the elements in reverse order of"),
            (f"{xs}[0]", "the first element of"),
            (f"{xs}[-1]", "the last element of"),
        ]
    )
    return [xs], [f"return {expr}"], f"return {word} {xs}"


def shape_string(rng, p):
    s = p[0]
    expr, word = rng.choice(
        [
            (f"{s}.upper()", "in upper case"),
            (f"{s}.lower()", "in lower case"),
            (f"{s}.strip()", "without surrounding spaces"),
            (f"{s}[::-1]", "reversed"),
            (f"{s}.title()", "in title case"),
            (f"{s}.split()", "split into words"),
            (f"len({s})", "as its length"),
            (f"{s} + {s}", "repeated twice"),
        ]
    )
    return [s], [f"return {expr}"], f"return {s} {word}"


def shape_filter(rng, p):
    xs, x, k = p[0], p[1], const(rng)
    cmp, word = rng.choice([(">", "greater than"), ("<", "less than"), ("==", "equal to"), ("!=", "not equal to")])
    return [xs], [f"return [{x} for {x} in {xs} if {x} {cmp} {k}]"], f"keep the elements of {xs} {word} {k}"


def shape_loop(rng, p):
    xs, x, acc = p[0], p[1], p[2]
    op = rng.choice(["+", "*"])
    start = 0 if op == "+" else 1
    word = "add up" if op == "+" else "multiply"
    return (
        [xs],
        [f"{acc} = {start}", f"for {x} in {xs}:", f"    {acc} = {acc} {op} {x}", f"return {acc}"],
        f"{word} the elements of {xs} with a loop",
    )


def shape_branch(rng, p):
    x, k = p[0], const(rng)
    a, b = rng.sample(["True", "False", f"{x}", f"-{x}", f"{k}", "0", f"{x} * 2"], 2)
    return [x], [f"if {x} > {k}:", f"    return {a}", f"return {b}"], f"return {a} when {x} is above {k}, else {b}"


def shape_dict(rng, p):
    d, key = p[0], p[1]
    expr, word = rng.choice(
        [
            (f"{d}.get({key!r}, 0)", f"the value for {key!r} in {d}, or 0"),
            (f"sorted({d})", f"the sorted keys of {d}"),
            (f"len({d})", f"the number of keys in {d}"),
            (f"{{v: k for k, v in {d}.items()}}", f"{d} with keys and values swapped"),
        ]
    )
    return [d], [f"return {expr}"], f"return {word}"


SHAPES: list[Callable] = [
    shape_binary,
    shape_const,
    shape_const,  # twice: "return x plus 23" then "return x + 23" is a constant copied
    shape_list_map,
    shape_list_reduce,
    shape_string,
    shape_filter,
    shape_loop,
    shape_branch,
    shape_dict,
]


def function(rng: random.Random, doc_p: float = 0.2) -> tuple[str, str, list[str], str]:
    """One function: (name, code, params, description)."""
    name = ident(rng, "fn")
    params, body, desc = rng.choice(SHAPES)(rng, distinct(rng, 3))
    lines = [f"def {name}({', '.join(params)}):"]
    if rng.random() < doc_p:
        lines.append(f'    """{desc[0].upper() + desc[1:]}."""')
    lines += [f"    {line}" for line in body]
    return name, "\n".join(lines) + "\n", params, desc


def intro(rng: random.Random, name: str, params: list[str], desc: str) -> str:
    """A comment, request, question or chat turn that names the function (and its parameters)."""
    sig = f"{name}({', '.join(params)})"
    shown = f"`{sig}`" if rng.random() < 0.5 else sig
    return rng.choice(
        [
            f"# {sig}: {desc}.\n",
            f"Write a {rng.choice(['Python function', 'function'])} {shown} that will {desc}.\n\n",
            f"Question: how do I write {shown} in Python? It should {desc}.\nAnswer:\n",
            f"Implement {shown}: {desc}.\n",
            f"{CHAT_USER}\nDefine {shown} to {desc}.</s>\n{CHAT_ASSISTANT}\n",
            f"# {desc[0].upper() + desc[1:]}.\n# The function is called {name}, taking {', '.join(params)}.\n",
            f"Here is {shown}, which will {desc}:\n",
            f"# TODO: write {shown} to {desc}.\n",
        ]
    )


def calls(rng: random.Random, name: str, params: list[str]) -> str:
    lines = []
    for _ in range(rng.randint(1, 2)):
        args = ", ".join(str(const(rng)) for _ in params)
        lines.append(rng.choice([f"print({name}({args}))", f"{rng.choice(WORDS)} = {name}({args})"]))
    return "\n".join(lines) + "\n"


def document(rng: random.Random) -> str:
    """One short training document: the function is named (with its parameters) before it is
    defined, and often called after, so every document holds several copies of made-up names."""
    name, code, params, desc = function(rng)
    head = intro(rng, name, params, desc)
    if head.startswith(CHAT_USER):
        return f"{head}{code}</s>\n"
    if rng.random() < 0.4:
        return head + code
    return f"{head}{code}\n{calls(rng, name, params)}"


def corpus(seed: int, n_docs: int) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(n_docs):
        yield document(rng)
