"""The example web app (examples/app), driven over HTTP: every route, the seed README's state-isolation and
cache-busting walk-throughs, the sandbox of its untrusted workers, crashes, a slow route beside fast ones, and
once the real server started as `make demo` starts it.

Real workers (the untrusted ones sandboxed), a real upstream socket for the fetch proxy, Starlette's TestClient
for the app, and uvicorn in a subprocess for the last test.
"""

from __future__ import annotations

import http.client
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from starlette.testclient import TestClient

from examples.app.lib.web import HTTPError, Response
from examples.app.server import (
    FETCH_PROXY,
    HANDLER,
    LIB_DIR,
    UNTRUSTED_DIR,
    create_app,
    make_broker,
    untrusted_spec,
    worker_constructor,
)
from examples.app.upstream import JOKES, Upstream
from wb_magic import Permissions, WorkerBroker, WorkerSpec
from worker_kernel.codec import DecodeError, decode_value, encode_value
from worker_kernel.sandbox import landlock_abi

REPO = Path(__file__).resolve().parent.parent
TEST1 = UNTRUSTED_DIR / "test1.py"

needs_sandbox = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.uname().machine != "x86_64" or landlock_abi() < 6,
    reason="the app's untrusted workers are sandboxed: Linux on x86_64 with Landlock ABI 6 or later",
)
pytestmark = needs_sandbox


@pytest.fixture(scope="module")
def upstream():
    with Upstream() as server:
        yield server


@pytest.fixture(scope="module")
def app_broker(upstream):
    broker = make_broker(upstream.url)
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def client(app_broker):
    with TestClient(create_app(app_broker), follow_redirects=False) as test_client:
        yield test_client


def text(client: TestClient, url: str) -> str:
    answer = client.get(url)
    assert answer.status_code == 200, (url, answer.status_code, answer.text)
    return answer.text


# -- every route --------------------------------------------------------------------------------------------


def test_index_lists_the_urls_to_try(client):
    answer = client.get("/")
    assert answer.status_code == 200
    assert "http://testserver/hello/world" in answer.text
    assert "http://testserver/test1/state?set=foo" in answer.text


def test_hello_world(client):
    answer = client.get("/hello/world")
    assert (answer.status_code, answer.text) == (200, "Hello World")
    assert answer.headers["content-type"].startswith("text/plain")
    assert text(client, "/hello/hello?name=Ada") == "Hello Ada"


def test_echo_answers_its_parameters_as_json(client):
    answer = client.get("/test1/echo?greeting=hi&n=1&empty=")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"greeting": "hi", "n": "1", "empty": ""}


def test_test1_responses(client):
    ok = client.get("/test1/ok")
    assert (ok.status_code, ok.text) == (200, "ok")
    forbidden = client.get("/test1/forbidden")  # a raised HTTPError, as the seed's module throws a Response
    assert (forbidden.status_code, forbidden.text) == (403, "Forbidden")
    redirect = client.get("/test1/redirect")
    assert redirect.status_code == 302
    assert redirect.headers["location"] == "/hello/world"
    assert client.get("/test1/redirect", follow_redirects=True).text == "Hello World"
    error = client.get("/test1/error")  # raises Exception("Not ok"): 500 with the message
    assert (error.status_code, error.text) == (500, "Not ok")


def test_test1_proxy_fetches_through_the_fetch_proxy(client, upstream, capsys):
    """``proxy(url, method)``: a fetch through the fetch proxy, which the untrusted worker's entry hooks set up
    before test1 was imported (its worker has no network of its own)."""
    answer = client.get("/test1/proxy?url=/joke")
    assert answer.status_code == 200 and answer.text in JOKES
    assert f"fetch_proxy: test1.py fetched GET {upstream.url}joke -> 200" in capsys.readouterr().err
    posted = client.get("/test1/proxy?url=/joke&method=POST")  # the upstream answers GET only
    assert posted.status_code == 501
    assert f"test1.py fetched POST {upstream.url}joke -> 501" in capsys.readouterr().err
    assert client.get("/test1/proxy?url=http://example.com/").status_code == 403
    assert client.get("/test1/proxy?url=/joke&method=GET%20/x").status_code == 400


def test_untrusted_calls_are_timed_by_the_entry_hooks(client, capsys):
    assert text(client, "/test1/ok") == "ok"
    assert re.search(r"\[test1\] ok\(\) took \d+\.\d ms", capsys.readouterr().err)


