"""Reads the value that writer.py stores in shared_state.py, or tries to."""

import shared_state


def get() -> str:
    """The value in shared_state, as this worker sees it."""
    return shared_state.value
