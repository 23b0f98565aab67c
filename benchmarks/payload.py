"""Large values: bytes and a numpy array of the same size, echoed by a worker, beside raw pyzmq multipart.

The floor sends the payload as one frame and gets it back as one frame, without a copy on either side
(``copy=False``, the reply kept as a memoryview): what any design on ZeroMQ must pay at least.
"""

from __future__ import annotations

from .config import Config
from .harness import MODULES, Results, Series, interleaved, new_broker


def run(results: Results, config: Config) -> None:
    import numpy

    from .peers.zmq_json import ZmqJson

    size = config.payload_bytes
    data = numpy.random.default_rng(7).integers(0, 256, size, dtype=numpy.uint8).tobytes()
    array = numpy.frombuffer(data, dtype=numpy.float64).copy()  # the same bytes, as 8-byte floats (some NaN)
    mib = f"{size / 2**20:g} MiB"
    raw = ZmqJson()
    raw.start()
    try:
        with new_broker(call_timeout=300) as broker:
            echo = broker.worker_proxy(str(MODULES / "target.py")).echo
            if bytes(raw.frames(data)) != data or echo(data) != data:
                raise RuntimeError("a large bytes value came back changed")
            back = echo(array)
            if back.shape != array.shape or back.dtype != array.dtype or back.tobytes() != data:
                raise RuntimeError("a large array came back changed")
            del back
            samples = interleaved(
                {
                    "pyzmq": lambda: raw.frames(data),
                    "bytes": lambda: echo(data),
                    "numpy": lambda: echo(array),
                },
                rounds=config.payload_repeats,
                warmup=2,
                max_block=1,
                block_seconds=0.0,
                min_block=1,
            )
    finally:
        raw.close()
    labels = {
        "pyzmq": f"raw pyzmq multipart, {mib} frame",
        "bytes": f"wb-magic echo({mib} bytes)",
        "numpy": f"wb-magic echo({mib} numpy array)",
    }
    for name, values in samples.items():
        results.add(
            Series(f"payload.{name}", "payload", labels[name], values, note="round trip", extra={"bytes": size})
        )
