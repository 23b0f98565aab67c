"""The trusted request handler: the server hands it ``/<name>/<fn>?query`` and it calls ``fn(query)`` in the
untrusted module ``workers/untrusted/<name>.py``, as the seed's handler worker does.

It runs in a trusted worker (the host's rights) and calls the untrusted module through the broker, in that
module's sandboxed worker (``?id=`` picks a segregated one: its own process, its own state). ``handle`` is a
coroutine, so this one worker serves many requests at once. What goes wrong in the untrusted module becomes an
HTTP answer here: a raised `HTTPError` its response, no such function 404, its worker died 502, too slow 504,
any other exception 500 with its message (the remote traceback goes to the server's log, not in the answer).
"""

from __future__ import annotations

import keyword
import logging
from pathlib import Path
from typing import Any

from examples.app.lib.web import HTTPError, Response
from worker_kernel import broker_proxy
from worker_kernel.errors import CallTimeout, RemoteError, WorkerDied, WorkerStartError

UNTRUSTED = Path(__file__).resolve().parent.parent / "untrusted"
CALL_TIMEOUT = 30.0  # seconds an untrusted function may take; the server waits a little longer for us

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
log = logging.getLogger("handler")
broker = broker_proxy()


def function_name(fn: str) -> str:
    """The Python name of the function that URL segment ``fn`` calls: ``global`` is a keyword, so
    ``/test1/global`` calls ``global_`` (PEP 8's trailing underscore)."""
    return fn + "_" if keyword.iskeyword(fn) else fn


def module_path(name: str) -> Path | None:
    """The untrusted module ``name``, if there is one."""
    if not name.isidentifier():
        return None
    path = UNTRUSTED / f"{name}.py"
    return path if path.is_file() else None


async def handle(name: str, fn: str, params: dict[str, str]) -> Any:
    """Call ``fn(params)`` in untrusted module ``name`` and return what it returns, or an error `Response`."""
    if module_path(name) is None:
        return Response(f"No module {name!r}", status=404)
    function = function_name(fn)
    if not fn.isidentifier() or fn.startswith("_"):
        return Response(f"No function {fn!r} in {name!r}", status=404)
    target = (f"../untrusted/{name}.py", params.get("id") or None)
    call = broker.worker_fn_proxy(target, function, asynchronous=True, timeout=CALL_TIMEOUT)
    try:
        return await call(params)
    except HTTPError as error:  # raised as the seed's modules throw a Response: served as it is
        return error.response
    except AttributeError as exc:
        if str(exc) == f"module {name!r} has no function {function!r}":  # the worker's own answer
            return Response(f"No function {fn!r} in {name!r}", status=404)
        return _failed(name, fn, exc)
    except (WorkerDied, WorkerStartError) as exc:
        log.warning("%s.%s(): %s", name, function, exc)
        return Response(f"The worker of {name!r} died", status=502)
    except CallTimeout:
        log.warning("%s.%s() took longer than %s s", name, function, CALL_TIMEOUT)
        return Response(f"{name}.{fn} took too long", status=504)
    except Exception as exc:
        return _failed(name, fn, exc)


def _failed(name: str, fn: str, exc: Exception) -> Response:
    """500 with the exception's message, as the seed's handler answers (the traceback goes to the log only)."""
    trace = getattr(exc, "remote_traceback", "") or ""
    log.error("%s.%s failed: %s: %s\n%s", name, fn, type(exc).__name__, exc, trace.rstrip())
    message = exc.message if isinstance(exc, RemoteError) else str(exc)
    return Response(message or "Internal Server Error", status=500)
