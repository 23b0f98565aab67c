"""A module served by a worker with entry hooks (tests/workers/hooks.py)."""


def ping():
    return "pong"
