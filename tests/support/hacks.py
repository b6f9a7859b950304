"""Answers that try to forge their score instead of solving the task (`add(a, b)`), the tests
they face, and honest controls. Shared by the tests of every scoring path."""

from __future__ import annotations

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-1, 1) == 0"]
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
SLOW_RIGHT = "import time\n\ndef add(a, b):\n    time.sleep(0.3)\n    return a + b\n"

# The five the issue found, each a full score under the in-process design.
HACKS = {
    "always-equal object": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n\ndef add(a, b):\n    return Anything()\n"
    ),
    "builtins.exec replaced": "import builtins\nbuiltins.exec = lambda *a, **k: None\n\ndef add(a, b):\n    return -1\n",
    "test list rewritten through a frame": (
        "import sys\ntests = sys._getframe(1).f_locals['tests']\ntests[:] = ['pass'] * len(tests)\n\n"
        "def add(a, b):\n    return -1\n"
    ),
    "test list found with gc": (
        "import gc\nfor o in gc.get_objects():\n"
        "    if type(o) is list and o and all(type(x) is str and x.startswith('assert add') for x in o):\n"
        "        o[:] = ['pass'] * len(o)\n\n"
        "def add(a, b):\n    return -1\n"
    ),
    "fake result written to an inherited pipe": (
        "import json, os\nfake = json.dumps({'compiled': True, 'error': None, 'errors': [None, None, None]}).encode()\n"
        "for fd in range(3, 64):\n    try:\n        os.write(fd, fake)\n    except OSError:\n        pass\n"
        "os._exit(0)\n"
    ),
}

# Aimed at the isolated design itself.
NEW_HACKS = {
    "int subclass with a forged __eq__": (
        "class Three(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n\n"
        "def add(a, b):\n    return Three(0)\n"
    ),
    "tuple subclass with a forged __eq__": (
        "class T(tuple):\n    def __eq__(self, other):\n        return True\n\ndef add(a, b):\n    return T()\n"
    ),
    "raises the harness's exception to force the in-process mode": (
        "class CannotCross(BaseException):\n    pass\n\ndef add(a, b):\n    raise CannotCross('please run me in-process')\n"
    ),
    "raises AssertionError's parent to look like a pass": "def add(a, b):\n    raise SystemExit(0)\n",
    "exits in the middle of the tests": "import os\n\ndef add(a, b):\n    os._exit(0)\n",
    "kills every process it can signal": (
        "import os, signal\n\ndef add(a, b):\n    for pid in range(2, 4096):\n        try:\n"
        "            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n    return -1\n"
    ),
    "stops every process it can signal": (
        "import os, signal\nfor pid in range(2, 4096):\n    if pid != os.getpid():\n        try:\n"
        "            os.kill(pid, signal.SIGSTOP)\n        except OSError:\n            pass\n\n"
        "def add(a, b):\n    return -1\n"
    ),
    "writes forged replies on every descriptor": (
        "import os\nfor fd in range(3, 64):\n    try:\n"
        '        os.write(fd, b\'{"v": 3}\\n{"v": 4}\\n{"v": 0}\\n\' * 100)\n    except OSError:\n        pass\n\n'
        "def add(a, b):\n    return -1\n"
    ),
    "a reply too deep to decode": "def add(a, b):\n    x = []\n    for _ in range(100000):\n        x = [x]\n    return x\n",
    "a reply too large to read": "def add(a, b):\n    return 'x' * (40 << 20)\n",
    "membership that is always true": (
        "class Bag:\n    def __contains__(self, item):\n        return True\n    def __iter__(self):\n        return iter(())\n\n"
        "def add(a, b):\n    return Bag()\n"
    ),
    "a bool and a str that claim anything": (
        "class Liar:\n    def __bool__(self):\n        return True\n    def __str__(self):\n        return '3'\n"
        "    def __index__(self):\n        return 3\n\ndef add(a, b):\n    return Liar()\n"
    ),
}

# Looks for the tests' text wherever an answer can look: its memory, every process it can see,
# every file descriptor, /tmp. `found` tells the test whether it saw any.
SEEKER = """
import gc, os
needle = 'add(2, 2) ' + '== 4'
found = any(type(o) is list and any(type(x) is str and needle in x for x in o) for o in gc.get_objects())
for pid in os.listdir('/proc'):
    for part in ('cmdline', 'environ', 'mem'):
        try:
            found = found or needle.encode() in open('/proc/%s/%s' % (pid, part), 'rb').read(1 << 20)
        except OSError:
            pass
for root, dirs, files in os.walk('/tmp'):
    for name in files:
        try:
            found = found or needle.encode() in open(os.path.join(root, name), 'rb').read()
        except OSError:
            pass

def add(a, b):
    return a + b
"""
SEEKER_TESTS = ["assert not found", "assert add(2, 2) == 4"]

