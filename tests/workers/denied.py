"""Raises an exception type that both sides register with `register_marshaller`: it crosses as itself."""

from worker_kernel import broker_proxy
from worker_kernel.codec import register_marshaller


class Denied(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status, self.reason = status, reason


register_marshaller("test.denied", Denied, lambda e: [e.status, e.reason], lambda v: Denied(*v))


def deny(status: int):
    raise Denied(status, "no entry")


def deny_through(status: int):
    """Call deny() in another worker of this module; what it raises arrives here as Denied, and goes on."""
    try:
        broker_proxy().worker_proxy(("./denied.py", "inner")).deny(status)
    except Denied as error:
        raise Denied(error.status + 1, f"passed on: {error.reason}") from error
