"""The call runner: what a worker does with a call, apart from sockets.

It keeps the target modules a worker has loaded (with the cache-buster each was loaded for), runs the entry
hooks around every call, and tells what a module offers. The socket server (`kernel.py`) hands it decoded calls
and sends back whatever it returns or raises.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from types import FunctionType, ModuleType
from typing import Any, NamedTuple

from .errors import NoSuchFunction, WorkerStartError
from .lazylog import LazyLogger
from .loader import load_module, module_name_for

log = LazyLogger("worker_kernel")


class CallContext(NamedTuple):
    """Who made the call that is running: what `current_call()` returns inside a worker.

    ``source_module`` and ``source_segregation_id`` are stamped by the broker: ``None`` when the host called,
    else the calling worker's module. ``module`` and ``function`` are the target.
    """

    module: str
    function: str
    segregation_id: str | None
    source_module: str | None
    source_segregation_id: str | None
    call_id: str


current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("wb_current_call", default=None)


class CallRunner:
    """Loads target modules and runs their functions, with the seed's entry hooks.

    ``hooks`` is any object (a module, say) with optional ``initial_call()``, ``before_call(context)`` and
    ``after_call(context)``, each a function or a coroutine function (awaited). ``initial_call`` runs once,
    before the worker imports its first target module (for a call, an import or an inspect request alike);
    ``after_call`` runs in a ``finally``, also when ``before_call`` raised. Hooks are no security boundary: the
    module they run around can undo anything they set up (the sandbox is the boundary, docs/security.md).
    """

    def __init__(self, hooks: Any = None) -> None:
        self.hooks = hooks
        self.modules: dict[str, tuple[ModuleType, str | None]] = {}
        self.primary: ModuleType | None = None
        self._functions: dict[tuple[ModuleType, str], tuple[Callable[..., Any], bool]] = {}
        self._before = getattr(hooks, "before_call", None)
        self._after = getattr(hooks, "after_call", None)
        self.initial = getattr(hooks, "initial_call", None)
        self.initial_pending = self.initial is not None  # until initial_call has run (the one check a call pays)
        self.initial_is_async = self.initial is not None and _is_coroutine_function(self.initial)
        self.initial_error: BaseException | None = None
        # a call runs as a coroutine when a hook around it is one, whatever the function is
        self.async_hooks = any(h is not None and _is_coroutine_function(h) for h in (self._before, self._after))

    def run_initial(self) -> None:
        """Run a plain ``initial_call`` (a coroutine one is awaited by the kernel, then `initial_done`)."""
        try:
            self.initial()  # type: ignore[misc]
        except BaseException as exc:
            self.initial_done(exc)
            raise
        self.initial_done(None)

    def initial_done(self, error: BaseException | None) -> None:
        """``initial_call`` has run; if it raised, no module is ever imported here (fail closed)."""
        self.initial_pending = False
        self.initial_error = error

    def _check_initialised(self) -> None:
        if self.initial_error is not None:
            error = self.initial_error
            raise WorkerStartError(
                f"this worker's initial_call hook failed ({type(error).__name__}: {error}): it imports nothing"
            )

    def module(self, canonical: str, cache_buster: str | None) -> ModuleType:
        """The module for ``canonical``, executed afresh when ``cache_buster`` is one it has not loaded."""
        loaded = self.modules.get(canonical)
        if loaded is not None and (not cache_buster or loaded[1] == cache_buster):
            return loaded[0]
        self._check_initialised()
        log.debug("loading %s (cache buster %r)", canonical, cache_buster)
        module = load_module(canonical, fresh=loaded is not None or bool(cache_buster))
        self.modules[canonical] = (module, cache_buster)
        if self.primary is None or self.primary.__name__ == module.__name__:
            self.primary = module
        return module

    def function(self, module: ModuleType, name: str) -> tuple[Callable[..., Any], bool]:
        """The exported function ``name`` and whether it is a coroutine function.

        Only the module's own functions (or its ``__all__``) are exported: a function it merely imported
        (``from os import system``) must not be callable by other workers. Looked up once per module and name,
        while the module's global still holds the same object.
        """
        found = self._functions.get((module, name))
        if found is not None and module.__dict__.get(name) is found[0]:
            return found
        fn = getattr(module, name, None) if _exported(module, name) else None
        if fn is None or not callable(fn) or isinstance(fn, type):
            raise NoSuchFunction(f"module {module.__name__!r} has no function {name!r}")
        found = (fn, _is_coroutine_function(fn))
        self._functions[(module, name)] = found
        return found

    def before(self, context: CallContext) -> Any:
        """Run ``before_call``; what it returns (an awaitable, if it is a coroutine function)."""
        return self._before(context) if self._before is not None else None

    def after(self, context: CallContext) -> Any:
        return self._after(context) if self._after is not None else None

    def describe(self, module: ModuleType) -> dict[str, Any]:
        """The public callables of a module: name -> {signature, doc, is_async}."""
        import inspect

        functions = {}
        for name, value in vars(module).items():
            if not callable(value) or isinstance(value, type) or not _exported(module, name):
                continue
            try:
                signature = str(inspect.signature(value))
            except (TypeError, ValueError):
                signature = "(*args, **kwargs)"
            functions[name] = {
                "signature": signature,
                "doc": inspect.getdoc(value) or "",
                "is_async": inspect.iscoroutinefunction(value),
            }
        return {"name": module_name_for(getattr(module, "__file__", None) or module.__name__), "functions": functions}


def _exported(module: ModuleType, name: str) -> bool:
    names = getattr(module, "__all__", None)
    if names is not None:
        return name in names
    if name.startswith("_"):
        return False
    value = getattr(module, name, None)
    return getattr(value, "__module__", None) == module.__name__


def _is_coroutine_function(fn: Any) -> bool:
    """`inspect.iscoroutinefunction`, without importing `inspect` (10 ms of a worker's start) for plain functions."""
    if type(fn) is FunctionType:
        return bool(fn.__code__.co_flags & _CO_COROUTINE)
    import inspect

    return inspect.iscoroutinefunction(fn)


_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE
