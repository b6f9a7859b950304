"""The answer's objects as the tests see them: handles whose calls cross the wire.

Part of the tests' jail program (learning/sandbox/verdicts.py; learning/sandbox/execute.py joins
the sources). A `Remote` stands for an object the answer made; calling it, reading its attributes
and items, its length, iteration, str and arithmetic are asked of the answer's process over the
socket (`ask`), with plain data both ways (learning/sandbox/wire.py). Equality, hashing and
membership are decided here: a handle equals only itself, and `x in handle` compares the values
the answer iterates, so an answer's forged `__eq__` or `__contains__` never decides a test.
The answer's exceptions are raised here again as the nearest builtin class under their own name.
"""

import builtins
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the jail's program is these modules' sources joined: no imports there
    from learning.sandbox.jailside import MESSAGE
    from learning.sandbox.wire import NAME, CannotCross, Late, WireError, decode, encode

LINK = {}  # in the tests' process: the channel to the answer and the deadline


class Remote:
    """An object of the answer, seen from the tests: calls and attribute reads cross the socket;
    equality, hashing and membership are decided here."""

    __slots__ = ("_ref", "_kind")

    def __init__(self, ref, kind):
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_kind", kind)

    def __call__(self, *args, **kwargs):
        return ask("call", self, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return ask("getattr", self, (name,))

    def __setattr__(self, name, value):
        ask("setattr", self, (name, value))

    def __getitem__(self, key):
        return ask("getitem", self, (key,))

    def __setitem__(self, key, value):
        ask("setitem", self, (key, value))

    def __delitem__(self, key):
        ask("delitem", self, (key,))

    def __len__(self):
        return expect(int, ask("len", self), "len()")

    def __bool__(self):
        return expect(bool, ask("bool", self), "bool()")

    def __str__(self):
        return expect(str, ask("str", self), "str()")

    def __repr__(self):
        return expect(str, ask("repr", self), "repr()")

    def __iter__(self):
        iterator = ask("iter", self)
        if type(iterator) is not Remote:
            raise TypeError("the answer's iter() gave plain data, not an iterator")
        while True:
            try:
                yield ask("next", iterator)
            except StopIteration:
                return

    def __contains__(self, item):
        return any(value is item or value == item for value in self)

    def __eq__(self, other):
        return other is self

    def __ne__(self, other):
        return other is not self

    def __hash__(self):
        return hash((Remote, self._ref))

    def __instancecheck__(self, obj):
        return expect(bool, ask("isinstance", self, (obj,)), "isinstance()")


def _operator(name, swap=False):
    """Arithmetic between two of the answer's objects crosses; with a value of the tests it does
    not: `add(1, 2) - 3` would hand the answer the expected value and let it say the difference."""

    def method(self, other=None):
        if name in UNARY:
            return ask(name, self)
        if type(other) is not Remote:
            raise TypeError(
                f"{name.rstrip('_')} between an object of the answer ({self._kind}) and a value of the tests is "
                "not sent to the answer: it would decide the result; compare the object's data instead"
            )
        return ask(name, self, (other,), {"swap": True} if swap else {})

    return method


UNARY = ("neg", "pos", "abs", "invert")
for _name in (
    "add",
    "sub",
    "mul",
    "truediv",
    "floordiv",
    "mod",
    "pow",
    "matmul",
    "and_",
    "or_",
    "xor",
    "lshift",
    "rshift",
):
    _dunder = _name.rstrip("_")
    setattr(Remote, f"__{_dunder}__", _operator(_name))
    setattr(Remote, f"__r{_dunder}__", _operator(_name, swap=True))
for _name in UNARY:
    setattr(Remote, f"__{_name}__", _operator(_name))


def expect(kind, value, what):
    if type(value) is not kind:
        raise TypeError(f"the answer's {what} gave a {type(value).__name__}, not a {kind.__name__}")
    return value


REMOTES = {}  # ref -> Remote: one handle per object of the answer, so `is` works


def remote(inner):
    if type(inner) is not list or len(inner) != 2 or type(inner[0]) is not int or type(inner[1]) is not str:
        raise WireError("a malformed handle")
    found = REMOTES.get(inner[0])
    if found is None:
        found = REMOTES[inner[0]] = Remote(inner[0], inner[1][:NAME])
    return found


def sendable(value):
    if type(value) is Remote:
        return {"h": value._ref}
    raise CannotCross(f"a {type(value).__name__[:NAME]} of the tests cannot be sent to the answer")


CROSSED = {}  # (name, builtin base) -> the class an answer's exception is raised as here


# Exceptions that steer the tests' own control flow (end a loop, an `all(...)`, the process):
# raised by the answer, they arrive as RuntimeError under their own name. Only `next` on the
# answer's iterator ends an iteration.
STEERING = ("StopIteration", "StopAsyncIteration", "GeneratorExit", "KeyboardInterrupt", "SystemExit")


def crossed_exception(names, message, op=None):
    """The answer's exception as an exception of this interpreter: its own name, derived from
    the nearest builtin exception class in its hierarchy."""
    if type(names) is not list or not names or not all(type(n) is str for n in names):
        raise WireError("a malformed exception")
    base = Exception
    for name in names:
        found = getattr(builtins, name, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            base = found
            break
    if base.__name__ in STEERING and not (op == "next" and base is StopIteration):
        base = RuntimeError
    name = names[0][:NAME]
    if base.__name__ != name:
        base = CROSSED.setdefault((name, base), type(name, (base,), {}))
    try:
        return base(str(message)[:MESSAGE])
    except TypeError:  # a class whose constructor wants more (UnicodeDecodeError): under its name all the same
        return CROSSED.setdefault((name, Exception), type(name, (Exception,), {}))(str(message)[:MESSAGE])


def ask(op, target, args=(), kwargs=None):
    channel, deadline = LINK["channel"], LINK["deadline"]
    if LINK.get("broken"):
        raise WireError(LINK["broken"], ended=LINK.get("ended", False))
    message = {"op": op, "ref": target._ref, "args": encode(list(args), sendable)}
    message["kwargs"] = encode(dict(kwargs or {}), sendable)
    try:
        channel.send(message)
        reply = channel.receive(deadline)
        if "v" in reply:
            return decode(reply["v"], remote)
        if "x" not in reply:
            raise WireError("a reply that is neither a value nor an exception")
        crossed = crossed_exception(reply["x"], reply.get("m"), op)
    except OSError:  # the socket, never the answer's exceptions (raised below, outside this try)
        LINK["broken"], LINK["ended"] = "the answer's process ended", True
        raise WireError(LINK["broken"], ended=True) from None
    except WireError as exc:
        LINK["broken"], LINK["ended"] = str(exc), exc.ended
        raise
    raise crossed


class raises:
    """`with raises(ValueError):` in a test: the block must raise one of these classes."""

    def __init__(self, *kinds, match=None):
        self.kinds, self.match, self.value = kinds, match, None

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None:
            raise AssertionError(f"did not raise {', '.join(getattr(k, '__name__', str(k)) for k in self.kinds)}")
        if issubclass(kind, (CannotCross, WireError, Late)) or not any(self._is(kind, k) for k in self.kinds):
            return False
        if self.match is not None and not re.search(self.match, str(exc)):
            raise AssertionError(f"{str(exc)[:MESSAGE]!r} does not match {self.match!r}")
        self.value = exc
        return True

    @staticmethod
    def _is(kind, expected):
        if type(expected) is Remote:  # the answer's own exception class: matched by name
            return expected._kind == "class:" + kind.__name__
        return issubclass(kind, expected)
