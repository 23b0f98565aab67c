"""Hot calls: one small call at a time (every peer), pipelined calls, and worker-to-worker calls."""

from __future__ import annotations

import traceback
from collections.abc import Callable

from .config import Config
from .harness import MODULES, Results, Series, interleaved, new_broker, timed
from .peers import Peer, all_peers
from .work import EXPECTED


def start_peers(results: Results, make: dict[str, Callable[[], Peer]], what: str) -> dict[str, Peer]:
    """Start each peer; one that is missing or fails to start is reported as skipped."""
    running: dict[str, Peer] = {}
    for name, factory in make.items():
        peer = factory()
        why = peer.missing()
        if why is not None:
            results.skip(f"{what}.{name}", why)
            continue
        try:
            peer.start()
            answer = peer.call()
            if answer != EXPECTED:
                raise RuntimeError(f"it answered {answer!r}")
        except Exception as exc:
            traceback.print_exc()
            results.skip(f"{what}.{name}", f"could not start: {type(exc).__name__}: {exc}")
            _close(peer)
            if name == "wb_magic":
                raise
            continue
        running[name] = peer
    return running


def close_peers(peers: dict[str, Peer]) -> None:
    for peer in peers.values():
        _close(peer)


def _close(peer: Peer) -> None:
    try:
        peer.close()
    except Exception:
        traceback.print_exc()


def hot_calls(results: Results, config: Config, only: set[str] | None) -> None:
    """Every peer makes the same small call, one at a time; interleaved rounds, all peers alive at once."""
    make = {cls.name: cls for cls in all_peers() if only is None or cls.name in only or cls.name == "wb_magic"}
    peers = start_peers(results, make, "hot")  # type: ignore[arg-type]
    try:
        print(f"  hot calls: {', '.join(peers)}", flush=True)
        samples = interleaved(
            {name: peer.call for name, peer in peers.items()},
            rounds=config.rounds,
            warmup=config.warmup,
            max_block=config.max_block,
            block_seconds=config.block_seconds,
        )
        for name, values in samples.items():
            results.add(Series(f"hot.{name}", "hot", peers[name].label, values))
    finally:
        close_peers(peers)


def pipelined(results: Results, config: Config, only: set[str] | None) -> None:
    """``window`` calls in flight at once, to one worker and spread over two; samples are seconds per call."""
    from .peers.mp_pipe import MPPipe
    from .peers.process_pool import ProcessPool
    from .peers.wb import WBMagic, WBMagicJupyter
    from .peers.zmq_json import ZmqJson

    window = config.window
    for servers in (1, 2):
        make: dict[str, Callable[[], Peer]] = {
            "wb_magic": lambda servers=servers: WBMagic(servers),  # type: ignore[misc]
            "wb_magic_jupyter": lambda servers=servers: WBMagicJupyter(servers),  # type: ignore[misc]
            "pyzmq": lambda servers=servers: ZmqJson(servers),  # type: ignore[misc]
            "process_pool": lambda servers=servers: ProcessPool(servers),  # type: ignore[misc]
        }
        if servers == 1:
            make["mp_pipe"] = MPPipe
        make = {name: f for name, f in make.items() if only is None or name in only or name == "wb_magic"}
        peers = start_peers(results, make, f"pipelined{servers}")
        try:
            print(f"  pipelined x{servers}: {', '.join(peers)}", flush=True)
            samples = interleaved(
                {name: (lambda peer=peer: peer.pipelined(window)) for name, peer in peers.items()},  # type: ignore[misc]
                rounds=config.rounds,
                warmup=max(2, config.pipeline_rounds // 2),
                max_block=config.pipeline_rounds,
                block_seconds=config.block_seconds,
                min_block=1,
            )
            for name, values in samples.items():
                label = f"{peers[name].label}, {servers} worker{'s' if servers > 1 else ''}"
                label = label.replace("sync proxy", "async proxy")
                results.add(
                    Series(
                        f"pipelined{servers}.{name}",
                        f"pipelined{servers}",
                        label,
                        [v / window for v in values],
                        note=f"{window} calls in flight; samples are seconds per call",
                        extra={"window": window, "workers": servers},
                    )
                )
        finally:
            close_peers(peers)


def worker_to_worker(results: Results, config: Config) -> None:
    """relay.py calls target.py through the broker, timed inside relay's worker, beside the direct hot call."""
    with new_broker(call_timeout=300) as broker:
        direct = broker.worker_proxy(str(MODULES / "target.py")).hello
        relay = broker.worker_proxy(str(MODULES / "relay.py"))
        if relay.forward("World") != EXPECTED or direct("World") != EXPECTED:
            raise RuntimeError("worker-to-worker call gave a wrong answer")
        relay.timed_calls(config.warmup)
        timed(lambda: direct("World"), config.warmup)
        timed(lambda: relay.forward("World"), config.warmup)
        inner: list[float] = []
        outer: list[float] = []
        host: list[float] = []
        n = config.w2w_block
        for _ in range(config.w2w_rounds):
            host += timed(lambda: direct("World"), n)
            inner += [ns / 1e9 for ns in relay.timed_calls(n)]
            outer += timed(lambda: relay.forward("World"), n)
    results.add(Series("w2w.direct", "w2w", "wb-magic: host -> worker (direct)", host))
    results.add(
        Series(
            "w2w.inner",
            "w2w",
            "wb-magic: worker -> broker -> worker",
            inner,
            note="timed inside the calling worker, around each call through the broker",
        )
    )
    results.add(Series("w2w.outer", "w2w", "wb-magic: host -> worker -> worker", outer))
