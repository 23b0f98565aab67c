"""``/fetch_example/joke``: an untrusted module that fetches from the network, which it cannot reach itself.

Its worker has no network permission; it asks the trusted ``fetch_proxy`` worker, through the broker, which
fetches only from the address the server configured it with (in the demo, a local stand-in for a joke API)
and logs every fetch. The proxy's answer is a `Response`, which this module hands back as it is.
"""

from web import Response  # also registers its marshaller here: the proxy's answer arrives as a Response

from worker_kernel import broker_proxy

fetch = broker_proxy().worker_fn_proxy("../trusted/fetch_proxy.py", "fetch")


def joke(params: dict) -> Response:
    return fetch("/joke", {"accept": params.get("accept", "text/plain")})


def elsewhere(params: dict) -> Response:
    """Asks the proxy for a page it does not serve: it refuses (403) without fetching."""
    return fetch(params.get("url", "http://example.com/"))
