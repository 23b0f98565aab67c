"""test1's twin: the same shared ``state`` module, its own worker, so its own state ("test2")."""

from state import get_state, set_state

set_state("test2")
value = "test2"


def state(params: dict) -> str | None:
    if "set" in params:
        set_state(params["set"])
    return get_state()


def global_(params: dict) -> str:
    global value
    if "set" in params:
        value = params["set"]
    return value