def test_state_isolation_walkthrough(client):
    """The seed README's "State isolation": test1 and test2 import the same lib/state.py, each in its worker."""
    assert text(client, "/test1") == "Module reloaded"  # start from the modules' own values
    assert text(client, "/test2") == "Module reloaded"
    steps = [
        ("/test1/state", "test1"),
        ("/test1/state?set=foo", "foo"),
        ("/test1/state", "foo"),
        ("/test2/state", "test2"),
        ("/test2/state?set=bar", "bar"),
        ("/test2/state", "bar"),
        ("/test1/state", "foo"),
    ]
    assert [(url, text(client, url)) for url, _ in steps] == steps


def test_global_isolation_walkthrough(client):
    """The same with a global of each module (``/test1/global`` calls ``global_``: ``global`` is a keyword),
    which starts unset, as the seed's ``globalThis.FOO``: 204 until it is set."""
    assert text(client, "/test1") == "Module reloaded"
    assert text(client, "/test2") == "Module reloaded"
    assert client.get("/test1/global").status_code == 204
    assert client.get("/test2/global").status_code == 204
    steps = [
        ("/test1/global?set=foo", "foo"),
        ("/test1/global", "foo"),
        ("/test2/global?set=bar", "bar"),
        ("/test1/global", "foo"),
        ("/test2/global", "bar"),
    ]
    assert [(url, text(client, url)) for url, _ in steps] == steps


def test_cache_busting_walkthrough(client, app_broker):
    """The seed README's "Cache busting": reloading test1 re-executes it in the same worker, which resets the
    state it keeps in lib/state.py (that module itself is not re-run)."""
    assert text(client, "/test1/state?set=changed") == "changed"
    assert text(client, "/test1/state") == "changed"
    pid = app_broker.worker_for(TEST1).pid
    assert text(client, "/test1") == "Module reloaded"
    assert text(client, "/test1/state") == "test1"
    assert app_broker.worker_for(TEST1).pid == pid  # the same worker: the module was re-executed in it


def test_segregation_id_picks_a_worker_of_its_own(client, app_broker):
    assert text(client, "/test1") == "Module reloaded"
    assert text(client, "/test1/state?id=alice&set=a") == "a"
    assert text(client, "/test1/state?id=bob") == "test1"
    assert text(client, "/test1/state") == "test1"
    assert text(client, "/test1/state?id=alice") == "a"
    pids = {app_broker.worker_for((TEST1, who)).pid for who in (None, "alice", "bob")}
    assert len(pids) == 3
    # a reload reaches the segregated workers too, at their next call
    assert text(client, "/test1") == "Module reloaded"
    assert text(client, "/test1/state?id=alice") == "test1"


def test_unknown_modules_and_functions_are_404(client):
    assert client.get("/nope").status_code == 404
    assert client.get("/nope/x").status_code == 404
    assert client.get("/favicon.ico").status_code == 404
    assert client.get("/test1/nope").status_code == 404
    assert client.get("/test1/_private").status_code == 404
    assert client.get("/test1/get_state").status_code == 404  # imported from lib/state.py: not test1's own
    assert client.get("/test1/Response").status_code == 404
    assert client.get("/%2E%2E/x").status_code == 404
    assert client.get("/handler/handle").status_code == 404  # trusted modules are not routes


def test_console_prints_on_the_server(client, capsys):
    assert text(client, "/console/log") == "check yer logs"
    assert "Hello World" in capsys.readouterr().out
    assert text(client, "/console/debug") == "check yer logs"
    assert "Hello World" in capsys.readouterr().err


def test_stateful_keeps_a_string_per_worker(client):
    assert text(client, "/stateful") == "Module reloaded"
    assert text(client, "/stateful/get_state") == ""
    assert client.get("/stateful/set_state?value=kept").status_code == 204
    assert text(client, "/stateful/get_state") == "kept"
    assert text(client, "/stateful/get_state?id=other") == ""  # a segregated worker: its own module state


def test_fetch_example_raises_the_page_it_fetched(client, capsys, upstream):
    """As the seed's: the module fetches through the trusted proxy as it is imported, and raises the response,
    so its reload and every function of it answer with the fetched page."""
    answer = client.get("/fetch_example")
    assert answer.status_code == 200
    assert answer.text in JOKES
    assert answer.headers["content-type"].startswith("text/plain")
    assert client.get("/fetch_example/anything").text in JOKES
    captured = capsys.readouterr()
    assert "THIS: 200 text/plain; charset=utf-8" in captured.out
    assert f"fetch_proxy: fetch_example.py fetched GET {upstream.url}joke -> 200" in captured.err


