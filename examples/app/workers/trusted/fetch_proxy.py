"""The trusted fetch proxy: the only way untrusted modules reach the network.

``fetch(url, headers=None, method="GET")`` fetches with urllib and returns a `Response` (status, headers,
body). It fetches only beneath its upstream, the base URL the server gives it in ``WB_APP_UPSTREAM`` (the
demo's is a local stand-in for a joke API: this machine may have no internet); a relative ``url`` is resolved
against it and anything outside it is refused with 403. It is a deputy of untrusted code, so it does not follow
redirects (a 3xx goes back as it came: the caller may fetch its ``Location`` through the proxy, which checks it),
refuses ``.`` and ``..`` path segments (the upstream would resolve them out from under its prefix), and passes on
only content negotiation headers (never ``Host``). Every fetch, refused or not, is logged with the module that
asked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.error
import urllib.request
from urllib.parse import unquote, urljoin, urlsplit

from examples.app.lib.web import Response
from worker_kernel import current_call

UPSTREAM = os.environ.get("WB_APP_UPSTREAM", "")
TIMEOUT = 10.0
# headers about one hop's connection, not about the content: the server sets its own
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer"}
# the request headers a caller may set: what content it wants, not where the request goes or who sends it
PASSED_HEADERS = {"accept", "accept-language", "content-type", "user-agent", "if-none-match", "if-modified-since"}

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
log = logging.getLogger("fetch_proxy")


def allowed(url: str) -> bool:
    """Whether ``url`` lies beneath the upstream (same scheme, host and port; path under its path)."""
    if not UPSTREAM:
        return False
    base, asked = urlsplit(UPSTREAM), urlsplit(url)
    prefix = base.path if base.path.endswith("/") else base.path + "/"
    segments = unquote(asked.path).replace("\\", "/").split("/")
    if "." in segments or ".." in segments:
        return False
    return (asked.scheme, asked.netloc) == (base.scheme, base.netloc) and (asked.path + "/").startswith(prefix)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # urllib then raises the 3xx as an HTTPError, which goes back to the caller as it is


_opener = urllib.request.build_opener(_NoRedirects)


async def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Response:
    caller = current_call()
    who = os.path.basename(caller.source_module) if caller is not None and caller.source_module else "the host"
    full = urljoin(UPSTREAM, url)
    if not allowed(full):
        log.warning("refused %s's fetch of %s: outside %s", who, full, UPSTREAM or "(no upstream)")
        return Response(f"fetch_proxy does not fetch {full}", status=403)
    if not isinstance(method, str) or not method.isalpha() or not method.isupper():
        return Response(f"fetch_proxy does not fetch with method {method!r}", status=400)
    passed = {name: value for name, value in dict(headers or {}).items() if str(name).lower() in PASSED_HEADERS}
    request = urllib.request.Request(full, headers=passed, method=method)
    response = await asyncio.get_running_loop().run_in_executor(None, _fetch, request)
    log.info("%s fetched %s %s -> %s (%d bytes)", who, method, full, response.status, len(response.body))
    return response


def _fetch(request: urllib.request.Request) -> Response:
    try:
        with _opener.open(request, timeout=TIMEOUT) as answer:
            status, headers, body = answer.status, answer.getheaders(), answer.read()
    except urllib.error.HTTPError as error:
        status, headers, body = error.code, list(error.headers.items()), error.read()
    except (urllib.error.URLError, OSError) as error:
        return Response(f"fetch_proxy could not fetch {request.full_url}: {error}", status=502)
    kept = [(name, value) for name, value in headers if name.lower() not in HOP_BY_HOP]
    return Response(body, status, kept)
