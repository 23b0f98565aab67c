"""HTTP responses as values that cross the worker boundary: `Response` and `HTTPError`, and `fetch`.

A module function of the example app answers a request by returning a value:

- a `Response` is served as it is (status, headers, body);
- ``None`` is served as ``204 No Content``, a ``str`` as ``text/plain``, anything else as JSON.

To answer from deep inside the code, raise ``HTTPError(403)`` (or ``HTTPError(Response(...))``), as the seed's
modules throw a ``Response``: `HTTPError` is registered with the codec, so it crosses as itself to the trusted
handler, which serves its response.

`fetch(url, headers=None, method="GET")` is the untrusted modules' only way to the network: the entry hooks of
their workers (examples/app/untrusted_worker.py) point it at the trusted fetch proxy before a module is imported,
as the seed's ``initialCall`` replaces ``globalThis.fetch``.

The marshallers are registered on import, under one tag each, in every process that imports this module: the
host, the trusted handler that relays the value, and the untrusted module that makes it. A `Response` arriving
from a worker is rebuilt only from checked plain data: an int status, a list of string pairs, bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from worker_kernel.codec import register_marshaller

TAG = "wb_app.response"

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP header name (RFC 9110 token)
_BAD_VALUE = re.compile(r"[\r\n\x00]")

HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]


class Response:
    """An HTTP response: ``Response(body="", status=200, headers=None, media_type=None)``.

    ``body`` is bytes or text (sent as UTF-8, ``text/plain`` unless ``media_type`` or a ``content-type`` header
    says otherwise); ``headers`` a mapping or a list of ``(name, value)`` pairs (a name may repeat).
    """

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        body: str | bytes = b"",
        status: int = 200,
        headers: HeadersLike | None = None,
        media_type: str | None = None,
    ) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"an HTTP status is an int from 100 to 599, not {status!r}")
        pairs = list(headers.items() if isinstance(headers, Mapping) else headers or ())
        for pair in pairs:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"a header is a (name, value) pair, not {pair!r}")
            name, value = pair
            if not isinstance(name, str) or not _TOKEN.match(name):
                raise ValueError(f"not a header name: {name!r}")
            if not isinstance(value, str) or _BAD_VALUE.search(value):
                raise ValueError(f"not a header value: {value!r}")
        if isinstance(body, str):
            body = body.encode()
            media_type = media_type or "text/plain; charset=utf-8"
        elif isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        elif not isinstance(body, bytes):
            raise TypeError(f"a response body is str or bytes, not {type(body).__name__}")
        if media_type and not any(name.lower() == "content-type" for name, _ in pairs):
            pairs.append(("content-type", media_type))
        self.status: int = status
        self.headers: tuple[tuple[str, str], ...] = tuple((name, value) for name, value in pairs)
        self.body: bytes = body

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: HeadersLike | None = None) -> Response:
        return cls(json.dumps(value).encode(), status, headers, media_type="application/json")

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Response:
        return cls(b"", status, [("location", location)])

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (any case)."""
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), default)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (self.status, self.headers, self.body) == (other.status, other.headers, other.body)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 40 else self.body[:40] + b"..."
        return f"Response({body!r}, status={self.status}, headers={list(self.headers)!r})"


class HTTPError(Exception):
    """Raise to answer with a response: ``HTTPError(404)``, ``HTTPError(403, "No")``, ``HTTPError(Response(...))``.
    The body defaults to the status's reason phrase."""

    def __init__(self, status: int | Response, body: str | bytes | None = None, headers: HeadersLike | None = None):
        if isinstance(status, Response):
            response = status
        else:
            if body is None:
                try:
                    body = HTTPStatus(status).phrase
                except ValueError:
                    body = ""
            response = Response(body, status, headers)
        super().__init__(f"{response.status} {response.text[:200]}")
        self.response = response


_fetch: Callable[..., Response] | None = None


def fetch(url: str, headers: Mapping[str, str] | None = None, method: str = "GET") -> Response:
    """Fetch ``url`` through the trusted fetch proxy (a relative URL is resolved against its upstream)."""
    if _fetch is None:
        raise RuntimeError("fetch() works in the example app's untrusted workers, set up by their entry hooks")
    return _fetch(url, dict(headers or {}), method)


def use_fetch(function: Callable[..., Response]) -> None:
    """Where `fetch` sends its requests: the entry hooks' ``initial_call`` sets it, once, in each worker."""
    global _fetch
    _fetch = function


def _encode(response: Response) -> list[Any]:
    return [response.status, [list(pair) for pair in response.headers], response.body]


def _decode(payload: Any) -> Response:
    # from another process, perhaps an untrusted one: check the shape; Response() checks the values
    if not isinstance(payload, list) or len(payload) != 3:
        raise ValueError("a response payload is [status, headers, body]")
    status, headers, body = payload
    if not isinstance(headers, list) or not isinstance(body, (bytes, bytearray, memoryview)):
        raise ValueError("a response payload has a list of headers and a bytes body")
    return Response(bytes(body), status, [tuple(pair) if isinstance(pair, list) else pair for pair in headers])


def _decode_error(payload: Any) -> HTTPError:
    return HTTPError(_decode(payload))


register_marshaller(TAG, Response, _encode, _decode)
register_marshaller(TAG + ".error", HTTPError, lambda error: _encode(error.response), _decode_error)
