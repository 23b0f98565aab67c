"""``python -m benchmarks.web [--quick] [--out DIR]``: the example web app end to end, beside a plain route.

Both servers run as ``make demo`` runs the app: a process of their own, uvicorn on a socket bound beforehand
(`examples.app.server.listening_socket`) and handed over with ``sockets=``. The app's ``/hello/world`` goes host
-> trusted handler worker -> sandboxed untrusted worker and back; the plain server answers the same text from a
Starlette route in its own process, so the difference is what the workers cost. Clients keep their connections
alive (as browsers do), one at a time and 32 at once, each a thread with an ``http.client`` connection; the
clients share the machine's cores with the servers. Reports requests/s and the median and 99th percentile of a
request's latency, and writes DIR/benchmarks-web.md.
"""

from __future__ import annotations

import argparse
import http.client
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH = "/hello/world"
CLIENTS = (1, 32)


def serve_plain(port: int = 0) -> None:
    """The plain server (run with ``--serve-plain``): one Starlette route, served as the app is."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from examples.app.server import listening_socket

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("Hello World")

    sock = listening_socket("127.0.0.1", port)
    print(f"listening on http://localhost:{sock.getsockname()[1]}/", flush=True)
    config = uvicorn.Config(Starlette(routes=[Route(PATH, hello)]), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


@contextmanager
def server(command: list[str]) -> Iterator[tuple[str, int]]:
    """Start a server; ``(host, port)`` once it says where it listens. SIGTERM ends it."""
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ}
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        while True:
            line = lines.get(timeout=120)
            if line is None:
                raise RuntimeError(f"{command} ended before it listened")
            found = re.search(r"listening on http://localhost:(\d+)/", line)
            if found:
                break
        yield "127.0.0.1", int(found.group(1))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def measure(address: tuple[str, int], clients: int, requests: int) -> dict[str, float]:
    """``clients`` kept-alive connections, each sending ``requests`` requests one after the other."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    failures: list[BaseException] = []

    def client(mine: list[float]) -> None:
        connection = http.client.HTTPConnection(*address, timeout=60)
        try:
            for _ in range(5):  # warm up: the connection, the workers
                connection.request("GET", PATH)
                connection.getresponse().read()
            start.wait()
            for _ in range(requests):
                began = time.perf_counter()
                connection.request("GET", PATH)
                answer = connection.getresponse()
                body = answer.read()
                mine.append(time.perf_counter() - began)
                if answer.status != 200 or body != b"Hello World":
                    raise RuntimeError(f"{PATH} answered {answer.status} {body[:80]!r}")
        except BaseException as exc:
            failures.append(exc)
            start.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(mine,)) for mine in latencies]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise failures[0]
    every = sorted(x for mine in latencies for x in mine)
    return {
        "requests_per_s": len(every) / elapsed,
        "p50_ms": statistics.median(every) * 1000,
        "p99_ms": every[min(len(every) - 1, int(len(every) * 0.99))] * 1000,
    }


def run(quick: bool = False) -> list[dict[str, object]]:
    requests = {1: 20, 32: 3} if quick else {1: 500, 32: 40}
    servers = {
        "plain Starlette route": [sys.executable, "-m", "benchmarks.web", "--serve-plain"],
        "example app (host, handler, sandboxed module)": [sys.executable, "-m", "examples.app", "--port", "0"]
        + ["--no-watch"],
    }
    rows = []
    for name, command in servers.items():
        with server(command) as address:
            for clients in CLIENTS:
                numbers = measure(address, clients, requests[clients])
                rows.append({"server": name, "clients": clients, **numbers})
                print(
                    f"{name:48s} {clients:3d} clients  {numbers['requests_per_s']:8.0f} req/s  "
                    f"p50 {numbers['p50_ms']:7.2f} ms  p99 {numbers['p99_ms']:7.2f} ms",
                    flush=True,
                )
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "# The example web app, end to end",
        "",
        f"`python -m benchmarks.web` (`make bench`): `GET {PATH}` on kept-alive connections, one client and 32 at",
        "once, against the example app (`make demo`: host, trusted handler worker, sandboxed untrusted worker) and",
        "against a plain Starlette route served the same way (uvicorn on a socket bound beforehand). Clients and",
        f"servers share the machine ({os.cpu_count()} cores). Run of {time.strftime('%Y-%m-%dT%H:%M:%S%z')}.",
        "",
        "| server | clients | requests/s | p50 | p99 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['server']} | {row['clients']} | {row['requests_per_s']:.0f} | {row['p50_ms']:.2f} ms | "
            f"{row['p99_ms']:.2f} ms |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few requests of each (the smoke test)")
    parser.add_argument("--out", help="write DIR/benchmarks-web.md")
    parser.add_argument("--serve-plain", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve_plain:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            serve_plain()
        except KeyboardInterrupt:
            pass
        return
    rows = run(options.quick)
    if options.out:
        out = Path(options.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmarks-web.md").write_text(markdown(rows))
        print(f"wrote {out / 'benchmarks-web.md'}")


if __name__ == "__main__":
    main()
