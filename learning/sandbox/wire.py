"""Plain data across the wall between an answer and its tests (runs inside the jails).

The answer runs in one process and its tests in another (learning/sandbox/answers.py and
learning/sandbox/verdicts.py); a test calls the answer's functions through a socket, and every
argument and return value crosses as plain data: None, bool, int, float, str, and lists, tuples,
dicts, sets, frozensets, bytes and complex numbers of them, matched by exact type (a subclass of
int with its own __eq__ is not an int here). Anything else an answer returns stays in the answer's
process and crosses as a handle: {"h": [ref, type name]}. Exceptions cross as their class names
(most derived first) and message.

A message is one line of JSON. This module is part of the programs that run inside the jails
(learning/sandbox/execute.py joins the sources): it imports nothing but the standard library.
"""

import json
import os
import select
import time

MESSAGE_BYTES = 16 << 20  # the longest message either side accepts
NAME = 80  # characters kept of a type name


# The harness's own exceptions derive from BaseException, so a test's `except Exception` never
# swallows them.
class CannotCross(BaseException):
    """A value of the tests that is neither plain data nor a handle to an object of the answer."""


class WireError(BaseException):
    """The other side broke the protocol or went away (`ended`: its process is gone)."""

    def __init__(self, message, ended=False):
        super().__init__(message)
        self.ended = ended


class Late(BaseException):
    """The deadline passed while waiting for the other side."""


def encode(value, other):
    """`value` as JSON-able plain data; `other(value)` decides for anything that is not plain."""
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float:
        return value
    if kind is int:
        return value if -(1 << 2048) < value < 1 << 2048 else other(value)
    if kind is list:
        return [encode(v, other) for v in value]
    if kind is tuple:
        return {"t": [encode(v, other) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, other), encode(v, other)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {"s" if kind is set else "f": [encode(v, other) for v in value]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    return other(value)


def decode(data, handle):
    """The plain data `encode` made; `handle(payload)` for a handle. WireError when malformed."""
    kind = type(data)
    if data is None or kind is bool or kind is int or kind is float or kind is str:
        return data
    if kind is list:
        return [decode(v, handle) for v in data]
    if kind is not dict or len(data) != 1:
        raise WireError("not plain data")
    ((tag, inner),) = data.items()
    try:
        if tag == "t":
            return tuple(decode(v, handle) for v in inner)
        if tag == "d":
            return {decode(k, handle): decode(v, handle) for k, v in inner}
        if tag == "s":
            return {decode(v, handle) for v in inner}
        if tag == "f":
            return frozenset(decode(v, handle) for v in inner)
        if tag == "b":
            return bytes.fromhex(inner)
        if tag == "c":
            return complex(float(inner[0]), float(inner[1]))
        if tag == "h":
            return handle(inner)
    except WireError:
        raise
    except Exception as exc:  # unhashable keys, bad hex, wrong shapes
        raise WireError(f"malformed {tag!r} value ({type(exc).__name__})") from None
    raise WireError(f"unknown tag {str(tag)[:20]!r}")


def exception_names(exc):
    """The exception's class names, most derived first (crossed instead of the object)."""
    return [str(getattr(k, "__name__", "?"))[:NAME] for k in type(exc).__mro__][:32]


class Channel:
    """Line-framed JSON messages over a connected socket's file descriptor."""

    def __init__(self, fd):
        self.fd, self.buf = fd, b""

    def send(self, message):
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        while data:
            data = data[os.write(self.fd, data) :]

    def receive(self, deadline=None):
        """The next message (a dict); WireError on EOF, garbage, an oversized line or the deadline."""
        while b"\n" not in self.buf:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Late
                if not select.select([self.fd], [], [], left)[0]:
                    continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                raise WireError("the answer's process ended", ended=True)
            self.buf += chunk
            if len(self.buf) > MESSAGE_BYTES:
                raise WireError(f"a message longer than {MESSAGE_BYTES >> 20} MB")
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise WireError("a message that is not JSON") from None
        if type(message) is not dict:
            raise WireError("a message that is not an object")
        return message
