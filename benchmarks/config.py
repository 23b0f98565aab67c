"""How much of everything one run does: the full run (``make bench``) and the quick one (``--quick``, the tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    quick: bool
    # hot calls: interleaved rounds, each peer a block of about `block_seconds` (within min/max calls)
    rounds: int
    warmup: int
    max_block: int
    block_seconds: float
    # pipelined calls: calls in flight per window, and windows per round
    window: int
    pipeline_rounds: int
    # worker to worker: rounds of `w2w_block` calls on each path
    w2w_rounds: int
    w2w_block: int
    # large payloads
    payload_bytes: int
    payload_repeats: int
    # start-up
    first_call_repeats: int
    ipykernel_repeats: int
    import_repeats: int
    warm_pool_repeats: int
    # many workers
    many_workers: int
    cleaner_events: int
    # the wire format micro-benchmark
    wire_messages: int


FULL = Config(
    quick=False,
    rounds=20,
    warmup=200,
    max_block=1000,
    block_seconds=0.25,
    window=100,
    pipeline_rounds=10,
    w2w_rounds=10,
    w2w_block=200,
    payload_bytes=64 * 2**20,
    payload_repeats=20,
    first_call_repeats=20,
    ipykernel_repeats=5,
    import_repeats=20,
    warm_pool_repeats=10,
    many_workers=100,
    cleaner_events=2000,
    wire_messages=5000,
)

QUICK = Config(
    quick=True,
    rounds=2,
    warmup=5,
    max_block=20,
    block_seconds=0.02,
    window=10,
    pipeline_rounds=2,
    w2w_rounds=2,
    w2w_block=10,
    payload_bytes=2**20,
    payload_repeats=2,
    first_call_repeats=2,
    ipykernel_repeats=1,
    import_repeats=2,
    warm_pool_repeats=2,
    many_workers=3,
    cleaner_events=50,
    wire_messages=50,
)
