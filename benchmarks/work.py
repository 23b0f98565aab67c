"""The work every peer does: the same small functions, called in another process."""

from __future__ import annotations

from typing import Any


def hello(name: str) -> str:
    return f"Hello {name}"


def echo(value: Any) -> Any:
    return value


FUNCTIONS = {"hello": hello, "echo": echo}
EXPECTED = "Hello World"