# -- faults and concurrency ---------------------------------------------------------------------------------


def test_a_crashing_worker_is_502_and_the_server_stays_up(client, app_broker):
    assert text(client, "/test1/ok") == "ok"
    pid = app_broker.worker_for(TEST1).pid
    crashed = client.get("/test1/crash")
    assert crashed.status_code == 502
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert text(client, "/hello/world") == "Hello World"
    assert text(client, "/test1/ok") == "ok"  # a fresh worker
    assert app_broker.worker_for(TEST1).pid != pid


def test_a_slow_route_does_not_hold_up_the_others(client):
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.get, "/longpoll/wait?timeout=60")
        assert client.get("/longpoll/waiting?until=1&timeout=60").json() == 1  # served while the wait waits
        assert text(client, "/hello/world") == "Hello World"
        assert text(client, "/test1/ok") == "ok"
        assert not waiting.done()
        assert client.get("/longpoll/release").json() == {"released": 1}
        answer = waiting.result(timeout=60)
    assert (answer.status_code, answer.text) == (200, "released")


def test_the_handler_dying_mid_request_is_502(client, app_broker):
    assert text(client, "/hello/world") == "Hello World"
    handler = app_broker.worker_for(HANDLER)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.get, "/longpoll/wait?timeout=60")
        assert client.get("/longpoll/waiting?until=1&timeout=60").json() == 1
        os.kill(handler.pid, signal.SIGKILL)
        answer = waiting.result(timeout=60)
    assert (answer.status_code, answer.text) == (502, "The handler worker died")
    assert text(client, "/hello/world") == "Hello World"  # a fresh handler
    assert app_broker.worker_for(HANDLER).pid != handler.pid
    client.get("/longpoll/release")  # the wait still pending in longpoll's worker


# -- the sandbox --------------------------------------------------------------------------------------------


def test_the_worker_constructor(upstream):
    construct = worker_constructor(upstream.url)
    spec = construct(str(TEST1), None)
    assert spec.permissions == Permissions(read=[str(TEST1), str(LIB_DIR)])
    assert spec.memory_limit and spec.cpu_seconds and spec.enforce == "strict"
    assert construct(str(HANDLER), None) == WorkerSpec()
    assert construct(str(FETCH_PROXY), None).permissions is None
    for other in ("subprocess", "/usr/lib/python3/os.py", str(UNTRUSTED_DIR.parent / "evil.py")):
        with pytest.raises(PermissionError):
            construct(other, None)


def test_the_app_workers_run_as_the_constructor_says(client, app_broker):
    assert text(client, "/hello/world") == "Hello World"
    assert client.get("/fetch_example").status_code == 200
    untrusted = app_broker.worker_for(UNTRUSTED_DIR / "hello.py")
    assert untrusted.spec.permissions == Permissions(read=[str(UNTRUSTED_DIR / "hello.py"), str(LIB_DIR)])
    assert untrusted.spec.hooks == str(UNTRUSTED_DIR.parent.parent / "untrusted_worker.py")
    assert app_broker.worker_for(HANDLER).spec.permissions is None
    assert app_broker.worker_for(FETCH_PROXY).spec.permissions is None


ESCAPES = """
import os, socket, urllib.request
import state
from web import Response
from worker_kernel import broker_proxy

def imports():
    return [state.__name__, Response.__name__]

def attempt(what, arg):
    try:
        if what == "read":
            return open(arg).read()[:10]
        if what == "list":
            return os.listdir(arg)
        if what == "import":
            return __import__(arg).SECRET
        if what == "connect":
            socket.create_connection(("127.0.0.1", int(arg)), timeout=5).close()
        if what == "env":
            return sorted(os.environ)
        if what == "broker":
            return broker_proxy().worker_proxy(arg).getoutput("id")
        return "allowed"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
"""


