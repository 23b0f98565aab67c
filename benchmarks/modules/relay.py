"""Calls target.py through the broker: the worker-to-worker benchmark, timed inside this worker."""

import time

from worker_kernel import broker_proxy

target = broker_proxy().worker_proxy("./target.py")


def forward(name):
    return target.hello(name)


def timed_calls(n):
    """Call target.hello n times; returns each call's duration in nanoseconds, measured here."""
    hello = target.hello
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        start = clock()
        hello("World")
        out.append(clock() - start)
    return out
