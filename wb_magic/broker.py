"""WorkerBroker: worker keys, lazy launch, calls, worker-to-worker routing, reloads and lifecycle events.

Everything a worker sends is checked before it is used: frames must be signed with that worker's own key,
replies are matched only against calls pending on that same worker, values are decoded by the safe codec (never
unpickled), and a worker-to-worker request is re-issued by the broker with the true caller stamped on it.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import zmq

from worker_kernel import messages
from worker_kernel.codec import (
    DecodeError,
    decode_value,
    encode_args,
    exception_from_wire,
    exception_to_wire,
)
from worker_kernel.lane import SANDBOXED_MAX_JSON, SPIN
from worker_kernel.loader import is_file_spec, module_file, module_name_for, resolve_module, split_target
from worker_kernel.messages import RELAYED, WB_CALL, WB_DEBUG, WB_IMPORT, WB_INSPECT, BrokerRequest, Reply
from worker_kernel.procstatus import is_confined, read_status
from worker_kernel.proxy import FunctionProxy, ModuleProxy, make_function
from worker_kernel.transport import curve_keys, is_loopback
from worker_kernel.wire import Message, use_orjson

from . import tracing
from .cleaner import EventType, WorkerCleaner, WorkerEvent
from .connection import MAX_MESSAGE_BYTES, now
from .errors import CallTimeout, WorkerBrokerError, WorkerDied, WorkerStartError
from .launcher import WorkerSpec, launch
from .links import JupyterLink, LaneLink, Link, ProcessWatch
from .policy import CallPolicy, default_rule, scrub_error
from .pump import Pump
from .safe_text import printable, printable_error
from .stdio import output_for
from .worker import Call, Worker, WorkerInfo

log = logging.getLogger("wb_magic")

Target = Any  # a module spec (path, file:// URL, dotted name) or (spec, segregation_id)
KeySupplier = Callable[[str, "str | None"], Hashable]
Constructor = Callable[[str, "str | None"], WorkerSpec]

OUTPUT_GRACE = 1.0  # how long a finished call waits for stream output the worker says it sent
INTERRUPT_GRACE = 5.0  # how long an interrupted call waits for the worker to answer before giving up
EXIT_GRACE = 2.0  # how long a worker asked to shut down gets before it is killed
UNSENT_RETRIES = 1  # a call whose worker was removed before the call left is sent once more, to a fresh worker
DEFAULT_WARM_WORKERS = 1  # see docs/benchmarks.md: one warm kernel costs ~20 MB and saves ~0.1 s per new worker
MAX_OUTPUT_BYTES = 1 << 20  # characters of output shown per call; the rest is cut, with a note
STRAY_OUTPUT_RATE = 64 * 1024  # characters a second of output that belongs to no call
DEFAULT_MAX_WORKERS = 64  # worker processes at once; at the limit the least recently used idle one is evicted
DEFAULT_SANDBOX_QUOTA = 4  # live workers that calls from one sandboxed worker (and its delegates) may have started
MAX_REQUESTS_IN_FLIGHT = 1024  # worker-to-worker requests of one worker being served at once; more are refused
RESOLVED = 1024  # resolved targets of workers' requests remembered (see _resolve_routed)
RESOLVED_NAME = 512  # characters of a target name that is remembered
UNREAD_ANSWERS = 1 << 20  # bytes of answers a worker has not taken, past which it is not read until it takes them


class WorkerBroker:
    """Runs module functions in worker kernels. See the README for a tour.

    ``worker_key_supplier(module, segregation_id)`` maps targets to worker keys (several modules may share a
    worker); ``worker_constructor(module, segregation_id)`` returns the `WorkerSpec` to launch a worker with;
    ``worker_cleaner`` receives every `WorkerEvent` (see `wb_magic.cleaner`); ``call_timeout`` (seconds) bounds
    every call unless a proxy sets its own. ``warm_workers`` kernels are kept started and unassigned, so that
    the first call to a new module waits only for its import; they are used for workers whose spec is the
    default `WorkerSpec()` (the pool's workers get no other permissions or options). ``max_workers`` bounds how
    many run (None: no bound): starting one more evicts the least recently used idle worker, and fails with
    `WorkerStartError` when none is idle. ``max_message_bytes`` caps a frame from a worker.

    Worker-to-worker calls follow `wb_magic.policy`: a trusted worker may call anything; a sandboxed worker only
    module files, as its own segregation id, whose workers are as confined as itself, and the calls of one
    sandboxed worker (with the workers it reached) may keep at most ``sandbox_quota`` workers started for them.
    ``call_policy(source_module, source_segregation_id, module, segregation_id, function)`` is asked first: True
    allows a call, False refuses it (`PermissionError` in the caller), None leaves it to the default rule.
    ``worker_constructor`` receives a module's real path (a dotted name's file, where one is found).

    ``spin`` (seconds, 100 µs by default; 0 turns it off) is how long the thread that waits for a reply, and a
    local worker that waits for its next call, poll before they sleep: on a virtual machine, waking a halted CPU
    costs tens of µs each way, most of a hot call's time otherwise (docs/benchmarks.md). It costs at most that
    much CPU per wait, and stops while waits are longer (`lane.Spinner`).
    """

    def __init__(
        self,
        worker_key_supplier: KeySupplier | None = None,
        worker_constructor: Constructor | None = None,
        worker_cleaner: WorkerCleaner | None = None,
        call_timeout: float | None = None,
        *,
        warm_workers: int = DEFAULT_WARM_WORKERS,
        max_workers: int | None = DEFAULT_MAX_WORKERS,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        call_policy: CallPolicy | None = None,
        sandbox_quota: int = DEFAULT_SANDBOX_QUOTA,
        spin: float = SPIN,
    ) -> None:
        self.worker_key_supplier = worker_key_supplier
        self.worker_constructor = worker_constructor
        self.worker_cleaner = worker_cleaner
        self.call_timeout = call_timeout
        self._context = zmq.Context()
        self.spin = max(0.0, spin)
        self._pump = Pump(self.spin)
        self._identity = os.urandom(8).hex().encode()
        self._workers: dict[Hashable, Worker] = {}
        self._busters: dict[str, str] = {}
        self._descriptions: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._lock = threading.RLock()
        self._end_lock = threading.Lock()
        self._batches: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        self.closed = False
        self.warm_workers = max(0, warm_workers)
        self.max_workers = max_workers
        self.max_message_bytes = max_message_bytes
        self.call_policy = call_policy
        self.sandbox_quota = sandbox_quota
        self._origins: dict[str, str | None] = {}
        self._resolved: dict[tuple[str, str], str] = {}  # (a routed request's target, its caller) -> module
        self._pool: list[Worker] = []  # started kernels with no module yet, launched with the default spec
        self._pool_spec = WorkerSpec()
        self._pool_wanted = threading.Event()
        self._pool_changed = threading.Condition(self._lock)
        self._pool_thread: threading.Thread | None = None
        if self.warm_workers:
            self._pool_wanted.set()
            self._pool_thread = threading.Thread(target=self._fill_pool, name="wb-warm-pool", daemon=True)
            self._pool_thread.start()
        use_orjson()  # wb-magic's wire only (both encoders write the same JSON); workers switch once idle
        _live_brokers.add(self)

    # -- public API -------------------------------------------------------------------------------------------

    def worker_proxy(self, target: Target, *, asynchronous: bool = False, timeout: float | None = None) -> ModuleProxy:
        """A module-like proxy: ``proxy.fn(*args)`` runs ``fn`` in the target's worker (awaitable if
        ``asynchronous``). ``timeout`` overrides the broker's ``call_timeout`` for its calls."""
        return ModuleProxy(self, self._resolve(target), asynchronous=asynchronous, timeout=timeout)

    def worker_fn_proxy(
        self, target: Target, name: str, *, asynchronous: bool = False, timeout: float | None = None
    ) -> Callable[..., Any]:
        """A proxy of one function of the target module; its worker starts at the first call."""
        resolved = self._resolve(target)
        if asynchronous:
            return make_function(self, resolved, name, asynchronous=True, timeout=timeout)
        return FunctionProxy(self, resolved, name, timeout)

    def worker_import(self, target: Target, cache_buster: Any = None, *, timeout: float | None = None) -> None:
        """Import the target's module in its worker without calling anything.

        A truthy ``cache_buster`` is remembered for the module: every later call to any worker of it, through
        old proxies and new, runs the module re-executed from its current source (its imports are not re-run).
        """
        module, segregation_id = self._resolve(target)
        if cache_buster:
            self._busters[module] = str(cache_buster)
        content = messages.module_request(module, self._busters.get(module))
        call = self._round_trip(module, segregation_id, WB_IMPORT, content, [], "<import>", timeout)
        self._outcome(call)

    async def aworker_import(self, target: Target, cache_buster: Any = None, *, timeout: float | None = None) -> None:
        """`worker_import` for coroutines: the event loop serves on while the worker starts and imports."""
        module, segregation_id = self._resolve(target)
        if cache_buster:
            self._busters[module] = str(cache_buster)
        content = messages.module_request(module, self._busters.get(module))
        self._outcome(await self._around_trip(module, segregation_id, WB_IMPORT, content, [], "<import>", timeout))

    def enable_worker_debugging(self, target: Target, enable: bool = True, *, timeout: float | None = None) -> None:
        """Turn the debug log of the target's worker on or off (starting the worker if there is none): it logs
        the calls it receives and the modules it loads to its stderr, which the host shows as the worker's
        output. See `worker_kernel.debugging`."""
        module, segregation_id = self._resolve(target)
        content = {"enable": bool(enable)}
        self._outcome(self._round_trip(module, segregation_id, WB_DEBUG, content, [], "<debug>", timeout))

    def remove_worker(self, target: Target) -> bool:
        """Shut down the worker of ``target``; its pending calls fail with `WorkerDied`. False if none ran."""
        module, segregation_id = self._resolve(target)
        with self._lock:
            worker = self._workers.pop(self._key(module, segregation_id), None)
        if worker is None:
            return False
        self._shutdown([worker], "it was removed")
        return True

    def terminate(self) -> None:
        """Shut down every worker. The broker stays usable: the next call starts a fresh worker."""
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        self._shutdown(workers, "the broker was terminated")
        self._emit("terminate", None)

    def evict(self, worker: Worker) -> bool:
        """Remove ``worker`` unless it has a call in flight (for cleaners). True if it was removed."""
        with self._lock:
            if worker.pending or worker.dead or self._workers.get(worker.key) is not worker:
                return False
            del self._workers[worker.key]
        self._shutdown([worker], "the cleaner removed it")
        return True

    def close(self) -> None:
        """Terminate, and release the broker's own resources. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True  # first: no worker may start while the others shut down
        self.terminate()
        with self._lock:
            pool, self._pool = self._pool, []
        self._pool_wanted.set()
        if self._pool_thread is not None and self._pool_thread is not threading.current_thread():
            self._pool_thread.join(EXIT_GRACE * 5)  # a launch in progress finishes, sees the close, ends its worker
        self._shutdown(pool, "the broker was closed")
        self._pump.close()
        self._context.destroy(linger=0)
        _live_brokers.discard(self)

    def __enter__(self) -> WorkerBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def workers(self) -> list[WorkerInfo]:
        """A snapshot of the live workers."""
        with self._lock:
            return [w.info() for w in self._workers.values() if not w.dead]

    @property
    def warm_pids(self) -> list[int | None]:
        """The process ids of the warm, unassigned kernels."""
        with self._lock:
            return [w.pid for w in self._pool if not w.dead]

    def wait_for_warm_pool(self, timeout: float | None = None) -> bool:
        """Block until ``warm_workers`` kernels are started and waiting; False on timeout."""
        with self._pool_changed:
            return self._pool_changed.wait_for(lambda: len(self._pool) >= self.warm_workers, timeout)

    def attach(
        self, connection_info: dict[str, Any] | str | os.PathLike, target: Target, *, allow_plaintext: bool = False
    ) -> WorkerInfo:
        """Adopt a worker kernel that something else started (another provisioner, another host) as the
        worker of ``target``. Calls to the target go to it; it is shut down like the broker's own workers.
        Without a process to watch, the broker watches its heartbeat while calls are pending. A kernel at a
        network address must have CurveZMQ keys in its connection info (`PermissionError` otherwise), unless
        ``allow_plaintext``."""
        if isinstance(connection_info, dict):
            info = dict(connection_info)
        else:
            with open(connection_info, encoding="utf-8") as f:
                info = json.load(f)
        if not allow_plaintext and not is_loopback(info) and curve_keys(info) is None:
            raise PermissionError(
                f"the kernel at {info.get('ip')} has no CurveZMQ keys: calls to it would cross the network in the "
                "clear (attach(..., allow_plaintext=True) accepts that)"
            )
        module, segregation_id = self._resolve(target)
        key = self._key(module, segregation_id)
        with self._lock:
            current = self._workers.get(key)
            if current is not None and not current.dead:
                raise ValueError(f"{key!r} already has a worker (pid {current.pid})")
            link = JupyterLink(self._context, info, self._identity, self.max_message_bytes)
            worker = Worker(key, module, segregation_id, WorkerSpec(lane=False), link, None)
            worker.remote = True  # it may run anywhere: it gets its modules' source from us
            if not isinstance(connection_info, dict):
                worker.attached_from = os.path.abspath(os.fspath(connection_info))
            self._open(worker)
            worker.answered = True  # it has been running: no start-up to wait for
            self._workers[key] = worker
        self._emit("create", worker)
        return worker.info()

    def worker_for(self, target: Target) -> Worker | None:
        """The live worker that serves ``target``, if one runs."""
        module, segregation_id = self._resolve(target)
        worker = self._workers.get(self._key(module, segregation_id))
        return worker if worker is not None and not worker.dead else None

    # -- the Caller protocol that proxies use -----------------------------------------------------------------

    def invoke(self, target: Any, function: str, args: tuple, kwargs: dict, timeout: float | None) -> Any:
        module, segregation_id = target
        buffers: list[Any] = []
        content = self._call_content(module, segregation_id, function, args, kwargs, buffers)
        return self._outcome(self._round_trip(module, segregation_id, WB_CALL, content, buffers, function, timeout))

    async def ainvoke(self, target: Any, function: str, args: tuple, kwargs: dict, timeout: float | None) -> Any:
        module, segregation_id = target
        buffers: list[Any] = []
        content = self._call_content(module, segregation_id, function, args, kwargs, buffers)
        return self._outcome(
            await self._around_trip(module, segregation_id, WB_CALL, content, buffers, function, timeout)
        )

    async def _around_trip(
        self,
        module: str,
        segregation_id: str | None,
        msg_type: str,
        content: dict[str, Any],
        buffers: list[Any],
        function: str,
        timeout: float | None,
    ) -> Call:
        """`_round_trip` for coroutines: the loop itself leads the pump while the reply is awaited."""
        loop = asyncio.get_running_loop()
        timeout = self.call_timeout if timeout is None else timeout
        for _ in range(UNSENT_RETRIES + 1):
            worker = self._live_worker(module, segregation_id)
            if worker is None:  # launching blocks for a moment: not on the event loop
                worker = await loop.run_in_executor(None, self._worker, module, segregation_id)
            call = Call(worker.link.new_id(), worker, function, sys.stdout, sys.stderr)
            call.loop = loop
            call.future = future = loop.create_future()
            self._pump.serve_loop(loop)
            self._pump.async_started()
            self._pump.batch(loop, self._send_call(worker, call, msg_type, content, buffers))
            timer = None if timeout is None else loop.call_later(timeout, _time_out, future)
            try:
                await future
            except TimeoutError:
                self._interrupt(worker, call)
                self._end(call, CallTimeout(f"{function}() in worker {worker.key!r} took longer than {timeout} s"))
            except asyncio.CancelledError:
                self._interrupt(worker, call)
                self._end(call, WorkerBrokerError("cancelled"))
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if not call.unsent:
                break
        return call

    def describe(self, target: Any, timeout: float | None = None) -> tuple[Any, dict[str, Any]]:
        module, segregation_id = target
        generation = self._busters.get(module)
        cached = self._descriptions.get(module)
        if cached is not None and cached[0] == generation:
            return cached
        content = messages.module_request(module, generation)
        call = self._round_trip(module, segregation_id, WB_INSPECT, content, [], "<inspect>", timeout)
        self._outcome(call)
        found = (generation, messages.clean_description(call.reply.content))
        self._descriptions[module] = found
        return found

    def module_name(self, target: Any) -> str:
        return module_name_for(target[0])

    # -- targets and workers ------------------------------------------------------------------------------------

    def _resolve(self, target: Target, base: str | None = None) -> tuple[str, str | None]:
        spec, segregation_id = split_target(target)
        return resolve_module(spec, base), segregation_id

    def _resolve_routed(self, spec: Any, base: str) -> str:
        """`resolve_module` for a worker's request, remembered: a path is made real with a system call per part,
        which a worker calling the same module again and again need not pay each time. What a worker names is its
        choice: at most RESOLVED entries, forgotten together when full, of names of at most RESOLVED_NAME
        characters (a hostile worker's long names would make the host hold a frame's worth each)."""
        cacheable = type(spec) is str and len(spec) <= RESOLVED_NAME
        key = (spec, base)
        found = self._resolved.get(key) if cacheable else None
        if found is None:
            found = resolve_module(spec, base)
            if cacheable:
                if len(self._resolved) >= RESOLVED:
                    self._resolved.clear()
                self._resolved[key] = found
        return found

    def _key(self, module: str, segregation_id: str | None) -> Hashable:
        if self.worker_key_supplier is not None:
            return self.worker_key_supplier(module, segregation_id)
        return (module, segregation_id)

    def _live_worker(self, module: str, segregation_id: str | None) -> Worker | None:
        worker = self._workers.get(self._key(module, segregation_id))
        if worker is None or worker.dead:
            return None
        return self._touch(worker, module)

    def _touch(self, worker: Worker, module: str) -> Worker:
        worker.modules.add(module)
        worker.last_used = now()
        if self.worker_cleaner is not None:
            self._emit("get", worker)
        return worker

    def _spec(self, module: str, segregation_id: str | None) -> WorkerSpec:
        """The spec a new worker of the target gets: the constructor sees the real path of the module's file."""
        if self.worker_constructor is None:
            return WorkerSpec()
        path = module if is_file_spec(module) else self._origin(module)
        return self.worker_constructor(path or module, segregation_id)

    def _worker(
        self,
        module: str,
        segregation_id: str | None,
        sponsor: Hashable | None = None,
        spec: WorkerSpec | None = None,
    ) -> Worker:
        """The live worker for a target, launched if there is none. ``sponsor`` is the key of the sandboxed
        worker whose call needs it (launches count against its quota); ``spec``, the target's if known."""
        key = self._key(module, segregation_id)
        with self._lock:
            worker = self._workers.get(key)
            if worker is not None and not worker.dead:
                return self._touch(worker, module)
            if self.closed:
                raise WorkerBrokerError("the broker is closed")
            if is_file_spec(module) and not os.path.isfile(module):
                raise FileNotFoundError(f"no module file {module!r}")
            if sponsor is not None:
                started = sum(1 for w in self._workers.values() if w.sponsor == sponsor and not w.dead)
                if started >= self.sandbox_quota:
                    raise PermissionError(
                        f"a sandboxed worker may have at most {self.sandbox_quota} live workers started on its"
                        f" behalf (the broker's sandbox_quota); not one for {os.path.basename(module)!r}"
                    )
            spec = spec if spec is not None else self._spec(module, segregation_id)
            worker = self._from_pool(spec)
            if worker is None:
                self._make_room(module)
                worker = self._launch(spec, module, module)
            worker.key, worker.module, worker.modules, worker.segregation_id = key, module, {module}, segregation_id
            worker.sponsor = sponsor
            worker.last_used = now()
            self._workers[key] = worker
        self._emit("create", worker)
        return worker

    def _make_room(self, module: str) -> None:
        """At ``max_workers``, evict the least recently used idle worker (under the lock), or refuse."""
        if self.max_workers is None or len(self._workers) + len(self._pool) < self.max_workers:
            return
        if self._pool:  # a warm kernel of another spec makes room first: it is the cheapest to replace
            victims = [self._pool.pop(0)]
        else:
            idle = [w for w in self._workers.values() if not w.pending and not w.dead]
            if not idle:
                raise WorkerStartError(
                    f"cannot start a worker for {module!r}: max_workers={self.max_workers} workers run, all busy"
                )
            victims = [min(idle, key=lambda w: w.last_used)]
            del self._workers[victims[0].key]
        why = f"max_workers={self.max_workers} was reached and it was the least recently used"
        threading.Thread(target=self._shutdown, args=(victims, why), name="wb-evict", daemon=True).start()

    def _from_pool(self, spec: WorkerSpec) -> Worker | None:
        if spec != self._pool_spec:
            return None
        while self._pool:
            worker = self._pool.pop(0)
            self._pool_wanted.set()
            if not worker.dead:
                return worker
        return None

    def _fill_pool(self) -> None:
        """Keep ``warm_workers`` unassigned kernels started (a thread of its own)."""
        while not self.closed:
            self._pool_wanted.wait()
            self._pool_wanted.clear()
            while not self.closed and len(self._pool) < self.warm_workers and not self._full():
                try:
                    worker = self._launch(self._pool_spec, "the warm pool")
                except Exception:
                    if not self.closed:
                        log.exception("could not start a worker for the warm pool")
                    return
                with self._lock:  # calls may have started workers meanwhile: max_workers holds for the pool too
                    keep = not self.closed and not self._full()
                    if keep:
                        self._pool.append(worker)
                        self._pool_changed.notify_all()
                if not keep:
                    self._shutdown([worker], "the broker was closed" if self.closed else "max_workers was reached")

    def _full(self) -> bool:
        with self._lock:
            return self.max_workers is not None and len(self._workers) + len(self._pool) >= self.max_workers

    def _launch(self, spec: WorkerSpec, purpose: str, module: str | None = None) -> Worker:
        """Start a kernel and connect to it; the worker has no module until the caller assigns one. ``module``
        is the target a sandboxed worker is allowed to read (a warm worker gets none)."""
        output = output_for(spec.permissions)  # a sandboxed worker never gets the host's stdio
        max_json = SANDBOXED_MAX_JSON if spec.sandboxed else None  # see lane.SANDBOXED_MAX_JSON
        lane = LaneLink(self.max_message_bytes, max_json) if spec.uses_lane else None
        try:
            manager = launch(spec, module, output, lane.child_fds if lane is not None else None, self.spin)
        except Exception as exc:
            if lane is not None:
                lane.close()
            raise WorkerStartError(f"could not launch a worker for {purpose}: {exc}") from exc
        if lane is not None:
            lane.launched()  # the worker holds its ends now
        process = ProcessWatch(manager)
        try:
            # worker_kernel, which holds its iopub messages until our subscription shows (see JupyterLink)
            ours = (spec.argv is None and spec.kernel_name is None) or getattr(manager, "runs_worker_kernel", False)
            link: Link = lane or JupyterLink(
                self._context, dict(manager.get_connection_info()), self._identity, self.max_message_bytes, ours
            )
            worker = Worker(None, "", None, spec, link, process)
            worker.output = output
            worker.remote = bool(getattr(manager, "remote", False))
            self._open(worker)
        except BaseException:
            process.kill()  # never leave a kernel running that nobody can reach
            process.wait(EXIT_GRACE)
            process.release()
            if lane is not None:
                lane.close()
            if output is not None:
                output.close()
            raise
        if worker.remote:  # watched by its heartbeat all its life (and it exits when our heartbeats stop)
            self._pump.soon(worker.link.call_sent)
        log.debug("started worker (pid %s, %s link) for %s", worker.pid, link.kind, purpose)
        return worker

    def _open(self, worker: Worker) -> None:
        """Hand the worker's link to the pump, with a watch on its process where we can."""
        worker.link.open(self._pump, self, worker)
        if worker.output is not None:
            worker.output.watch(self._pump, lambda: f"worker {worker.pid} {os.path.basename(worker.module)}")
        fd = worker.process.fd if worker.process is not None else None
        if fd is not None:
            self._pump.register(fd, lambda: self._on_exit(worker))
        else:
            log.debug("worker pid %s is watched by its heartbeat while it has calls", worker.pid)

    def _emit(self, kind: EventType, worker: Worker | None) -> None:
        if self.worker_cleaner is None:
            return
        event = WorkerEvent(
            kind, self, worker, worker.key if worker else None, worker.module if worker else None,
            worker.segregation_id if worker else None,
        )  # fmt: skip
        try:
            self.worker_cleaner(event)
        except Exception:
            log.exception("the worker cleaner failed on a %s event", kind)

    # -- calls --------------------------------------------------------------------------------------------------

    def _call_content(
        self, module: str, segregation_id: str | None, function: str, args: tuple, kwargs: dict, buffers: list[Any]
    ) -> dict[str, Any]:
        encoded_args, encoded_kwargs = encode_args(list(args), kwargs, buffers)
        return messages.call(module, self._busters.get(module), function, encoded_args, encoded_kwargs, segregation_id)

    def _send_call(
        self,
        worker: Worker,
        call: Call,
        msg_type: str,
        content: dict,
        buffers: list,
        routed: Any = None,
        source: Worker | None = None,
    ) -> Callable[[], None]:
        """Register ``call`` on ``worker``; returns the action that sends it, to run on the pump. ``routed`` is
        the trace context of a worker-to-worker request (a dict, perhaps empty), None for the host's own;
        ``source``, the worker that made that request: its call is refused (`WorkerBrokerError`) rather than
        queued past what the host holds toward ``worker``, or on ``source``'s behalf (`_admit`)."""
        if worker.remote:
            content = self._with_source(worker, content)
        module = content.get("module")
        if isinstance(module, str) and not is_file_spec(module):
            content = {**content, "origin": self._origin(module)}
        if tracing.tracer is not None:
            call.trace = tracing.tracer.start(worker, msg_type, content, routed)
        link = worker.link
        encoded = link.request(msg_type, call.msg_id, content, buffers)
        try:
            release = self._admit(source, worker, encoded) if source is not None else None
        except WorkerBrokerError as exc:
            if call.trace is not None:  # the span of a call that was refused
                call.error = exc
                _end_trace(call)
            raise
        worker.calls += 1
        worker.pending[call.msg_id] = call

        def send() -> None:
            if worker.dead or self._workers.get(worker.key) is not worker:
                if release is not None:
                    release()
                call.unsent = True  # removed (by a cleaner, say) between our choosing it and sending: retried
                self._end(call, WorkerDied(f"worker {worker.key!r} ended before the call was sent"))
                return
            try:
                link.send(encoded, release)
            except Exception as exc:  # never leave a call waiting for the reply to a message that did not leave
                self._end(call, WorkerBrokerError(f"the call to worker {worker.key!r} could not be sent: {exc}"))
                return
            link.call_sent()

        return send

    def _origin(self, module: str) -> str | None:
        """The file the host finds for a dotted name, which its worker constructor was shown: the worker refuses
        to run another file of that name (say one in its working directory that the host's sys.path does not
        see). Looked up once per module."""
        try:
            return self._origins[module]
        except KeyError:
            found = self._origins[module] = module_file(module)
            return found

    def _admit(self, source: Worker, target: Worker, encoded: Any) -> Callable[[], None]:
        """Count a routed call's bytes against what the host may hold toward ``target`` and on ``source``'s
        behalf, each at most ``max_message_bytes`` (one call always fits an empty queue); over either, refuse
        it. Returns what releases them once the call has left the host (or will never leave). On the pump."""
        n = _size(encoded)
        limit = self.max_message_bytes
        queued = target.link.queued
        if queued and queued + n > limit:
            raise WorkerBrokerError(
                f"worker {target.key!r} is not taking what the broker sends it: {queued} bytes wait for it already,"
                f" and the broker holds at most {limit} bytes toward a worker (a call of {n} bytes was refused)"
            )
        if source.routed_bytes and source.routed_bytes + n > limit:
            raise WorkerBrokerError(
                f"{source.routed_bytes} bytes of calls of worker {source.key!r} still wait for their workers to take"
                f" them, and the broker holds at most {limit} bytes on one worker's behalf (a call of {n} bytes was"
                " refused)"
            )
        source.routed_bytes += n
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                source.routed_bytes -= n

        return release

    def _answers_account(self, worker: Worker) -> Callable[[int], bool]:
        """Counts the bytes of answers queued toward ``worker``: while more than UNREAD_ANSWERS wait, the worker
        is not read (it asks for more than it takes); it is read again once half of them have left. An answer
        that would take what waits past ``max_message_bytes`` is refused (the requests it made before it was
        paused may all be answered at once, and the host holds no more than that for one worker)."""

        def account(n: int) -> bool:
            if n > 0 and worker.unread_answers and worker.unread_answers + n > self.max_message_bytes:
                return False
            worker.unread_answers += n
            if worker.dead:
                return True
            if worker.unread_answers > UNREAD_ANSWERS:
                worker.link.pause(True)
            elif worker.unread_answers <= UNREAD_ANSWERS // 2:
                worker.link.pause(False)
            return True

        return account

    def _with_source(self, worker: Worker, content: dict[str, Any]) -> dict[str, Any]:
        """``content`` with the source of its module, the first time ``worker`` (on another host) needs it
        for that module and cache buster. Modules found by dotted name are the remote host's own."""
        module = content.get("module")
        shipment = (module, content.get("cache_buster"))
        if not isinstance(module, str) or not is_file_spec(module) or shipment in worker.shipped:
            return content
        try:
            with open(module, encoding="utf-8") as f:
                source = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise WorkerBrokerError(f"cannot send the source of {module} to worker {worker.key!r}: {exc}") from exc
        worker.shipped.add(shipment)
        return {**content, "module_source": source}

    def _round_trip(
        self,
        module: str,
        segregation_id: str | None,
        msg_type: str,
        content: dict[str, Any],
        buffers: list[Any],
        function: str,
        timeout: float | None,
    ) -> Call:
        """Send a request to the target's worker and wait for the reply on this thread. A call whose worker was
        removed before the call left is sent again, to a fresh worker."""
        timeout = self.call_timeout if timeout is None else timeout
        for _ in range(UNSENT_RETRIES + 1):
            worker = self._worker(module, segregation_id)
            call = Call(worker.link.new_id(), worker, function, sys.stdout, sys.stderr)
            send = self._send_call(worker, call, msg_type, content, buffers)
            deadline = None if timeout is None else now() + timeout
            try:
                finished = self._pump.wait(call.is_done, deadline, send)
            except KeyboardInterrupt:
                self._interrupt(worker, call)
                try:
                    self._pump.wait(call.is_done, now() + INTERRUPT_GRACE)
                finally:
                    self._end(call, KeyboardInterrupt())
                raise KeyboardInterrupt from None
            if not finished:
                self._interrupt(worker, call)
                self._end(call, CallTimeout(f"{function}() in worker {worker.key!r} took longer than {timeout} s"))
            if not call.unsent:
                break
        return call

    def _outcome(self, call: Call) -> Any:
        if call.error is not None:
            raise call.error
        msg: Message | Reply = call.reply
        content = msg.content
        try:
            if content.get("status") == "ok":
                return decode_value(content.get("value"), msg.buffers)
            error = exception_from_wire(printable_error(content), msg.buffers)
        except DecodeError as exc:
            raise WorkerBrokerError(f"worker {call.worker.key!r} sent a reply that is not valid: {exc}") from None
        raise error

    def _end(self, call: Call, error: BaseException | None = None) -> None:
        """Finish a call (once): with its reply already set, or with ``error``."""
        with self._end_lock:
            if call.done:
                return
            call.done = True
            if error is not None:
                call.error = error
        call.worker.pending.pop(call.msg_id, None)
        if call.trace is not None:
            _end_trace(call)
        if call.on_done is not None:
            call.on_done(call)
        if call.future is not None:
            self._pump.async_ended()
            self._deliver(call)
        self._pump.delivered()

    def _deliver(self, call: Call) -> None:
        """Wake the awaiting coroutine: at once on its own loop's thread (the loop leads the pump), else in
        batches, one thread-safe wake-up (a write to the loop's self-pipe) per batch rather than per call."""
        loop = call.loop
        # _get_running_loop: asyncio.get_running_loop() without its RuntimeError when none runs, exported (in
        # asyncio.events.__all__) for event loops written outside asyncio; the async tests fail if it changes
        if asyncio.events._get_running_loop() is loop:
            if not call.future.done():
                call.future.set_result(None)
            return
        with self._end_lock:
            batch = self._batches.setdefault(loop, [])
            first = not batch
            batch.append(call.future)
        if first:
            try:
                loop.call_soon_threadsafe(self._resolve_batch, loop)
            except RuntimeError:  # the loop has closed: nobody waits any more
                with self._end_lock:
                    self._batches.pop(loop, None)

    def _resolve_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._end_lock:
            futures = self._batches.pop(loop, [])
        for future in futures:
            if not future.done():
                future.set_result(None)

    def _interrupt(self, worker: Worker, call: Call | None = None) -> None:
        """Interrupt one call in the worker (or all it runs): other callers' interleaved calls go on."""
        call_id = call.msg_id if call is not None else None

        def send() -> None:
            if not worker.dead:
                worker.link.interrupt(call_id)

        self._pump.soon(send)

    # -- what links hand on (on the pump's leader: see links.LinkEvents) -------------------------------------------

    def _reply_arrived(self, worker: Worker, call_id: Any, reply: Reply | Message) -> None:
        if not worker.answered:
            worker.answered = True
            if worker.spec.permissions is not None and not _confined(worker.pid):
                self._end_worker(worker, "it is not confined as its permissions require (fail closed)")
                return
        call = worker.pending.get(call_id)
        if call is None or call.reply is not None:
            log.debug("dropped a reply from worker %r for no pending call", worker.key)
            return
        call.reply = reply
        expected = messages.output_count(reply.content)
        if expected is not None and call.outputs < expected:
            self._pump.at(now() + OUTPUT_GRACE, lambda: self._end(call))
        else:
            self._end(call)

    def _output_arrived(self, worker: Worker, call_id: Any, content: dict[str, Any]) -> None:
        """Output of a call goes where the call's caller sees it; output that belongs to no call (written after
        its call returned, or by a thread of the worker's own) is never passed off as a call's: it goes to the
        host's stderr at once, each line labelled with the worker, at a capped rate. Either way as text:
        `safe_text.printable`."""
        stream = messages.stream(content)
        if stream is None:
            return
        name, text = stream
        call = worker.pending.get(call_id) if call_id is not None else None
        if call is not None:
            target = call.stderr if name == "stderr" else call.stdout
            shown = printable(self._within_output_cap(worker, call, text))
        else:
            target = sys.stderr
            shown = _labelled(_worker_label(worker), printable(self._within_output_cap(worker, None, text)))
        try:
            if shown and target is not None:
                target.write(shown)
        except Exception:
            log.exception("could not show output from worker %r", worker.key)
        if call is not None:
            call.outputs += 1
            expected = messages.output_count(call.reply.content) if call.reply is not None else None
            if expected is not None and call.outputs >= expected:
                self._end(call)

    def _within_output_cap(self, worker: Worker, call: Call | None, text: str) -> str:
        """What of ``text`` may be shown: MAX_OUTPUT_BYTES a call, STRAY_OUTPUT_RATE a second for output that
        belongs to no call; past that, one line says that output was cut (once per call, and once each time
        the rate's budget runs out)."""
        if call is not None:
            room = MAX_OUTPUT_BYTES - call.output_bytes
            call.output_bytes += len(text)
        else:
            moment = now()
            worker.stray_output = max(0.0, worker.stray_output - (moment - worker.stray_checked) * STRAY_OUTPUT_RATE)
            worker.stray_checked = moment
            room = int(STRAY_OUTPUT_RATE - worker.stray_output)
            worker.stray_output += len(text)
        if len(text) <= room:
            return text
        if room < 0:
            return ""  # cut already, and said so
        what = f"{call.function}()" if call is not None else "worker output"
        return text[:room] + f"\n[wb-magic: {what} of worker {worker.key!r} printed too much: the rest is truncated]\n"

    def _request_arrived(self, source: Worker, request: BrokerRequest) -> None:
        """A worker calls another: resolve the target against the caller's module, stamp the caller, send."""

        def answer(content: dict[str, Any], buffers: list[Any] | tuple = ()) -> None:
            if source.dead:
                return
            if content.get("status") == "error" and source.spec.sandboxed:
                content = scrub_error(content, source.spec, source.modules)
            account = self._answers_account(source)
            try:
                sent = source.link.answer(request, content, buffers, account)
            except (TypeError, ValueError) as exc:  # the target's reply cannot be re-encoded (a lone surrogate, say)
                error = WorkerBrokerError(f"the reply could not be passed on: {exc}")
                sent = source.link.answer(request, messages.error(exception_to_wire(error, [])), (), account)
            if not sent:  # a small error in its place, outside the count (at most one per request in flight)
                error = WorkerBrokerError(
                    f"the answer was dropped: worker {source.key!r} has not taken {source.unread_answers} bytes of"
                    f" answers, and the broker holds at most {self.max_message_bytes} bytes of answers for a worker"
                )
                source.link.answer(request, messages.error(exception_to_wire(error, [])))

        source.requests_handled += 1
        try:
            if source.requests_in_flight >= MAX_REQUESTS_IN_FLIGHT:
                raise WorkerBrokerError(
                    f"worker {source.key!r} has {source.requests_in_flight} calls to other workers in flight already"
                    f" (at most {MAX_REQUESTS_IN_FLIGHT})"
                )
            request.check()
            function: str = request.function  # type: ignore[assignment]  # checked
            claimed = request.source_module
            caller_module: str = claimed if isinstance(claimed, str) and claimed in source.modules else source.module
            requested = request.segregation_id
            if source.spec.sandboxed and requested in (None, ""):
                requested = source.segregation_id  # a sandboxed worker calls as its own tenant
            named, segregation_id = split_target((request.target, requested))
            # a sandboxed caller's targets are made real afresh each time: one that may write where they lie
            # could otherwise swap a folder for a symbolic link after the first call, and be routed by the old path
            if source.spec.sandboxed:
                module = resolve_module(named, caller_module)
            else:
                module = self._resolve_routed(named, caller_module)
            target_spec = self._spec_if_live(module, segregation_id)

            def spec_of_target() -> WorkerSpec:
                nonlocal target_spec
                if target_spec is None:
                    target_spec = self._spec(module, segregation_id)
                return target_spec

            verdict = self.call_policy(caller_module, source.segregation_id, module, segregation_id, function) if (
                self.call_policy is not None
            ) else None  # fmt: skip
            if verdict is None:
                broken = default_rule(source.spec, source.segregation_id, module, segregation_id, spec_of_target)
                if broken is not None:
                    refusal = f"{_label(caller_module)} may not call {function}() of {_label(module)}"
                    raise PermissionError(f"{refusal}: {broken} (a call_policy can allow it)")
            elif not verdict:
                refusal = f"{_label(caller_module)} may not call {function}() of {_label(module)}"
                raise PermissionError(f"{refusal} (the broker's call_policy says no)")
            sponsor = source.sponsor if source.sponsor is not None else (source.key if source.spec.sandboxed else None)
            target = self._worker(module, segregation_id, sponsor, target_spec)
        except Exception as exc:  # the broker's own frames are none of the caller's business
            answer(messages.error({**exception_to_wire(exc, []), "traceback": _error_only(exc)}))
            return
        origin = source.pending.get(request.parent) if request.parent is not None else None
        call = Call(target.link.new_id(), target, function, origin.stdout if origin else None,
                    origin.stderr if origin else None)  # fmt: skip

        expiry: list[Any] | None = None

        def relay(call: Call) -> None:
            source.requests_in_flight -= 1
            if expiry is not None:
                self._pump.cancel(expiry)
            if call.error is not None:
                answer(messages.error(exception_to_wire(call.error, [])))
            else:
                reply = call.reply.content
                answer({k: reply[k] for k in RELAYED if k in reply}, call.reply.buffers)

        call.on_done = relay
        content = messages.call(
            module,
            self._busters.get(module),
            function,
            request.args,
            request.kwargs,
            segregation_id,
            {"module": caller_module, "segregation_id": source.segregation_id},
        )
        try:
            trace = request.trace if isinstance(request.trace, dict) else {}
            if tracing.tracer is not None:  # a worker may continue the trace of the call it runs, no other
                trace = tracing.tracer.vouch(origin.trace if origin is not None else None, trace)
            send = self._send_call(target, call, WB_CALL, content, request.buffers, trace, source)
        except (TypeError, ValueError) as exc:  # arguments JSON cannot carry on (a lone surrogate, say)
            answer(messages.error(exception_to_wire(TypeError(f"the call could not be encoded: {exc}"), [])))
            return
        except WorkerBrokerError as exc:  # the target's source could not be read to send it
            target.pending.pop(call.msg_id, None)
            answer(messages.error(exception_to_wire(exc, [])))
            return
        timeout = request.timeout  # its timer is set first: a call that fails as it is sent cancels it
        if timeout:

            def expire() -> None:
                self._end(call, CallTimeout(f"{function}() in worker {target.key!r} took longer than {timeout} s"))
                self._interrupt(target, call)

            expiry = self._pump.at(now() + timeout, expire)
        source.requests_in_flight += 1  # until `relay` answers it, however the call ends
        send()

    def _spec_if_live(self, module: str, segregation_id: str | None) -> WorkerSpec | None:
        with self._lock:
            worker = self._workers.get(self._key(module, segregation_id))
            return worker.spec if worker is not None and not worker.dead else None

    def _end_worker(self, worker: Worker, why: str) -> None:
        """Fail a misbehaving worker's calls at once, and end its process."""
        worker.exit_reason = why
        if worker.process is not None:
            worker.process.kill()
        self._discard(worker, why)

    def _on_exit(self, worker: Worker) -> None:
        if worker.process is not None and not worker.process.ended():
            return  # a stale wake-up: the descriptor's number was another's, and this process runs on
        self._discard(worker, f"it ended ({worker.exit_status()})")

    def _discard(self, worker: Worker, why: str) -> None:
        """Forget a worker whose process has ended or is ending: fail its calls, close its link. On the pump."""
        with worker.lock:
            if worker.dead:
                return
            worker.dead = True
        log.debug("worker %r: %s", worker.key, why)
        if worker.output is not None:
            worker.output.close()  # what it wrote as it ended (a crash's traceback) comes before the calls fail
        for call in list(worker.pending.values()):
            self._end(call, WorkerDied(f"worker {worker.key!r} running {call.function}(): {why}"))
        process = worker.process
        if process is not None and process.fd is not None:
            self._pump.unregister(process.fd)
        worker.link.close()
        with self._lock:
            if self._workers.get(worker.key) is worker:
                del self._workers[worker.key]
                if self.warm_workers:
                    self._pool_wanted.set()  # the pool may have stopped short at max_workers
            elif worker in self._pool:
                self._pool.remove(worker)
                self._pool_wanted.set()
        if process is not None:
            process.release()
        if worker.module:  # a warm worker that never got a module was never announced
            self._emit("remove", worker)

    def _shutdown(self, workers: list[Worker], why: str) -> None:
        """Ask workers to shut down, kill those that do not within EXIT_GRACE, and discard them."""
        for worker in workers:
            self._pump.soon(lambda worker=worker: self._request_shutdown(worker))  # type: ignore[misc]
        deadline = now() + EXIT_GRACE
        for worker in workers:
            if worker.process is not None:
                worker.process.wait(deadline - now())
            self._pump.soon(lambda worker=worker: self._discard(worker, why))  # type: ignore[misc]

    def _request_shutdown(self, worker: Worker) -> None:
        if not worker.dead:
            worker.link.request_shutdown()