def test_an_untrusted_worker_reads_only_its_module_and_lib(tmp_path, upstream):
    """The app's untrusted spec on a module of our own, making real attempts: lib imports, the rest is denied.
    Calls into other modules go through the app's constructor, which refuses anything but the app's workers."""
    module = tmp_path / "escapes.py"
    module.write_text(textwrap.dedent(ESCAPES))
    neighbour = tmp_path / "neighbour.py"  # another untrusted module in the same folder: not each other's
    neighbour.write_text("SECRET = 'the neighbour'\n")
    app_construct = worker_constructor(upstream.url)

    def construct(name: str, segregation_id: str | None) -> WorkerSpec:
        return untrusted_spec(name) if name == str(module) else app_construct(name, segregation_id)

    port = int(upstream.url.rsplit(":", 1)[1].strip("/"))
    with WorkerBroker(worker_constructor=construct, call_timeout=60, warm_workers=0) as broker:
        escapes = broker.worker_proxy(module)
        assert escapes.imports() == ["state", "Response"]
        assert escapes.attempt("read", str(module)).startswith("\nimport os")
        assert escapes.attempt("read", str(LIB_DIR / "state.py")).startswith('"""A piece')
        for forbidden in (HANDLER, neighbour, UNTRUSTED_DIR / "test1.py", REPO / "pyproject.toml", "/etc/passwd"):
            assert escapes.attempt("read", str(forbidden)).startswith("PermissionError"), forbidden
        for folder in (tmp_path, UNTRUSTED_DIR, REPO):
            assert escapes.attempt("list", str(folder)).startswith("PermissionError"), folder
        assert escapes.attempt("import", "neighbour").startswith("ModuleNotFoundError")
        assert escapes.attempt("connect", port).startswith("PermissionError")
        assert "WB_APP_UPSTREAM" not in escapes.attempt("env", "")
        refused = escapes.attempt("broker", "subprocess")
        assert refused.startswith("PermissionError") and "dotted name" in refused  # the broker's default rule
        refused = escapes.attempt("broker", "/etc/elsewhere.py")
        assert refused.startswith("PermissionError") and "only its own worker modules" in refused  # the app's


# -- the response marshaller --------------------------------------------------------------------------------


def test_responses_cross_the_codec_whole():
    original = Response(b"\x00binary", 201, [("x-one", "1"), ("set-cookie", "a=1"), ("set-cookie", "b=2")])
    buffers: list = []
    wire = encode_value({"r": original}, buffers, "value")
    assert decode_value(wire, buffers) == {"r": original}
    assert Response("text").header("Content-Type") == "text/plain; charset=utf-8"
    assert Response.json({"a": 1}).body == b'{"a": 1}'
    error = decode_value(encode_value(HTTPError(404), buffers, "value"), buffers)  # crosses as itself
    assert isinstance(error, HTTPError) and error.response == Response("Not Found", 404)


@pytest.mark.parametrize(
    "payload",
    [
        [1000, [], b""],
        [True, [], b""],
        [200, [["x", "a\r\nset-cookie: evil"]], b""],
        [200, [["bad name", "v"]], b""],
        [200, [["x"]], b""],
        [200, [], "not bytes"],
        [200, {}, b""],
        "nonsense",
    ],
)
def test_a_bad_response_from_a_worker_is_refused(payload):
    buffers: list = []
    wire = {"$w": "wb_app.response", "v": encode_value(payload, buffers, "value")}
    with pytest.raises(DecodeError):
        decode_value(wire, buffers)


