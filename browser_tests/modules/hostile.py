"""A worker module for the browser tests: a call that never ends, and HTML and JavaScript in every text it controls."""

import os

PAYLOAD = '<b>bold</b><script>window.wbInjected = "script"</script><img src="x" onerror="window.wbInjected = \'img\'">'


def shout(text: str, times: int = 2) -> str:
    """Repeat TEXT, louder.

    <script>window.wbInjected = "docstring"</script><img src="x" onerror="window.wbInjected = 1">
    """
    return " ".join([text.upper()] * times)


def spin() -> None:
    """Loop until interrupted."""
    print("spinning", flush=True)
    while True:
        pass


def process_id() -> int:
    return os.getpid()


def fail() -> None:
    raise ValueError(PAYLOAD)


def echo() -> str:
    print(PAYLOAD, flush=True)
    return PAYLOAD
