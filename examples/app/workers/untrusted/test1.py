"""The seed's test module: responses, thrown responses, and state.

``/test1/state`` shows the state kept in the shared ``lib/state.py`` (``?set=x`` changes it); ``/test1/global``
a global of this module. Each starts at "test1". test2 imports the same ``state`` module and keeps its own.
"""

import os

from state import get_state, set_state
from web import HTTPError, Response, endpoint

set_state("test1")  # runs again when the module is reloaded; lib/state.py itself is not re-run
value = "test1"


def ok(params: dict) -> Response:
    return Response("ok")


@endpoint
def forbidden(params: dict) -> Response:
    raise HTTPError(403)


def redirect(params: dict) -> Response:
    return Response.redirect("/hello/world")


def error(params: dict) -> Response:
    return Response("Not ok", status=500)


def state(params: dict) -> str | None:
    if "set" in params:
        set_state(params["set"])
    return get_state()


def global_(params: dict) -> str:
    """``/test1/global``: ``global`` is a Python keyword, so the handler calls ``global_``."""
    global value
    if "set" in params:
        value = params["set"]
    return value


def crash(params: dict) -> None:
    """Ends this worker's process mid-call: the server answers 502 and starts a fresh worker next time."""
    os._exit(70)
