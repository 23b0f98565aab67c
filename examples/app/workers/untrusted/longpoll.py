"""A slow route, to show that it does not hold up the others.

``/longpoll/wait`` waits (up to ``?timeout=`` seconds, at most 60) until someone opens ``/longpoll/release``;
meanwhile every other route answers at once, this module's own included: its functions are ``async``, so its
worker serves them interleaved, and the server and the trusted handler await their calls. ``/longpoll/waiting``
says how many requests wait; with ``?until=N`` it answers once N do (or when its own timeout is up).
"""

import asyncio

from web import Response

MAX_WAIT = 60.0  # seconds any request of this module waits at most

_release = asyncio.Event()
_waiting = 0
_count_changed = asyncio.Condition()


async def _add_waiting(change: int) -> None:
    global _waiting
    async with _count_changed:
        _waiting += change
        _count_changed.notify_all()


def _timeout(params: dict) -> float:
    return min(float(params.get("timeout", 30)), MAX_WAIT)


async def wait(params: dict):
    timeout = _timeout(params)
    await _add_waiting(1)
    try:
        await asyncio.wait_for(_release.wait(), timeout)
    except asyncio.TimeoutError:
        return Response("nobody released the wait", status=408)
    finally:
        await _add_waiting(-1)
    return "released"


async def waiting(params: dict) -> int:
    at_least = int(params.get("until", 0))
    async with _count_changed:
        try:
            await asyncio.wait_for(_count_changed.wait_for(lambda: _waiting >= at_least), _timeout(params))
        except asyncio.TimeoutError:
            pass
        return _waiting


async def release(params: dict) -> dict:
    global _release
    released, count = _release, _waiting
    _release = asyncio.Event()
    released.set()
    return {"released": count}
