"""Proxies: a module whose functions run in a worker, on either side of the boundary.

`ModuleProxy` is a real `types.ModuleType`, so ``dir()``, tab completion and ``help()`` treat it as a module;
its functions are real Python functions carrying the remote signature and docstring, so ``inspect.signature``
and ``fn?`` show them, and the module's file (``__wrapped__`` stands in for the remote function, defined there).
A `Caller` does the calling: the broker on the host, the worker kernel inside a worker.

Signatures arrive as text from a worker that is not trusted. They are parsed with `ast` and never evaluated:
defaults and annotations are shown as their source text.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, Protocol

from .errors import NoSuchFunction
from .loader import module_file

MAX_SIGNATURE = 10_000  # characters of a remote signature parsed; a longer one is shown as (*args, **kwargs)


class Caller(Protocol):
    def invoke(self, target: Any, function: str, args: tuple, kwargs: dict, timeout: float | None) -> Any: ...

    async def ainvoke(self, target: Any, function: str, args: tuple, kwargs: dict, timeout: float | None) -> Any: ...

    def describe(self, target: Any, timeout: float | None = None) -> tuple[Any, dict[str, Any]] | None:
        """``(generation, {"name":, "functions": {name: {signature, doc, is_async}}})``, or None if the caller
        cannot look inside modules. ``generation`` changes when the module is reloaded. ``timeout`` is the
        proxy's (the question starts the worker and imports the module: it is part of the proxy's first call)."""
        ...

    def module_name(self, target: Any) -> str: ...


def make_function(
    caller: Caller,
    target: Any,
    name: str,
    *,
    asynchronous: bool = False,
    timeout: float | None = None,
    info: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """A function that runs ``name`` of ``target`` in its worker: sync, or a coroutine function."""
    proxy: Callable[..., Any]
    if asynchronous:

        async def aproxy(*args: Any, **kwargs: Any) -> Any:
            return await caller.ainvoke(target, name, args, kwargs, timeout)

        proxy = aproxy
    else:

        def proxy(*args: Any, **kwargs: Any) -> Any:
            return caller.invoke(target, name, args, kwargs, timeout)

    module = caller.module_name(target)
    proxy.__name__ = name
    proxy.__qualname__ = name
    proxy.__module__ = module
    proxy.__doc__ = (info or {}).get("doc") or f"Runs {name}() of {module} in its worker."
    if info is not None:
        proxy.__dict__["__signature__"] = parse_signature(str(info.get("signature", "")))
        file = module_file(target[0]) if isinstance(target, tuple) and isinstance(target[0], str) else None
        if file is not None:
            proxy.__dict__["__wrapped__"] = _stand_in(name, file)
    proxy.__dict__["with_timeout"] = lambda seconds: make_function(
        caller, target, name, asynchronous=asynchronous, timeout=seconds, info=info
    )
    return proxy


def _stand_in(name: str, file: str) -> Callable[..., Any]:
    """What ``proxy.__wrapped__`` is: a function that says where ``name`` is defined (``file``, at the line of its
    ``def``), for the tools that look (IPython's ``fn?`` and ``fn??``, `inspect.getsource`). It runs nowhere."""

    def stand_in(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{name}() runs in its worker: call its proxy")

    stand_in.__code__ = stand_in.__code__.replace(co_filename=file, co_firstlineno=_def_line(file, name), co_name=name)
    stand_in.__name__ = stand_in.__qualname__ = name
    return stand_in


def _def_line(file: str, name: str) -> int:
    """The line of ``def name`` (or ``async def name``) at the top level of ``file``; 1 if there is none."""
    import linecache
    import re

    definition = re.compile(rf"(?:async\s+)?def\s+{re.escape(name)}\b")
    linecache.checkcache(file)  # the file may have changed since (a reload)
    for number, line in enumerate(linecache.getlines(file), 1):
        if definition.match(line):
            return number
    return 1


class FunctionProxy:
    """A synchronous proxy of one remote function, whose worker starts at the first call.

    What the function looks like (signature, docstring, the file it is defined in) is asked of the worker only
    when a tool looks (``inspect.signature``, ``help``, IPython's ``fn?``); an unknown name fails at the first
    call with `NoSuchFunction`, or when a tool looks.
    """

    def __init__(self, caller: Caller, target: Any, name: str, timeout: float | None = None) -> None:
        self._wb_caller = caller
        self._wb_target = target
        self._wb_timeout = timeout
        self.__name__ = self.__qualname__ = name
        self.__module__ = caller.module_name(target)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wb_caller.invoke(self._wb_target, self.__name__, args, kwargs, self._wb_timeout)

    def with_timeout(self, seconds: float | None) -> FunctionProxy:
        return FunctionProxy(self._wb_caller, self._wb_target, self.__name__, seconds)

    def _wb_info(self) -> dict[str, Any]:
        found = self._wb_caller.describe(self._wb_target, self._wb_timeout)
        functions = found[1].get("functions", {}) if found is not None else {}
        info = functions.get(self.__name__) if isinstance(functions, dict) else None
        if not isinstance(info, dict):
            raise NoSuchFunction(f"module {self.__module__!r} (in its worker) has no function {self.__name__!r}")
        return info

    @property
    def __signature__(self) -> Any:
        return parse_signature(str(self._wb_info().get("signature", "")))

    @property  # type: ignore[override]
    def __doc__(self) -> str:  # type: ignore[override]
        return str(self._wb_info().get("doc") or f"Runs {self.__name__}() of {self.__module__} in its worker.")

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        target = self._wb_target
        file = module_file(target[0]) if isinstance(target, tuple) and isinstance(target[0], str) else None
        if file is None:
            raise AttributeError("__wrapped__")
        return _stand_in(self.__name__, file)

    def __repr__(self) -> str:
        return f"<worker function proxy {self.__module__}.{self.__name__}>"


class ModuleProxy(types.ModuleType):
    """Every public function of the remote module, as an attribute.

    Synchronous proxies ask the worker what the module holds (``wb_inspect``) on first use, so that a missing
    name fails at once with `AttributeError`; asynchronous ones never block, and a missing name fails when the
    call is awaited.
    """

    def __init__(
        self, caller: Caller, target: Any, *, asynchronous: bool = False, timeout: float | None = None
    ) -> None:
        super().__init__(caller.module_name(target))
        self._wb_caller = caller
        self._wb_target = target
        self._wb_asynchronous = asynchronous
        self._wb_timeout = timeout
        self._wb_seen: tuple[Any, dict[str, Any]] | None = None

    def _wb_functions(self) -> dict[str, Any] | None:
        found = self._wb_caller.describe(self._wb_target, self._wb_timeout)
        if found is None:
            return None
        if self._wb_seen is not None and self._wb_seen[0] != found[0]:  # reloaded: forget stale signatures
            for name in self._wb_seen[1].get("functions", {}):
                self.__dict__.pop(name, None)
        self._wb_seen = found
        functions = found[1].get("functions", {})
        if found[1].get("doc"):
            self.__doc__ = found[1]["doc"]
        return functions if isinstance(functions, dict) else {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name.startswith("_wb_"):
            raise AttributeError(name)
        functions = None if self._wb_asynchronous else self._wb_functions()
        if functions is not None and name not in functions:
            raise NoSuchFunction(f"module {self.__name__!r} (in its worker) has no function {name!r}")
        fn = make_function(
            self._wb_caller,
            self._wb_target,
            name,
            asynchronous=self._wb_asynchronous,
            timeout=self._wb_timeout,
            info=None if functions is None else functions[name],
        )
        self.__dict__[name] = fn
        return fn

    def __dir__(self) -> list[str]:
        functions = self._wb_functions() or {}
        return sorted(set(functions) | {"__doc__", "__name__"})

    def __repr__(self) -> str:
        flavour = "async " if self._wb_asynchronous else ""
        return f"<{flavour}worker proxy of {self._wb_target!r}>"


class _Source:
    """A default value or annotation shown as the worker's source text."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def parse_signature(text: str) -> Any:
    """An `inspect.Signature` from text like ``(name, greeting='Hello', *, loud: bool = False) -> str``."""
    import ast
    import inspect

    fallback = inspect.Signature(
        [
            inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
            inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
        ]
    )
    if not text.startswith("(") or len(text) > MAX_SIGNATURE:
        return fallback
    try:
        tree = ast.parse(f"def f{text}: pass")
    except (SyntaxError, ValueError, RecursionError):
        return fallback
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        return fallback
    node = tree.body[0]
    a = node.args
    P = inspect.Parameter

    def source(expr: ast.expr | None) -> Any:
        return P.empty if expr is None else _Source(ast.unparse(expr))

    params = []
    positional = [(arg, P.POSITIONAL_ONLY) for arg in a.posonlyargs] + [
        (arg, P.POSITIONAL_OR_KEYWORD) for arg in a.args
    ]
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for (arg, kind), default in zip(positional, defaults, strict=True):
        params.append(P(arg.arg, kind, default=source(default), annotation=source(arg.annotation)))
    if a.vararg:
        params.append(P(a.vararg.arg, P.VAR_POSITIONAL, annotation=source(a.vararg.annotation)))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        params.append(P(arg.arg, P.KEYWORD_ONLY, default=source(default), annotation=source(arg.annotation)))
    if a.kwarg:
        params.append(P(a.kwarg.arg, P.VAR_KEYWORD, annotation=source(a.kwarg.annotation)))
    try:
        return inspect.Signature(params, return_annotation=source(node.returns))
    except ValueError:
        return fallback
