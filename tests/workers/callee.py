"""Answers calls from other workers, and calls back."""

import asyncio

from worker_kernel import broker_proxy, current_call

back = broker_proxy().worker_proxy("./caller.py")
_tokens: list = []


def who_called():
    call = current_call()
    return [call.source_module and call.source_module.rsplit("/", 1)[-1], call.source_segregation_id]


def pong(n):
    return back.ping(n)


async def wait_for_token(i: int):
    # every call waits here until all of them have arrived: they finish only if they interleave
    _tokens.append(i)
    while len(_tokens) % 3 != 0:
        await asyncio.sleep(0.001)
    return i


def shout(text):
    print(text)
    return text.upper()
