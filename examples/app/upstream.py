"""A local stand-in for the joke API that the seed's ``fetch_example`` calls: this machine may have no internet.

`Upstream` serves ``GET /joke`` on 127.0.0.1 from a thread: a joke as text, or as JSON when asked to with
``Accept: application/json``; anything else is 404. The server points the trusted fetch proxy at it.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JOKES = (
    "I only know 25 letters of the alphabet. I don't know y.",
    "Why do programmers prefer dark mode? Because light attracts bugs.",
    "I would tell you a UDP joke, but you might not get it.",
    "There are 10 kinds of people: those who read binary and those who don't.",
)


class Upstream:
    """``Upstream()`` starts serving at once, on a free port; ``url`` is its base URL; `close` stops it."""

    def __init__(self) -> None:
        counter = itertools.count()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/joke":
                    self._send(404, "text/plain; charset=utf-8", b"no such page\n")
                    return
                number = next(counter) % len(JOKES)
                if "application/json" in self.headers.get("accept", ""):
                    body = json.dumps({"id": number, "joke": JOKES[number]}).encode()
                    self._send(200, "application/json", body)
                else:
                    self._send(200, "text/plain; charset=utf-8", JOKES[number].encode())

            def _send(self, status: int, media_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", media_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the fetch proxy logs every fetch; one line each is enough

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="upstream", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
