"""State in a global: it lives as long as the worker that imported this module."""

count = 0


def increment() -> int:
    """Add one to the count and return it."""
    global count
    count += 1
    return count
