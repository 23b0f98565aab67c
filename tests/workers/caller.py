"""Calls other workers through the broker."""

from worker_kernel import broker_proxy, current_call

hello = broker_proxy().worker_proxy("./hello.py")
peer = broker_proxy().worker_proxy("./callee.py")
apeer = broker_proxy().worker_proxy("./callee.py", asynchronous=True)


def greet(name):
    return hello.hello(name)


def who_calls_callee():
    return peer.who_called()


def ping(n):
    """A cycle: caller -> callee -> caller -> ... until n reaches 0."""
    if n <= 0:
        return "done"
    return peer.pong(n - 1)


def identity():
    call = current_call()
    return [call.source_module, call.source_segregation_id, call.module, call.function]


async def gather_slow(n: int):
    import asyncio

    return await asyncio.gather(*[apeer.wait_for_token(i) for i in range(n)])


def call_missing():
    return broker_proxy().worker_proxy("./does_not_exist.py").anything()


def print_through():
    print("caller prints")
    return peer.shout("callee prints")


def count_in(segregation_id):
    """Increment the counter of the worker of counter.py for ``segregation_id``."""
    return broker_proxy().worker_proxy(("./counter.py", segregation_id)).increment()


def greet_within(count: int, seconds: float) -> int:
    """``count`` calls of hello.py, each with a timeout of ``seconds``: how many answered."""
    within = hello.hello.with_timeout(seconds)
    return sum(within(str(i)) == f"Hello {i}" for i in range(count))