def _size(encoded: list[Any]) -> int:
    """The bytes of an encoded message (bytes, memoryviews, zmq.Frames)."""
    total = 0
    for part in encoded:
        total += part.nbytes if type(part) is memoryview else len(part)
    return total


def _worker_label(worker: Worker) -> str:
    """How the host's stderr names a worker (as `wb_magic.stdio` does): ``worker <pid> <module file>``."""
    return printable(f"worker {worker.pid} {os.path.basename(worker.module)}").replace("\n", " ")


def _labelled(label: str, text: str) -> str:
    """``text`` (printable already) as whole lines, each beginning ``[label]``."""
    if not text:
        return ""
    return "".join(f"[{label}] {line}\n" for line in text.rstrip("\n").split("\n"))


def _confined(pid: int | None) -> bool:
    """Whether a worker process runs with no-new-privileges and a seccomp filter, as a sandbox leaves it."""
    return pid is not None and is_confined(read_status(pid))


_live_brokers: weakref.WeakSet[WorkerBroker] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for broker in list(_live_brokers):
        try:
            broker.close()
        except Exception:
            pass


def _time_out(future: asyncio.Future) -> None:
    """A coroutine's call has waited too long (cheaper than `asyncio.wait_for`, which wraps every call)."""
    if not future.done():
        future.set_exception(TimeoutError())


def _label(module: str) -> str:
    """A module as an error message names it: a file by its name, a module by its dotted name."""
    return os.path.basename(module) if is_file_spec(module) else module


def _error_only(exc: BaseException) -> list[str]:
    import traceback

    return traceback.format_exception_only(type(exc), exc)


def _end_trace(call: Call) -> None:
    try:
        call.trace.end(call)
    except Exception:  # telemetry must never break a call
        log.exception("recording the trace of %s() failed", call.function)
