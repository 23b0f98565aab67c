"""``/echo/echo?a=1&b=2`` answers its query parameters, as JSON."""


def echo(params: dict) -> dict:
    return params
