"""The example web app: the seed's web server, on worker kernels, with Starlette served by uvicorn.

Routes (see README.md beside this file)::

    GET /<name>            reload workers/untrusted/<name>.py in its workers: "Module reloaded" (404 if none)
    GET /<name>/<fn>?k=v   fn({"k": "v"}) in untrusted module <name>, through the trusted handler worker;
                           ?id=... picks a segregated worker (its own process and state)

Every call goes host -> trusted handler worker -> the untrusted module's sandboxed worker, and the server
awaits the handler's asynchronous proxy, so a slow route holds up nothing else. What the module returns
becomes the HTTP answer: a `Response` (examples/app/lib/web.py) as it is, None as 204, a str as text, anything
else as JSON. A worker that dies answers 502, and the server stays up.

`worker_constructor` decides how each worker runs: modules under ``workers/untrusted/`` in the sandbox
(they read only their own module and ``lib/``: no network, no writes, no environment, no processes), the two
trusted modules with the host's rights, and anything else (a module that an untrusted worker names through
``broker_proxy()``) not at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.responses import Response as HTTPResponse
from starlette.routing import Route

from wb_magic import CallTimeout, Permissions, WorkerBroker, WorkerBrokerError, WorkerDied, WorkerSpec
from wb_magic.cleaner import cleaner
from wb_magic.errors import WorkerStartError

from .lib.web import HTTPError, Response  # registers their marshallers in the host
from .upstream import Upstream

APP_DIR = Path(__file__).resolve().parent
LIB_DIR = APP_DIR / "lib"
UNTRUSTED_DIR = APP_DIR / "workers" / "untrusted"
TRUSTED_DIR = APP_DIR / "workers" / "trusted"
HANDLER = TRUSTED_DIR / "handler.py"
FETCH_PROXY = TRUSTED_DIR / "fetch_proxy.py"
UNTRUSTED_HOOKS = APP_DIR / "untrusted_worker.py"  # the untrusted workers' set-up (fetch) and timing logs
UPSTREAM_ENV = "WB_APP_UPSTREAM"  # where fetch_proxy may fetch from

HANDLER_TIMEOUT = 45.0  # the handler gives untrusted calls 30 s, and answers 504 itself when they take longer
RELOAD_TIMEOUT = 30.0
MEMORY_LIMIT = 1 << 30  # bytes of address space for an untrusted worker
CPU_SECONDS = 300.0  # CPU time over an untrusted worker's life; then it is killed (502) and the next call restarts it
MAX_WORKERS = 32  # least recently used idle workers are shut down beyond this (every ?id= starts one)
IDLE_TIMEOUT = 600.0

DEFAULT_PORT = 8000
TRY = (
    "/hello/world",
    "/fetch_example",
    "/test1/ok",
    "/test1/forbidden",
    "/test1/redirect",
    "/test1/error",
    "/test1/echo?greeting=hi&n=1",
    "/test1/proxy?url=/joke",
    "/test1/state",
    "/test1/state?set=foo",
    "/test2/state",
    "/test2/global",
    "/test2/global?set=bar",
    "/test1/state?id=alice",
    "/test1",
    "/console/log",
    "/stateful/set_state?value=kept",
    "/stateful/get_state",
    "/longpoll/wait",
    "/longpoll/release",
    "/test1/nope",
    "/test1/crash",
)

log = logging.getLogger("examples.app")


# -- workers --------------------------------------------------------------------------------------------------


def untrusted_spec(module: str, enforce: str = "strict") -> WorkerSpec:
    """The sandbox of an untrusted module's worker: read its own module and lib/, nothing else.

    lib/ goes on the worker's ``sys.path`` (its modules are imported as ``state`` and ``web``): the worker may
    not list the app's other folders, so it could not import them as ``examples.app.lib.*``.
    """
    return WorkerSpec(
        permissions=Permissions(read=(module, str(LIB_DIR))),
        env={"PYTHONPATH": str(LIB_DIR)},
        hooks=str(UNTRUSTED_HOOKS),
        memory_limit=MEMORY_LIMIT,
        cpu_seconds=CPU_SECONDS,
        enforce=enforce,
    )


def worker_constructor(upstream: str, enforce: str = "strict") -> Callable[[str, str | None], WorkerSpec]:
    """The app's ``worker_constructor``: sandboxed untrusted modules, trusted handler and fetch proxy, and a
    refusal for anything else. ``upstream`` is the base URL the fetch proxy may fetch beneath."""

    def construct(module: str, segregation_id: str | None) -> WorkerSpec:
        path = Path(os.path.realpath(module)) if os.path.isabs(module) else None
        if path is not None and path.parent == UNTRUSTED_DIR and path.suffix == ".py":
            return untrusted_spec(str(path), enforce)
        if path == HANDLER:
            return WorkerSpec()  # the host's rights; and the default spec, so it can come from the warm pool
        if path == FETCH_PROXY:
            return WorkerSpec(env={UPSTREAM_ENV: upstream})
        # e.g. an untrusted module asking for broker_proxy().worker_proxy("subprocess"): it would run trusted
        raise PermissionError(f"the example app runs only its own worker modules, not {module!r}")

    return construct


def call_policy(source_module: str, source_sid: str | None, module: str, sid: str | None, function: str) -> bool | None:
    """The one route beyond the broker's default rule (a sandboxed worker calls only workers as confined as
    itself): untrusted workers may fetch through the trusted fetch proxy, the seed's pattern."""
    if Path(module) == FETCH_PROXY and function == "fetch":
        return True
    return None


