"""Workers started through a kernel spec's provisioner (``WorkerSpec(kernel_name=...)``), local or remote.

Every such kernel is driven from one thread of its own with an asyncio loop that runs for the broker's life.
That matters for gateway_provisioners: its response manager, which receives the connection information that a
remote launcher sends back, binds and polls on the event loop it first meets. Driven from the broker's threads
(the caller's, the warm pool's, an executor's), each with a loop that runs only while that thread is inside a
jupyter_client call, the response would wait for a loop nobody runs; on one loop that always runs, it is read
as soon as it arrives.

`ProvisionedKernel` gives the broker the synchronous surface it uses (connection info, shutdown, cleanup) and
the provisioner contract (``poll``, ``send_signal``, ``kill``, ``terminate``, ``wait``) on top of a
jupyter_client ``AsyncKernelManager``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner

T = TypeVar("T")
log = logging.getLogger("wb_magic")

START_TIMEOUT = 120.0  # seconds a provisioner may take to start a kernel (its own launch timeout is shorter)
CONTROL_TIMEOUT = 60.0  # seconds for a poll, a signal, a shutdown
EXIT_GRACE = 2.0  # seconds a remote kernel asked to shut down gets to exit before it is killed
SHUTDOWN_TIMEOUT = 10.0  # seconds the broker waits for a kernel to be seen ending
EXIT_POLL = 0.05  # seconds between polls meanwhile (each one a connection to the launcher's port)


class _Engine:
    """The thread that runs every provisioned kernel's coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="wb-provisioners", daemon=True)
        self.thread.start()

    def run(self, awaitable: Awaitable[T], timeout: float) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("a provisioned kernel's call was made on the provisioners' own thread")
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop).result(timeout)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def engine() -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Engine()
        return _engine


class ProvisionedKernel:
    """A kernel started by the provisioner of kernel spec ``kernel_name``.

    ``local`` tells whether its process runs on this host (jupyter_client's local provisioner), so that the
    broker may watch it with a pidfd; ``pid`` is then its process id, else None (a pid on another host means
    nothing here). ``remote`` is the opposite: the broker watches it by its heartbeat, and ships it the source
    of the modules it runs.
    """

    def __init__(self, kernel_name: str, **manager_options: Any) -> None:
        self.manager = AsyncKernelManager(kernel_name=kernel_name, **manager_options)
        self.connection_file = ""
        self.ended = False  # shut down and released: nothing more to ask of the provisioner
        self._ending: concurrent.futures.Future | None = None  # end_soon's, once asked

    def start(self, **kwargs: Any) -> None:
        spec = self.manager.kernel_spec
        supported = (getattr(spec, "metadata", None) or {}).get("supported_encryption") or ()
        if "curve" in ([supported] if isinstance(supported, str) else list(supported)):
            kwargs.setdefault("transport_encryption", "required")  # the launcher must send keys back, or fail
        if self.connection_file:
            self.manager.connection_file = self.connection_file
        engine().run(self.manager.start_kernel(**kwargs), START_TIMEOUT)

    @property
    def provisioner(self) -> Any:
        return self.manager.provisioner

    @property
    def runs_worker_kernel(self) -> bool:
        """Whether its kernel spec starts wb-magic's own kernel (directly, or through worker_kernel.launcher)."""
        argv = getattr(self.manager.kernel_spec, "argv", None) or []
        return any(part == "worker_kernel" or str(part).startswith("worker_kernel.") for part in argv)

    @property
    def local(self) -> bool:
        return isinstance(self.manager.provisioner, LocalProvisioner)

    @property
    def remote(self) -> bool:
        return not self.local

    @property
    def pid(self) -> int | None:
        if not self.local:
            return None
        pid = getattr(self.manager.provisioner, "pid", None)
        return int(pid) if pid else None

    def get_connection_info(self) -> dict[str, Any]:
        return dict(self.manager.get_connection_info())

    # the provisioner contract, synchronously
    def poll(self) -> int | None:
        return engine().run(self.provisioner.poll(), CONTROL_TIMEOUT)

    def send_signal(self, signum: int) -> None:
        engine().run(self.provisioner.send_signal(signum), CONTROL_TIMEOUT)

    def kill(self) -> None:
        engine().run(self.provisioner.kill(), CONTROL_TIMEOUT)

    def terminate(self) -> None:
        engine().run(self.provisioner.terminate(), CONTROL_TIMEOUT)

    def wait(self, timeout: float | None = None) -> int | None:
        return engine().run(self.provisioner.wait(), CONTROL_TIMEOUT if timeout is None else timeout)

    # what the broker asks of a kernel manager
    def shutdown_kernel(self, now: bool = False) -> None:
        """End the kernel and release what it held. A remote kernel that the broker has just asked to shut down
        gets EXIT_GRACE to exit before the provisioner kills it (its own kill polls every half second). Waits
        SHUTDOWN_TIMEOUT at most: over a cut link the provisioner cannot reach the host, and the worker ends
        itself once the broker's heartbeats stop."""
        if self.manager.provisioner is None or self.ended:
            return
        ending = asyncio.run_coroutine_threadsafe(self._end(EXIT_GRACE if self.remote else 0.0, now), engine().loop)
        try:
            ending.result(SHUTDOWN_TIMEOUT)
        except concurrent.futures.TimeoutError:
            log.warning("kernel %s was not seen to end within %s s", self.manager.kernel_id, SHUTDOWN_TIMEOUT)
        except Exception:
            log.warning("ending kernel %s failed", self.manager.kernel_id, exc_info=True)

    def cleanup_resources(self) -> None:
        """Release what the kernel held. The broker calls this on a worker it has given up on (on the pump's
        thread, which must not wait on another host): a remote kernel is ended through its provisioner (it may
        be hung, not dead), in the background; a local one is released at once."""
        if self.manager.provisioner is None or self.ended:
            return
        if self.remote:
            self.end_soon()
        else:
            engine().run(self.manager.cleanup_resources(), CONTROL_TIMEOUT)
            self.ended = True

    def end_soon(self) -> None:
        """Kill the kernel through its provisioner (SIGKILL), then release it, in the background: the broker
        has given up on it, and may be on a thread that must not wait on another host."""
        if self.manager.provisioner is None or self.ended or self._ending is not None:
            return
        self._ending = asyncio.run_coroutine_threadsafe(self._end(EXIT_GRACE, True, kill=True), engine().loop)
        self._ending.add_done_callback(self._ended)

    def _ended(self, ending: concurrent.futures.Future) -> None:
        if not ending.cancelled() and ending.exception() is not None:
            log.warning("ending kernel %s failed: %s", self.manager.kernel_id, ending.exception())

    async def _end(self, grace: float, now: bool, *, kill: bool = False) -> None:
        """Wait up to ``grace`` for the kernel to exit (after SIGKILL with ``kill``: the broker gave up on it),
        then have the manager shut it down and release it."""
        provisioner = self.manager.provisioner
        if provisioner is None or self.ended:
            return
        if kill:
            await provisioner.send_signal(signal.SIGKILL)
        for _ in range(int(grace / EXIT_POLL)):
            if await provisioner.poll() is not None:
                break
            await asyncio.sleep(EXIT_POLL)
        await self.manager.shutdown_kernel(now=now)
        self.ended = True
