"""Keeps state in a dependency (lib/state.py), set when this module is executed."""

from lib import state

state.put("initial")
executions = getattr(state, "executions", 0) + 1
state.executions = executions


def get():
    return state.get()


def put(value):
    return state.put(value)


def executed() -> int:
    """How many times this module's source has run in this worker (its dependency counts)."""
    return state.executions