def make_broker(upstream: str, enforce: str = "strict") -> WorkerBroker:
    return WorkerBroker(
        call_policy=call_policy,
        worker_constructor=worker_constructor(upstream, enforce),
        worker_cleaner=cleaner(worker_count=MAX_WORKERS, idle_timeout=IDLE_TIMEOUT),
        call_timeout=HANDLER_TIMEOUT,
    )


def untrusted_module(name: str) -> Path | None:
    """The file of untrusted module ``name``, if there is one (``name`` is a URL segment: checked)."""
    if not name.isidentifier():
        return None
    path = UNTRUSTED_DIR / f"{name}.py"
    return path if path.is_file() else None


# -- values to HTTP ---------------------------------------------------------------------------------------------

# headers about one hop's connection, and the ones the server sets itself (one `server`, one `date`)
_HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"content-length",
    b"upgrade",
    b"te",
    b"trailer",
    b"server",
    b"date",
}


def to_http(value: Any) -> HTTPResponse:
    """What a module returned, as an HTTP response: a `Response` as it is, None 204, str text, else JSON."""
    if isinstance(value, Response):
        bodiless = value.status < 200 or value.status in (204, 304)
        answer = HTTPResponse(b"" if bodiless else value.body, value.status)
        for name, text in value.headers:
            key = name.lower().encode("latin-1")
            if key not in _HOP_BY_HOP:
                answer.raw_headers.append((key, text.encode("latin-1", errors="replace")))
        return answer
    if value is None:
        return HTTPResponse(status_code=204)
    if isinstance(value, str):
        return PlainTextResponse(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return HTTPResponse(bytes(value), media_type="application/octet-stream")
    body = json.dumps(value, ensure_ascii=False, default=_jsonable)
    return HTTPResponse(body, media_type="application/json")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


# -- the app ----------------------------------------------------------------------------------------------------


def create_app(broker: WorkerBroker, *, watch: bool = False) -> Starlette:
    """The Starlette app, serving through ``broker`` (made by `make_broker`; the caller closes it). With
    ``watch``, an untrusted module is reloaded in its workers when its file changes (`watch_modules`)."""
    handler = broker.worker_proxy(HANDLER, asynchronous=True)

    async def index(request: Request) -> HTTPResponse:
        base = str(request.base_url).rstrip("/")
        lines = ["wb-magic example app: the seed's web server on worker kernels. Try:", ""]
        return PlainTextResponse("\n".join(lines + [base + url for url in TRY]) + "\n")

    async def reload(request: Request) -> HTTPResponse:
        name = request.path_params["name"]
        path = untrusted_module(name)
        if path is None:
            return PlainTextResponse(f"No module {name!r}", status_code=404)
        buster = str(time.time_ns())
        try:
            await broker.aworker_import(path, buster, timeout=RELOAD_TIMEOUT)
        except HTTPError as error:  # the module raised a response as it was imported (fetch_example does)
            return to_http(error.response)
        except (WorkerDied, WorkerStartError) as exc:
            log.warning("reloading %s: %s", name, exc)
            return PlainTextResponse(f"The worker of {name!r} died", status_code=502)
        except CallTimeout:
            return PlainTextResponse(f"Reloading {name!r} took too long", status_code=504)
        except Exception as exc:
            log.error("reloading %s failed: %s: %s\n%s", name, type(exc).__name__, exc, _remote_trace(exc))
            return PlainTextResponse(f"Module {name!r} failed to load", status_code=500)
        log.info("reloaded %s (cache buster %s)", name, buster)
        return PlainTextResponse("Module reloaded")

    async def call(request: Request) -> HTTPResponse:
        name, fn = request.path_params["name"], request.path_params["fn"]
        if untrusted_module(name) is None:
            return PlainTextResponse(f"No module {name!r}", status_code=404)
        try:
            value = await handler.handle(name, fn, dict(request.query_params))
        except WorkerDied as exc:  # the handler itself died; the next request starts a fresh one
            log.warning("the handler died serving %s/%s: %s", name, fn, exc)
            return PlainTextResponse("The handler worker died", status_code=502)
        except CallTimeout:
            return PlainTextResponse(f"{name}/{fn} took too long", status_code=504)
        except WorkerBrokerError as exc:
            log.error("serving %s/%s: %s", name, fn, exc)
            return PlainTextResponse("Bad Gateway", status_code=502)
        except Exception as exc:
            log.error("serving %s/%s: %s: %s\n%s", name, fn, type(exc).__name__, exc, _remote_trace(exc))
            return PlainTextResponse("Internal Server Error", status_code=500)
        return to_http(value)

    routes = [
        Route("/", index),
        Route("/{name}", reload),
        Route("/{name}/{fn}", call),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watcher = asyncio.create_task(watch_modules(broker)) if watch else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.broker = broker
    return app


async def watch_modules(
    broker: WorkerBroker,
    folder: Path = UNTRUSTED_DIR,
    *,
    ready: asyncio.Event | None = None,
    reloaded: Callable[[Path], None] | None = None,
) -> None:
    """Reload a module of ``folder`` in its workers whenever its file changes, as the seed's ``deno --watch``
    restarts on a change (watchfiles: inotify, no polling of our own). A module that fails to load is logged,
    and its workers serve the version they have until the file is fixed. ``ready`` is set once it watches;
    ``reloaded(path)`` is called after each reload."""
    import watchfiles

    stop = asyncio.Event()
    changes = watchfiles.awatch(folder, stop_event=stop, watch_filter=watchfiles.PythonFilter())
    try:
        waiting = asyncio.ensure_future(changes.__anext__())
        await asyncio.sleep(0)  # awatch starts watching when first awaited
        if ready is not None:
            ready.set()
        while True:
            batch = await waiting
            waiting = asyncio.ensure_future(changes.__anext__())
            for path in sorted({Path(file) for _, file in batch}):
                if path.parent != folder or not path.stem.isidentifier() or not path.is_file():
                    continue
                try:
                    await broker.aworker_import(path, str(time.time_ns()), timeout=RELOAD_TIMEOUT)
                    log.info("%s changed: reloaded", path.name)
                except Exception as exc:
                    log.warning("%s changed, and does not load: %s: %s", path.name, type(exc).__name__, exc)
                if reloaded is not None:
                    reloaded(path)
    finally:
        stop.set()


def _remote_trace(exc: BaseException) -> str:
    return str(getattr(exc, "remote_traceback", "") or "").rstrip()


# -- running it -------------------------------------------------------------------------------------------------


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port``, to hand to uvicorn (``sockets=``) before it starts.

    Made with ``IPPROTO_TCP`` as its protocol, as asyncio's own listening sockets are: asyncio turns Nagle's
    algorithm off (``TCP_NODELAY``) only on connections of such a socket, and ``socket.create_server`` leaves the
    protocol 0. Without it every answer on a kept-alive connection waits for the client's delayed ACK (some 40
    ms). The listening socket has ``TCP_NODELAY`` too, which Linux passes on to the connections it accepts.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m examples.app``: serve the app on http://127.0.0.1:8000 (localhost only) until interrupted."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m examples.app", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("WB_APP_PORT", DEFAULT_PORT)), help="0 picks a free port"
    )
    parser.add_argument(
        "--enforce",
        choices=("strict", "best-effort"),
        default="strict",
        help="strict (the default): an untrusted worker whose sandbox this machine cannot enforce does not start",
    )
    parser.add_argument(
        "--no-watch",
        action="store_true",
        help="do not reload an untrusted module when its file changes (by default it is, as with deno --watch)",
    )
    parser.add_argument(
        "--otel",
        action="store_true",
        help="trace every request through the workers with OpenTelemetry (make demo-otel; examples/app/telemetry.py)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    # SIGTERM ends the server as Ctrl-C does, so that the workers are shut down on the way out
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    sock = listening_socket("127.0.0.1", args.port)  # listening from here on: connections queue
    port = sock.getsockname()[1]
    upstream = Upstream()
    broker = make_broker(upstream.url, args.enforce)
    provider: Any = None  # the tracer provider, with --otel
    try:
        broker.worker_import(HANDLER)  # start the handler now rather than on the first request
        base = f"http://localhost:{port}"
        print(f"wb-magic example app listening on {base}/ (127.0.0.1 only). Try:", flush=True)
        for url in TRY:
            print(f"  {base}{url}", flush=True)
        print(f"(the fetch proxy fetches from {upstream.url}, a stand-in for a joke API; Ctrl-C stops)", flush=True)
        app: Any = create_app(broker, watch=not args.no_watch)
        if args.otel:
            from .telemetry import instrument

            app, provider, where = instrument(app)
            print(f"tracing every request with OpenTelemetry; spans go to {where}", flush=True)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info")
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        if provider is not None:
            provider.shutdown()  # exports what is still queued
        broker.close()
        upstream.close()
        sock.close()
    print("example app stopped; its workers are shut down", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
