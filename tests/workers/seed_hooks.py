"""Entry hooks for tests/test_seed_fidelity.py, recording what ran in the environment (shared with the target
module). ``WB_HOOKS_MODE``: "sync", "async" (coroutine hooks), "failing-initial" (initial_call raises)."""

import asyncio
import os

MODE = os.environ.get("WB_HOOKS_MODE", "sync")


def record(event: str) -> None:
    os.environ["WB_HOOKS_LOG"] = os.environ.get("WB_HOOKS_LOG", "") + event + ";"


def _before(context) -> None:
    record(f"before {context.function}")
    if context.function == "guarded":
        raise PermissionError("before_call refused guarded()")


if MODE == "async":

    async def initial_call():
        await asyncio.sleep(0.01)  # a request that comes meanwhile waits for this
        record("initial")

    async def before_call(context):
        await asyncio.sleep(0)
        _before(context)

    async def after_call(context):
        await asyncio.sleep(0)
        record(f"after {context.function}")

else:

    def initial_call():
        if MODE == "failing-initial":
            raise RuntimeError("initial_call could not lock things down")
        record("initial")

    def before_call(context):
        _before(context)

    def after_call(context):
        record(f"after {context.function}")
