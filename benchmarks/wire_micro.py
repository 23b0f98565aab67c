"""The wire format alone: build and parse one signed call message, jupyter_client's Session beside ours.

No sockets: what a message costs each side in Python before ZeroMQ sees it, measured for both.
"""

from __future__ import annotations

import os
from typing import Any

from .config import Config
from .harness import Results, Series, interleaved

KEY = os.urandom(32).hex().encode()
CONTENT: dict[str, Any] = {
    "module": "/srv/app/workers/target.py",
    "cache_buster": None,
    "function": "hello",
    "args": ["World"],
    "kwargs": {},
    "segregation_id": None,
    "source": None,
}


def run(results: Results, config: Config) -> None:
    from jupyter_client.session import Session as JupyterSession

    from worker_kernel import wire

    theirs = JupyterSession(key=KEY, username="bench")
    ours = wire.Session(KEY)

    def jupyter_round() -> None:
        msg = theirs.msg("wb_call_request", CONTENT)
        _, parts = theirs.feed_identities(theirs.serialize(msg))
        theirs.deserialize(parts)

    def our_round() -> None:
        _, frames = ours.message("wb_call_request", CONTENT)
        ours.parse(frames)

    our_round()
    jupyter_round()
    samples = interleaved(
        {"jupyter_client": jupyter_round, "worker_kernel": our_round},
        rounds=config.rounds,
        warmup=config.warmup,
        max_block=config.wire_messages // max(1, config.rounds),
        block_seconds=1.0,
    )
    labels = {
        "jupyter_client": "jupyter_client.Session: build + parse",
        "worker_kernel": "worker_kernel.wire.Session: build + parse",
    }
    for name, values in samples.items():
        results.add(Series(f"wire.{name}", "wire", labels[name], values, note="one wb_call_request, no socket"))
