"""A piece of state kept in a shared module, as the seed's ``lib/state.ts``.

test1 and test2 both import this module, yet each sees its own value: each runs in a worker of its own, and
each worker has its own copy of every module it imports. Reloading test1 re-executes test1 (which sets the
state again) but not this module: a module's dependencies are not re-run.
"""

from __future__ import annotations

_state: str | None = None


def get_state() -> str | None:
    return _state


def set_state(value: str) -> None:
    global _state
    _state = value
