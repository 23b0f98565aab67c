"""The seed's test module: answers, a raised error, a raised response, a redirect, state, and a fetch.

``/test1/state`` shows the state kept in the shared ``lib/state.py`` (``?set=x`` changes it); ``/test1/global``
a global of this module, unset (204) until ``?set=x``. test2 imports the same ``state`` module and keeps its own.
"""

import os

from state import get_state, set_state
from web import HTTPError, Response, fetch

set_state("test1")  # runs again when the module is reloaded; lib/state.py itself is not re-run


def ok(params: dict) -> str:
    return "ok"


def global_(params: dict) -> str | None:
    """``/test1/global``: ``global`` is a Python keyword, so the handler calls ``global_``."""
    if "set" in params:
        globals()["FOO"] = params["set"]
    return globals().get("FOO")


def state(params: dict) -> str:
    if "set" in params:
        set_state(params["set"])
    return get_state()


def error(params: dict) -> None:
    raise Exception("Not ok")


def forbidden(params: dict) -> None:
    raise HTTPError(403)


def redirect(params: dict) -> Response:
    # the seed's goes to https://example.com; this machine may have no internet, so a page of the app
    return Response.redirect("/hello/world")


def echo(params: dict) -> dict:
    return params


def proxy(params: dict) -> Response:
    """``/test1/proxy?url=/joke&method=GET``: a fetch through the trusted fetch proxy."""
    return fetch(params["url"], method=params.get("method", "GET"))


def crash(params: dict) -> None:
    """Ends this worker's process mid-call: the server answers 502 and starts a fresh worker next time."""
    os._exit(70)
