"""A slow route, to show that it does not hold up the others.

``/longpoll/wait`` waits (up to ``?timeout=`` seconds, at most 60) until someone opens ``/longpoll/release``;
meanwhile every other route answers at once, this module's own included: its functions are ``async``, so its
worker serves them interleaved, and the server and the trusted handler await their calls.
"""

import asyncio

from web import Response

_release = asyncio.Event()
_waiting = 0


async def wait(params: dict):
    global _waiting
    timeout = min(float(params.get("timeout", 30)), 60.0)
    _waiting += 1
    try:
        await asyncio.wait_for(_release.wait(), timeout)
    except asyncio.TimeoutError:
        return Response("nobody released the wait", status=408)
    finally:
        _waiting -= 1
    return "released"


async def waiting(params: dict) -> int:
    return _waiting


async def release(params: dict) -> dict:
    global _release
    released, count = _release, _waiting
    _release = asyncio.Event()
    released.set()
    return {"released": count}
