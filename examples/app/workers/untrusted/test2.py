"""test1's twin: the same shared ``state`` module, its own worker, so its own state ("test2")."""

from state import get_state, set_state

set_state("test2")


def global_(params: dict) -> str | None:
    if "set" in params:
        globals()["FOO"] = params["set"]
    return globals().get("FOO")


def state(params: dict) -> str:
    if "set" in params:
        set_state(params["set"])
    return get_state()