# Found by trying to break the isolated design: each against its own tests.
FLOAT_TESTS = [
    "assert abs(add(0.1, 0.2) - 0.3) < 1e-9",
    "assert abs(3.0 - add(1.5, 1.5)) < 1e-9",
    "assert add(1, 2) - 3 == 0",
    "assert (add(2, 2) - 4) ** 2 < 1e-12",
    "import math\nassert math.isclose(add(0.1, 0.2), 0.3)",
    "assert all(map(lambda p: add(p[0], p[1]) == p[2], [(1, 2, 3), (2, 2, 4)]))",
    "with raises(TypeError):\n    add('a', 1)",
]
AGAINST_THE_TESTS = {
    "arithmetic with the expected value decided by the answer": (
        "class Zero:\n    def __sub__(self, other):\n        return 0.0\n    __rsub__ = __sub__\n\n"
        "def add(a, b):\n    return Zero()\n"
    ),
    "redefines the builtins the tests judge with": (
        "def abs(x):\n    return 0\n\ndef all(xs):\n    return True\n\ndef add(a, b):\n    return -1\n"
    ),
    "redefines the tests' raises helper": (
        "class raises:\n    def __init__(self, *a, **k):\n        pass\n    def __enter__(self):\n        return self\n"
        "    def __exit__(self, *a):\n        return True\n\ndef add(a, b):\n    return -1\n"
    ),
    "sends a forged __builtins__ to push an import into the in-process mode": (
        "import __main__\nsend = __main__.Channel.send\n\n"
        "def forged(self, message):\n    if 'names' in message:\n"
        "        message['names']['__builtins__'] = {'d': [['__import__', message['names']['add']]]}\n"
        "    return send(self, message)\n\n__main__.Channel.send = forged\n\ndef add(a, b):\n    return -1\n"
    ),
    "raises StopIteration to end the tests' own loops": "def add(a, b):\n    raise StopIteration\n",
    "copies a sibling's solution from its supervisor's memory": (
        "import sys\nf = sys._getframe()\nwhile f is not None and 'batch' not in f.f_locals:\n    f = f.f_back\n"
        "for job in f.f_locals['batch']['jobs']:\n    env = {}\n    try:\n        exec(job['code'], env)\n"
        "        if env['add'](20, 22) == 42:\n            add = env['add']\n            break\n"
        "    except BaseException:\n        pass\n"
    ),
}

# Answers that try to spoil the answers after them in the same batch.
SPOILERS = {
    "locks /tmp": "import os\nos.chmod('/tmp', 0)\n",
    "locks its working folder": "import os\nos.chmod('.', 0)\n",
    "a tree too deep to remove recursively": "import os\nfor i in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\n",
    "an unreadable folder with a note and 60 MB": (
        "import os\nos.makedirs('/tmp/keep/x')\nopen('/tmp/keep/x/note', 'w').write('a secret')\n"
        "for i in range(4):\n    open('/tmp/keep/x/f%d' % i, 'wb').write(b'0' * (15 << 20))\nos.chmod('/tmp/keep/x', 0)\n"
    ),
    "writes forged results to the jail's standard streams": (
        "import json, os\nline = json.dumps({'compiled': True, 'errors': [None] * 3, 'error': None}) + '\\n'\n"
        "for fd in (1, 2):\n    try:\n        os.write(os.open('/proc/1/fd/%d' % fd, os.O_WRONLY), (line + 'stopped\\n') * 8)\n"
        "    except OSError:\n        pass\n"
    ),
}
# What the answer after a spoiler does: reads the note if it can, writes a file, adds.
AFTER_SPOILER = (
    "import os\ntry:\n    os.chmod('/tmp/keep/x', 0o700)\n    note = open('/tmp/keep/x/note').read()\nexcept OSError:\n"
    "    note = None\nopen('mine.bin', 'wb').write(b'0' * (8 << 20))\n\ndef add(a, b):\n    return a + b\n"
)
AFTER_TESTS = [*ADD_TESTS, "assert note is None"]
