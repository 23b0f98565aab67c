"""IPython magics: ``%load_ext wb_magic`` makes workers feel native in a notebook.

One `WorkerBroker` serves the whole IPython session (`get_broker`); it is closed when the kernel exits.

    %wb_proxy [-s SEGREGATION_ID] [-f FUNCTION] [-a] [-t SECONDS] TARGET [NAME]
    %wb_reload [--restart] TARGET
    %wb_workers
    %%wb_module NAME
    %wb_shutdown [-s SEGREGATION_ID] TARGET | --all
    %wb_debug on|off
    %%wb_trace

A TARGET is the name of a ``%%wb_module`` cell, a path to a ``.py`` file (relative to the working directory),
a ``file://`` URL or a dotted module name. Bad input raises `UsageError`, which IPython shows as one line; so
does a TARGET that names none of these (``%wb_shutdown`` also takes a module whose workers run on after its
file was removed).

The extension also shows exceptions that come from a worker in IPython's style (`wb_magic.tracebacks`).
Everything a worker sends is shown as text only: the workers table is the only HTML, and every value in it is
escaped.
"""

from __future__ import annotations

import asyncio
import atexit
import html
import importlib.machinery
import keyword
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from worker_kernel.loader import is_file_spec, module_name_for, resolve_module, split_target

from . import debug
from .broker import WorkerBroker
from .launcher import runtime_dir
from .tracebacks import short_path, show_exception
from .worker import WorkerInfo

__all__ = ["WorkerBrokerMagics", "get_broker", "load_ipython_extension", "unload_ipython_extension"]

CELLS_PREFIX = "wb_magic-cells-"  # the per-session folder of %%wb_module cells: <tmp>/wb_magic-cells-<pid>-<random>/

# -- the session's broker -------------------------------------------------------------------------------------

_broker: WorkerBroker | None = None
_broker_lock = threading.Lock()


def get_broker() -> WorkerBroker:
    """The broker of this IPython session (of this process), started on first use and closed at exit."""
    global _broker
    with _broker_lock:
        if _broker is None or _broker.closed:
            _broker = WorkerBroker()
        return _broker


def _close_broker() -> None:
    global _broker
    with _broker_lock:
        broker, _broker = _broker, None
    if broker is not None:
        broker.close()


atexit.register(_close_broker)  # a kernel that shuts down exits the process: its workers go with it


def _remove_orphaned_cells() -> None:
    """Delete the cell folders of sessions that were killed before they could clean up: ours (same user), named
    after a process that no longer runs."""
    root = Path(tempfile.gettempdir())
    for folder in root.glob(f"{CELLS_PREFIX}*-*"):
        pid = folder.name[len(CELLS_PREFIX) :].partition("-")[0]
        try:
            info = folder.lstat()
            if not pid.isdigit() or info.st_uid != os.getuid() or not folder.is_dir() or folder.is_symlink():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # gone meanwhile, or a process we may not signal: it lives
            continue


# -- loading the extension ------------------------------------------------------------------------------------

_loaded: dict[int, tuple[WorkerBrokerMagics, tuple[Any, Any]]] = {}


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext wb_magic``: register the magics and the display of remote exceptions."""
    if id(ipython) in _loaded:
        return
    magics = WorkerBrokerMagics(ipython)
    ipython.register_magics(magics)
    previous = (ipython.custom_exceptions, getattr(ipython, "CustomTB", None))
    ipython.set_custom_exc((Exception, KeyboardInterrupt, asyncio.CancelledError), _show_exception)
    ipython.events.register("pre_run_cell", _wake_loop_on_interrupt)
    _loaded[id(ipython)] = (magics, previous)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext wb_magic``: remove the magics, shut the workers down, delete the cell modules."""
    entry = _loaded.pop(id(ipython), None)
    if entry is None:
        return
    magics, (exceptions, handler) = entry
    ipython.custom_exceptions = exceptions
    if handler is not None:
        ipython.CustomTB = handler
    try:
        ipython.events.unregister("pre_run_cell", _wake_loop_on_interrupt)
    except ValueError:
        pass
    registry = ipython.magics_manager.magics
    for kind, names in magics.magics.items():
        for name in names:
            registry[kind].pop(name, None)
    magics.discard_cells()
    _close_broker()


