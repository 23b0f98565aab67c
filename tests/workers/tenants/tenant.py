"""One tenant's state, kept in its worker (one worker per segregation id)."""

state = {"value": None}


def get():
    return state["value"]


def put(value):
    state["value"] = value
    return value


def fail(reason):
    secret_of_this_file = "the-tenant-module-source"  # a line a caller that may not read this file must not see
    raise ValueError(reason + secret_of_this_file[:0])
