"""A global that lives as long as the worker (the seed's "global" example)."""

count = 0


def increment() -> int:
    global count
    count += 1
    return count
