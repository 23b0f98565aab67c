"""The entry hooks of the example app's untrusted workers, as the seed's ``untrusted_worker.ts``.

``initial_call`` runs once in each untrusted worker, before its module is imported: it points `web.fetch` at the
trusted fetch proxy, as the seed's ``initialCall`` replaces ``globalThis.fetch``, so that module code fetches
with ``from web import fetch`` and no module needs to know where the proxy is. ``before_call`` and
``after_call`` log how long each call took, on the worker's stderr (shown in the server's console).

The seed also locks ``fetch`` (``Object.defineProperty``); Python cannot, and the module could replace
``web.fetch`` again. That would gain it nothing: what keeps an untrusted module off the network is its sandbox
(no network permission), not these hooks. Hooks are no security boundary (docs/security.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

FETCH_PROXY = Path(__file__).resolve().parent / "workers" / "trusted" / "fetch_proxy.py"

_started: dict[str, float] = {}  # call id -> when it began


def initial_call() -> None:
    import web

    from worker_kernel import broker_proxy

    web.use_fetch(broker_proxy().worker_fn_proxy(str(FETCH_PROXY), "fetch"))


def before_call(context: Any) -> None:
    _started[context.call_id] = time.perf_counter()


def after_call(context: Any) -> None:
    began = _started.pop(context.call_id, None)
    if began is not None:
        module = Path(context.module).stem
        took = (time.perf_counter() - began) * 1000
        print(f"[{module}] {context.function}() took {took:.1f} ms", file=sys.stderr)
