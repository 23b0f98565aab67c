"""Functions that go wrong in each of the ways a remote call can."""

import os
import signal
import time


class OutOfStock(Exception):
    """An exception class of this module's own."""


def divide(a: float, b: float) -> float:
    return a / b


def order(item: str) -> str:
    raise OutOfStock(f"no {item} left")


def wait_forever() -> None:
    """Never returns on its own: a timeout or an interrupt has to stop it."""
    print("waiting...", flush=True)
    while True:
        time.sleep(0.05)


def crash() -> None:
    """Kill this worker's process, as a segfault or the out-of-memory killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


def process_id() -> int:
    return os.getpid()
