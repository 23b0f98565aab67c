"""The module tests/workers/seed_hooks.py runs around: it records its import, and shows the record."""

import os

os.environ["WB_HOOKS_LOG"] = os.environ.get("WB_HOOKS_LOG", "") + "import;"


def log() -> list[str]:
    return os.environ["WB_HOOKS_LOG"].rstrip(";").split(";")


async def alog() -> list[str]:
    return log()


def guarded() -> str:
    return "ran"


def sleep_long() -> None:
    import time

    time.sleep(600)
