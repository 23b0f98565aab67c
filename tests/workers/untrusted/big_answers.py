"""Answers a worker-to-worker call with a large value (for backpressure.ask_for_big_answers)."""

MiB = 1 << 20


def big(mib):
    return bytes(mib * MiB)


def large_json(count):
    """A result whose JSON is large (``count`` strings of 100 characters): more than a sandboxed worker may send."""
    return ["x" * 100] * count
