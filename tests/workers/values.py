"""Functions that hand values back, raise, print and misbehave, for the broker's tests."""

import os
import signal
import sys
import time


def echo(value):
    return value


def echo_many(*args, **kwargs):
    return [list(args), kwargs]


def nothing():
    return None


def raise_builtin(kind: str, message: str):
    raise {"ValueError": ValueError, "KeyError": KeyError, "PermissionError": PermissionError}[kind](message)


class CustomError(Exception):
    pass


def raise_custom(message: str):
    raise CustomError(message)


def exit_worker():
    sys.exit(3)


def unsendable():
    return object()


def lone_surrogate(where: str):
    """A str that UTF-8 (and so JSON on the wire) cannot carry, in the result or in an error's message."""
    if where == "error":
        raise ValueError("bad \ud800 text")
    return "a\ud800b"


def talk(lines: int):
    for i in range(lines):
        print(f"line {i}")
    print("to stderr", file=sys.stderr)
    return lines


def crash():
    os.kill(os.getpid(), signal.SIGKILL)


def block_until_interrupted():
    print("started", flush=True)
    try:
        while True:
            time.sleep(0.01)
    except KeyboardInterrupt:
        return "interrupted"


def slow(seconds: float):
    time.sleep(seconds)
    return seconds


def pid():
    return os.getpid()


def array_sum(array):
    return float(array.sum())


def make_array(n: int):
    import numpy

    return numpy.arange(n, dtype="float64").reshape(-1, 2)


def environment(name: str):
    return os.environ.get(name)


_kept = []


def allocate(megabytes: int) -> int:
    """Hold on to that much memory, touched so that it counts."""
    _kept.append(bytearray(megabytes * 1024 * 1024))
    return sum(len(b) for b in _kept)


def wait_for_file(path: str):
    """Say so, then wait until ``path`` exists (polling inside the worker is fine: the test waits on the print)."""
    print("waiting", flush=True)
    while not os.path.exists(path):
        time.sleep(0.005)
    return "released"


def write_line(path: str, text: str) -> None:
    """Write a line into a FIFO (waiting for its reader, as a FIFO does)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def echo_print(text: str) -> None:
    print(text)