def _wake_loop_on_interrupt(info: Any = None) -> None:
    """Make the interrupt button stop a cell that awaits (an async remote call, say) at once.

    For a cell with a top-level ``await``, ipykernel installs a SIGINT handler that schedules the cancellation
    of the cell with ``call_soon`` from inside the signal handler, which does not wake the event loop: the
    cancellation waits until something else wakes it, which for a remote call is when the call ends on its
    own. Wrapping that handler to wake the loop makes the cell's task cancelled at once; the broker then
    interrupts the remote call. The wrapper lives only as long as ipykernel's handler (it restores its own
    predecessor after the cell).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler) or handler is signal.default_int_handler or getattr(handler, "_wb_wakes", False):
        return

    def wake_then_handle(signum: int, frame: Any) -> None:
        handler(signum, frame)
        try:
            asyncio.get_running_loop().call_soon_threadsafe(_nothing)  # writes to the loop's wake-up pipe
        except RuntimeError:
            pass

    wake_then_handle._wb_wakes = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, wake_then_handle)


def _nothing() -> None:
    pass


# -- the magics -----------------------------------------------------------------------------------------------


@magics_class
class WorkerBrokerMagics(Magics):
    """The ``%wb_*`` magics. ``%load_ext wb_magic`` registers them (and the remote traceback display)."""

    def __init__(self, shell: Any = None) -> None:
        super().__init__(shell)
        self._cells: dict[str, Path] = {}  # %%wb_module name -> its file
        self._cells_dir: Path | None = None

    # %wb_proxy

    @magic_arguments()
    @argument("-s", "--segregation-id", dest="segregation_id", default=None, help="a worker of its own for this id")
    @argument("-f", "--function", default=None, help="a proxy of this one function instead of the module")
    @argument("-a", "--async", dest="asynchronous", action="store_true", help="calls return awaitables")
    @argument("-t", "--timeout", type=float, default=None, help="seconds a call may take (CallTimeout after)")
    @argument("target", help="a %%%%wb_module name, a .py path, a file:// URL or a dotted module name")
    @argument("name", nargs="?", help="the variable to bind (default: the module's basename)")
    @line_magic
    def wb_proxy(self, line: str) -> None:
        """Bind a proxy of a worker module (or of one of its functions) in the user namespace."""
        args = parse_argstring(self.wb_proxy, line)
        module, label = self._module(args.target)
        name = args.name or module_name_for(module).rpartition(".")[2]
        _check_identifier(name, "NAME")
        if args.timeout is not None and not args.timeout > 0:
            raise UsageError(f"the timeout must be a positive number of seconds, not {args.timeout}")
        target = split_target((module, args.segregation_id))
        broker = get_broker()
        functions = broker.describe(target)[1]["functions"]  # starts the worker: errors show now
        proxy: Any
        if args.function is not None:
            _check_identifier(args.function, "FUNCTION")
            if args.function not in functions:
                known = ", ".join(sorted(functions)) or "none"
                raise UsageError(f"{label} has no function {args.function!r} (it has: {known})")
            proxy = broker.worker_fn_proxy(target, args.function, asynchronous=args.asynchronous, timeout=args.timeout)
        else:
            proxy = broker.worker_proxy(target, asynchronous=args.asynchronous, timeout=args.timeout)
        self.shell.user_ns[name] = proxy  # type: ignore[union-attr]

    # %wb_reload

    @magic_arguments()
    @argument("--restart", action="store_true", help="start fresh worker processes instead of re-importing")
    @argument("target", help="a %%%%wb_module name, a .py path, a file:// URL or a dotted module name")
    @line_magic
    def wb_reload(self, line: str) -> None:
        """Re-import a module from its source in every worker of it; proxies made before see the new code."""
        args = parse_argstring(self.wb_reload, line)
        module, label = self._module(args.target)
        count = self._reload(module, restart=args.restart)
        verb = "restarted" if args.restart else "reloaded"
        if count:
            print(f"{verb} {label} in {_plural(count, 'worker')}")
        else:
            print(f"{verb} {label} (no worker was running it; started one)")

    def _reload(self, module: str, *, restart: bool = False) -> int:
        """Re-execute ``module`` in each of its live workers (or one new worker); the count of live ones."""
        broker = get_broker()
        ids = [w.segregation_id for w in broker.workers if w.module == module]
        if restart:
            for segregation_id in ids:
                broker.remove_worker((module, segregation_id))
        buster = f"wb-magic-{time.time_ns()}"  # new every time: the module runs again even if it did not change
        for segregation_id in ids or [None]:
            broker.worker_import((module, segregation_id), cache_buster=buster)
        return len(ids)

    # %wb_workers

    @line_magic
    def wb_workers(self, line: str) -> None:
        """Show the live workers: HTML in a notebook, plain text in a terminal."""
        if line.strip():
            raise UsageError(f"%wb_workers takes no arguments, not {line.strip()!r}")
        from IPython.display import display

        display(WorkerTable.of(get_broker().workers, self._label))

    # %%wb_module

    @magic_arguments()
    @argument("name", help="the module's name, for %%%%wb_proxy NAME")
    @cell_magic
    def wb_module(self, line: str, cell: str) -> None:
        """The cell's source becomes a worker module called NAME; running the cell again reloads it."""
        args = parse_argstring(self.wb_module, line)
        name = args.name
        _check_identifier(name, "NAME")
        label = f"%%wb_module {name}"
        _check_syntax(cell, label)
        path = self._cells_folder() / f"{name}.py"
        defined = name in self._cells
        path.write_text(cell, encoding="utf-8")
        self._cells[name] = path
        if defined:
            count = self._reload(str(path))
            if count:
                print(f"reloaded {label} in {_plural(count, 'worker')}")

    def _cells_folder(self) -> Path:
        if self._cells_dir is None:
            _remove_orphaned_cells()
            self._cells_dir = Path(tempfile.mkdtemp(prefix=f"{CELLS_PREFIX}{os.getpid()}-"))
            tempdirs = getattr(self.shell, "tempdirs", None)
            if isinstance(tempdirs, list):
                tempdirs.append(self._cells_dir)  # IPython deletes it when the session ends
        return self._cells_dir

    def discard_cells(self) -> None:
        """Forget the ``%%wb_module`` cells and delete their folder."""
        if self._cells_dir is not None:
            shutil.rmtree(self._cells_dir, ignore_errors=True)
            tempdirs = getattr(self.shell, "tempdirs", None)
            if isinstance(tempdirs, list) and self._cells_dir in tempdirs:
                tempdirs.remove(self._cells_dir)
        self._cells.clear()
        self._cells_dir = None

    # %wb_shutdown

    @cell_magic
    def wb_trace(self, line: str, cell: str) -> None:
        """Run the cell with every call to a worker traced, then draw the trace: a waterfall of the host's calls,
        each worker's spans, the broker's routing between workers, errors in red."""
        from IPython.display import display

        try:
            from .telemetry import record_trace
        except ImportError:
            raise UsageError("%%wb_trace needs OpenTelemetry: pip install 'wb-magic[otel]' opentelemetry-sdk") from None
        from .waterfall import Waterfall

        shell = self.shell
        assert shell is not None
        try:
            awaits = shell.should_run_async(cell, transformed_cell=shell.transform_cell(cell))
        except Exception:  # a syntax error: the cell itself reports it
            awaits = False
        if awaits:  # a nested cell cannot await on the loop that runs this one
            raise UsageError(
                "%%wb_trace cannot run a cell that awaits at top level; put the awaits in an async function and trace"
                " it with WorkerBrokerInstrumentor and a tracer provider (docs/telemetry.md)"
            )

        def run() -> BaseException | None:
            result = shell.run_cell(cell, store_history=False)
            return result.error_in_exec or result.error_before_exec

        try:
            spans = record_trace(run)
        except ImportError as exc:
            raise UsageError(str(exc)) from None
        display(Waterfall(spans))

    @magic_arguments()
    @argument("--all", dest="everything", action="store_true", help="shut down every worker")
    @argument("-s", "--segregation-id", dest="segregation_id", default=None, help="only the worker of this id")
    @argument("target", nargs="?", help="a %%%%wb_module name, a .py path, a file:// URL or a dotted module name")
    @line_magic
    def wb_shutdown(self, line: str) -> None:
        """Shut down the workers of a module (or ``--all``); the next call starts a fresh one."""
        args = parse_argstring(self.wb_shutdown, line)
        broker = get_broker()
        if args.everything:
            if args.target is not None or args.segregation_id is not None:
                raise UsageError("%wb_shutdown takes a TARGET or --all, not both")
            count = len(broker.workers)
            broker.terminate()
            print(f"shut down {_plural(count, 'worker')}")
            return
        if args.target is None:
            raise UsageError("%wb_shutdown needs a TARGET, or --all to shut down every worker")
        module, label = self._module(args.target, must_exist=False)
        ids = [w.segregation_id for w in broker.workers if w.module == module]
        if not ids:
            self._module(args.target)  # a target that names nothing is a UsageError, as in the other magics
        if args.segregation_id is not None:
            ids = [i for i in ids if i == args.segregation_id]
        count = sum(broker.remove_worker((module, i)) for i in ids)
        print(f"shut down {_plural(count, 'worker')} of {label}")

    # %wb_debug

    @line_magic
    def wb_debug(self, line: str) -> None:
        """``on``: log what the broker does and show its frames in tracebacks; ``off``: stop."""
        word = line.strip().lower()
        if word == "on":
            debug.enable()
        elif word == "off":
            debug.disable()
        elif word:
            raise UsageError(f"%wb_debug takes on or off, not {line.strip()!r}")
        print(f"wb_magic debug logging is {'on' if debug.enabled() else 'off'}")

    # targets

    def _module(self, spec: str, *, must_exist: bool = True) -> tuple[str, str]:
        """The canonical module of a TARGET, and how to name it to the user. Raises `UsageError`."""
        if spec in self._cells:
            return str(self._cells[spec]), f"%%wb_module {spec}"
        try:
            module = resolve_module(spec)
        except ValueError:
            raise UsageError(
                f"{spec!r} is not a %%wb_module name, a path to a .py file or a dotted module name"
            ) from None
        if not must_exist:
            return module, spec
        if is_file_spec(module):
            if not os.path.isfile(module):
                raise UsageError(f"no module file {spec!r} (looked for {module})")
            try:
                source = Path(module).read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read {spec!r}: {exc.strerror}") from None
            _check_syntax(source, spec)
        else:
            top = module.partition(".")[0]
            found = top in sys.builtin_module_names or importlib.machinery.PathFinder.find_spec(
                top, [os.getcwd(), *sys.path]
            )
            if not found:
                raise UsageError(f"no %%wb_module, file or module named {spec!r}")
        return module, spec

    def _label(self, module: str) -> str:
        """A module as the user would name it: its cell, its path relative to here, or its dotted name."""
        if self._cells_dir is not None and is_file_spec(module) and Path(module).parent == self._cells_dir:
            return f"%%wb_module {Path(module).stem}"
        return _short_path(module)


