"""Constant text an expression builds, for the reward-hacking monitor (learning.sandbox.monitor):
the disguises a static look can undo, e.g. "/pro" + "c/self", f"{'_get'}frame",
"".join(["o", "s"]), "fles/corp/"[::-1], "".join(map(chr, [111, 115]))."""

from __future__ import annotations

import ast


def truth_constant(node: ast.AST | None, truth: bool) -> bool:
    """A constant of this truth (True, 1, "x" for truth=True; False, 0, None for truth=False)."""
    return isinstance(node, ast.Constant) and bool(node.value) is truth


def elements(node: ast.AST) -> list[ast.expr]:
    """The items of a list, tuple or set display; [] for anything else."""
    return list(node.elts) if isinstance(node, (ast.List, ast.Tuple, ast.Set)) else []


def char(node: ast.AST) -> str | None:
    """chr() of a constant code point."""
    if isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value < 0x110000:
        return chr(node.value)
    return None


class ConstantText:
    """Folds expressions of one tree to the text they build (None when it is not constant);
    each node is folded once."""

    def __init__(self) -> None:
        self.known: dict[int, str | None] = {}

    def fold(self, node: ast.AST) -> str | None:
        """The text an expression builds from literals with +, f-strings, str.join, [::-1], chr()."""
        key = id(node)
        if key not in self.known:
            self.known[key] = None
            self.known[key] = self._build(node)
        return self.known[key]

    def _build(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                return node.value
            return node.value.decode("latin-1") if isinstance(node.value, bytes) else None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.fold(node.left), self.fold(node.right)
            return left + right if left is not None and right is not None else None
        if isinstance(node, ast.JoinedStr):
            parts = [self.fold(v.value if isinstance(v, ast.FormattedValue) else v) for v in node.values]
            return None if None in parts else "".join(p or "" for p in parts)
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):  # text[::-1]
            s = node.slice
            step = s.step
            if s.lower or s.upper or not (isinstance(step, ast.UnaryOp) and isinstance(step.op, ast.USub)):
                return None
            if not (isinstance(step.operand, ast.Constant) and step.operand.value == 1):
                return None
            text = self.fold(node.value)
            return text[::-1] if text is not None else None
        if isinstance(node, ast.Call):
            return self._call(node)
        return None

    def _call(self, node: ast.Call) -> str | None:
        func, args = node.func, node.args
        if isinstance(func, ast.Name) and func.id == "chr" and len(args) == 1:
            return char(args[0])
        if not (isinstance(func, ast.Attribute) and func.attr == "join" and len(args) == 1):
            return None
        sep, seq = self.fold(func.value), args[0]
        if sep is None:
            return None
        if isinstance(seq, ast.Call) and isinstance(seq.func, ast.Name) and seq.func.id == "map" and len(seq.args) == 2:
            if not (isinstance(seq.args[0], ast.Name) and seq.args[0].id == "chr"):
                return None
            items = [char(e) for e in elements(seq.args[1])]  # "".join(map(chr, [47, 112, ...]))
        else:
            items = [self.fold(e) for e in elements(seq)]
        texts = [i for i in items if i is not None]
        return sep.join(texts) if texts and len(texts) == len(items) else None
