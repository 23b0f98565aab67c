"""Keeps its state in another module, shared_state.py."""

import shared_state


def put(value: str) -> str:
    """Store a value in shared_state."""
    shared_state.value = value
    return value


def get() -> str:
    """The value in shared_state, as this worker sees it."""
    return shared_state.value
