"""The seed's console module: ``/console/log`` prints "Hello World" on stdout, ``/console/debug`` on stderr; both
answer "check yer logs". A worker's output travels to its caller (here through the trusted handler to the
host), so it shows in the server's console."""

import sys


def log(params: dict) -> str:
    print("Hello World")
    return "check yer logs"


def debug(params: dict) -> str:
    print("Hello World", file=sys.stderr)
    return "check yer logs"