# -- helpers --------------------------------------------------------------------------------------------------


def _check_identifier(name: str, what: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"{what} must be a Python identifier, not {name!r}")


def _check_syntax(source: str | bytes, label: str) -> None:
    """Compile (never run) a module's source, so that a syntax error is one line naming the line."""
    try:
        compile(source, label, "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f", line {exc.lineno}" if exc.lineno else ""
        raise UsageError(f"syntax error in {label}{where}: {exc.msg}") from None
    except ValueError as exc:  # null bytes
        raise UsageError(f"{label} is not Python source: {exc}") from None


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _short_path(module: str) -> str:
    return short_path(module) if is_file_spec(module) else module


# -- the workers table ----------------------------------------------------------------------------------------

_COLUMNS = ("key", "module", "segregation id", "pid", "state", "calls", "last used", "memory", "connection file")
_NUMERIC = {"pid", "calls", "memory", "last used"}
MAX_KEY = 60  # characters of a worker key of a worker_key_supplier's making shown in the table


@dataclass(frozen=True)
class WorkerRow:
    key: str
    module: str
    segregation_id: str
    pid: str
    state: str
    calls: int
    last_used: str
    memory: str
    connection_file: str  # what ``jupyter console --existing`` takes to attach to the worker

    def cells(self) -> tuple[str, ...]:
        return (
            self.key, self.module, self.segregation_id, self.pid, self.state, str(self.calls), self.last_used,
            self.memory, self.connection_file,
        )  # fmt: skip


class WorkerTable:
    """The live workers, shown as an HTML table in a notebook and as aligned text in a terminal."""

    def __init__(self, rows: list[WorkerRow]) -> None:
        self.rows = rows

    @classmethod
    def of(cls, workers: list[WorkerInfo], label: Any = _short_path) -> WorkerTable:
        return cls([_row(info, label) for info in workers])

    def __iter__(self) -> Iterator[WorkerRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def text(self) -> str:
        if not self.rows:
            return "no live workers"
        table = [_COLUMNS, *(row.cells() for row in self.rows)]
        widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]
        lines = []
        for r in table:
            cells = [
                c.rjust(w) if name in _NUMERIC and r is not table[0] else c.ljust(w)
                for c, w, name in zip(r, widths, _COLUMNS, strict=True)
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def _repr_html_(self) -> str:
        if not self.rows:
            return "<p><em>no live workers</em></p>"
        # every cell says how it is aligned: JupyterLab's stylesheet right-aligns table cells that do not
        head = "".join(f'<th style="{_align(c)}">{html.escape(c)}</th>' for c in _COLUMNS)
        body = []
        for row in self.rows:
            tds = []
            for name, value in zip(_COLUMNS, row.cells(), strict=True):
                tds.append(f'<td class="wb-{name.replace(" ", "-")}" style="{_align(name)}">{html.escape(value)}</td>')
            body.append(f"<tr>{''.join(tds)}</tr>")
        return f'<table class="wb-workers"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _align(column: str) -> str:
    return "text-align: right" if column in _NUMERIC else "text-align: left"


def _row(info: WorkerInfo, label: Any) -> WorkerRow:
    key = info.key
    if isinstance(key, tuple) and key == (info.module, info.segregation_id):
        key_text = label(info.module) + (f" [{info.segregation_id}]" if info.segregation_id else "")
    else:
        key_text = repr(key)
        if len(key_text) > MAX_KEY:
            key_text = key_text[: MAX_KEY - 3] + "..."
    return WorkerRow(
        key=key_text,
        module=label(info.module),
        segregation_id=info.segregation_id or "",
        pid=str(info.pid) if info.pid else "",
        state=info.state,
        calls=info.calls,
        last_used=_age(info.last_used),
        memory=_memory(info.pid),
        connection_file=_connection_file(info.connection_file),
    )


MINUTE, HOUR = 60, 3600  # seconds


def _age(stamp: float) -> str:
    age = max(0.0, time.time() - stamp)
    if age < 1:
        return "just now"
    if age < 2 * MINUTE:
        return f"{age:.0f} s ago"
    if age < 2 * HOUR:
        return f"{age / MINUTE:.0f} min ago"
    return f"{age / HOUR:.0f} h ago"


def _connection_file(path: str | None) -> str:
    """A connection file as ``jupyter console --existing`` takes it: its name alone if it is in Jupyter's runtime
    folder (where the console looks), else its path."""
    if not path:
        return ""
    return os.path.basename(path) if os.path.dirname(path) == runtime_dir() else path


MIB = 1 << 20


def _memory(pid: int | None) -> str:
    if not pid:
        return ""
    try:
        import psutil

        rss = psutil.Process(pid).memory_info().rss
    except Exception:  # gone, or not ours to look at
        return ""
    return f"{rss / MIB:.1f} MiB"


def _show_exception(
    shell: Any, etype: type[BaseException], value: BaseException, tb: types.TracebackType | None, tb_offset: Any = None
) -> None:
    """The extension's exception handler (`tracebacks.show_exception`), with this session's cell folder."""
    entry = _loaded.get(id(shell))
    show_exception(shell, etype, value, tb, tb_offset, entry[0]._cells_dir if entry is not None else None)