# -- the real server ----------------------------------------------------------------------------------------


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_real_server_as_make_demo_starts_it():
    """``python -m examples.app`` (what ``make demo`` runs) on a free port: uvicorn, real sockets, SIGTERM."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "examples.app", "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        for line in server.stdout:  # type: ignore[union-attr]
            output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        base = None
        while base is None:
            line = lines.get(timeout=120)
            assert line is not None, "the server ended before listening:\n" + "".join(output)
            found = re.search(r"listening on (http://localhost:\d+)/", line)
            base = found.group(1) if found else None
        assert fetch(base + "/hello/world") == (200, "Hello World")
        # the seed README's walk-throughs, over real HTTP
        for url, expected in [
            ("/test1/state", "test1"),
            ("/test1/state?set=foo", "foo"),
            ("/test2/state", "test2"),
            ("/test1/state", "foo"),
            ("/test1/state?set=changed", "changed"),
            ("/test1", "Module reloaded"),
            ("/test1/state", "test1"),
        ]:
            assert fetch(base + url) == (200, expected), url
        assert fetch(base + "/test1/redirect") == (200, "Hello World")  # urllib follows the 302
        assert fetch(base + "/test1/forbidden") == (403, "Forbidden")
        assert fetch(base + "/test1/nope")[0] == 404
        # one connection kept alive, as browsers keep theirs: the fetched page with one server and one date header
        connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)
        for _ in range(2):
            connection.request("GET", "/fetch_example")
            answer = connection.getresponse()
            assert answer.status == 200 and answer.read().decode() in JOKES
            names = [name.lower() for name, _ in answer.getheaders()]
            assert names.count("server") == 1 and names.count("date") == 1, answer.getheaders()
        connection.close()
        assert fetch(base + "/test1/crash")[0] == 502
        assert fetch(base + "/test1/ok") == (200, "ok")
        workers = psutil.Process(server.pid).children(recursive=True)
        assert len(workers) >= 4  # handler, fetch proxy, test1, test2, ...
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    text_out = "".join(output)
    assert code == 0, text_out
    assert "fetch_proxy: fetch_example.py fetched GET http://127.0.0.1:" in text_out
    assert "example app stopped" in text_out
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive


def test_the_listening_socket_serves_keep_alive_connections_without_nagle():
    """The socket the server hands to uvicorn: asyncio turns Nagle's algorithm off on the connections it
    accepts, so an answer on a kept-alive connection is not held back until the client's delayed ACK (which
    cost the demo some 40 ms a request). ``socket.create_server``'s socket does not get that."""
    import asyncio
    import socket

    from examples.app.server import listening_socket

    async def nodelay_of_accepted(sock: socket.socket) -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            accepted.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        try:
            return await asyncio.wait_for(accepted, 30)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(nodelay_of_accepted(listening_socket("127.0.0.1", 0))) != 0


def test_a_module_is_reloaded_when_its_file_changes(tmp_path):
    """``make demo`` watches the untrusted modules (watchfiles) and reloads one when its file changes, as the
    seed's ``deno --watch`` does."""
    import asyncio

    from examples.app.server import watch_modules

    module = tmp_path / "live.py"
    module.write_text("def value():\n    return 1\n")

    async def main(broker: WorkerBroker) -> list:
        live = broker.worker_proxy(module, asynchronous=True)
        seen = [await live.value()]
        ready, reloaded = asyncio.Event(), asyncio.Event()
        watcher = asyncio.create_task(watch_modules(broker, tmp_path, ready=ready, reloaded=lambda _: reloaded.set()))
        try:
            await asyncio.wait_for(ready.wait(), 60)
            module.write_text("def value():\n    return 2\n")
            await asyncio.wait_for(reloaded.wait(), 60)
            seen.append(await live.value())
        finally:
            watcher.cancel()
        return seen

    with WorkerBroker(warm_workers=0) as broker:
        assert asyncio.run(main(broker)) == [1, 2]


class _Recording:
    """An upstream API under /api/ and an internal service beside it, on loopback; both record what reaches
    them (path and Host header)."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.hits: list[tuple[int, str, str | None]] = []
        hits = self.hits
        servers: list = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append((self.server.server_address[1], self.path, self.headers.get("Host")))
                if self.path == "/api/redirect":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{servers[1].server_address[1]}/secret")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = f"served {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        for _ in range(2):
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
        self.servers = servers
        self.api = f"http://127.0.0.1:{servers[0].server_address[1]}/api/"
        self.internal_port = servers[1].server_address[1]

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def test_the_fetch_proxy_is_no_confused_deputy():
    """It fetches beneath its upstream only: no redirect followed, no `..` out of its prefix, no Host forged."""
    recording = _Recording()
    try:
        with make_broker(recording.api) as broker:
            fetch = broker.worker_fn_proxy(FETCH_PROXY, "fetch")
            redirected = fetch(recording.api + "redirect")
            assert redirected.status == 302  # handed back, not followed
            assert fetch(recording.api + "../admin/delete-everything").status == 403
            assert fetch(recording.api + "%2e%2e/admin").status == 403
            assert (
                fetch(recording.api + "x", headers={"Host": "internal.example", "Accept": "text/plain"}).status == 200
            )
        assert not any(port == recording.internal_port for port, _, _ in recording.hits), recording.hits
        assert not any("admin" in path for _, path, _ in recording.hits), recording.hits
        assert [host for _, path, host in recording.hits if path == "/api/x"] == [recording.api.split("/")[2]]
    finally:
        recording.close()
