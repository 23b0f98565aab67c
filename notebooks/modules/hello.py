"""The seed's hello example, and a way to see which process answers."""

import os


def hello(name: str) -> str:
    """Greet someone."""
    return f"Hello {name}"


def process_id() -> int:
    """The id of the process this function runs in."""
    return os.getpid()
