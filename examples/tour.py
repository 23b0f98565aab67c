"""A short scripted tour of wb-magic: ``make tour`` runs it (``python -m examples.tour`` from the clone)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from wb_magic import WorkerBroker

MODULES = Path(__file__).parent / "modules"


def step(text: str) -> None:
    print(f"\n== {text}")


def main() -> None:
    with WorkerBroker() as broker:
        step("a proxy of hello.py; the first call starts its worker kernel")
        hello = broker.worker_proxy(MODULES / "hello.py")
        started = time.perf_counter()
        print(">>> hello.hello('World') ->", repr(hello.hello("World")))
        print(f"    (first call, worker start included: {1000 * (time.perf_counter() - started):.0f} ms)")
        started = time.perf_counter()
        for _ in range(1000):
            hello.hello("World")
        print(f"    (a hot call: {1000 * (time.perf_counter() - started):.0f} us on average over 1000)")

        step("the same function, awaited")
        ahello = broker.worker_proxy(MODULES / "hello.py", asynchronous=True)
        print(">>> await ahello.hello('async') ->", repr(asyncio.run(ahello.hello("async"))))

        step("a worker calling another through the broker; its print reaches us")
        greeter = broker.worker_proxy(MODULES / "greeter.py")
        print(">>> greeter.greet_twice('ada') ->", greeter.greet_twice("ada"))

        step("segregated workers: same module, own process, own state")
        for tenant in ("alice", "bob", "alice"):
            proxy = broker.worker_proxy((MODULES / "greeter.py", tenant))
            print(f">>> greeter for {tenant}: greet_twice({tenant!r}) ->", proxy.greet_twice(tenant))

        step("the workers now running")
        for info in broker.workers:
            print(
                f"    {Path(info.module).name:<12} segregation={info.segregation_id!s:<6} pid={info.pid} "
                f"calls={info.calls}"
            )
    print("\nAll workers shut down. Run `make test` for the full suite.")


if __name__ == "__main__":
    main()
