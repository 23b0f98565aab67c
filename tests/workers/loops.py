"""A module with both kinds of function: the sync ones use asyncio.run(), as sync code often does."""

import asyncio


async def atwice(x):
    await asyncio.sleep(0)
    return 2 * x


def twice_with_asyncio_run(x):
    return asyncio.run(atwice(x))
