"""Writes a large reply while an answer it asked for waits to be read (a worker reads while it writes)."""

import asyncio
import select

from worker_kernel import broker_proxy, kernel

MiB = 1 << 20
big = broker_proxy().worker_proxy("./untrusted/big_answers.py", asynchronous=True)


async def reply_while_answered(answer_mib: int, reply_mib: int) -> bytes:
    """Ask for ``answer_mib`` MiB, wait until the broker has begun to write the answer (which, unread, stops the
    broker reading this worker), then return ``reply_mib`` MiB without having read it."""
    asking = asyncio.ensure_future(big.big(answer_mib))
    await asyncio.sleep(0)  # one turn of the loop: the request leaves
    select.select([kernel.running._lane_fd], [], [])
    asking.cancel()
    return bytes(reply_mib * MiB)
