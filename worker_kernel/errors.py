"""The exceptions of wb-magic, shared by the broker and the workers.

They live in `worker_kernel` because code inside a worker meets them too (a worker-to-worker call can time out
or find its target dead); `wb_magic.errors` re-exports them for the host::

    WorkerBrokerError              root of everything wb-magic raises on its own account
    ├── RemoteError                the worker raised an exception of a type the caller cannot rebuild
    ├── NoSuchFunction             the module has no such exported function (also an `AttributeError`)
    ├── WorkerDied                 the worker ended, stopped answering or was removed while a call was pending
    ├── WorkerStartError           a worker could not be launched (or ``max_workers`` already run)
    └── CallTimeout                the call took longer than its timeout (also a `TimeoutError`)

An exception of a built-in type raised inside a worker (``ValueError``, ``KeyError``, ...), or of a type
registered with ``register_marshaller`` on both sides, is raised in the caller as that same type, with the
remote traceback in ``remote_traceback`` and in its notes (on Python 3.10, which has no notes, as its
``__cause__``, a `RemoteTraceback`, as `concurrent.futures` does). A denial by the sandbox arrives as
`PermissionError`; a module that cannot be found as `ModuleNotFoundError`; a value the codec cannot carry as
`TypeError`.
"""

from __future__ import annotations


class WorkerBrokerError(Exception):
    """Root of the exceptions that wb-magic raises on its own account."""


class RemoteError(WorkerBrokerError):
    """A worker raised an exception whose type cannot be rebuilt in the caller.

    ``type_name`` is the remote type's qualified name (``module.Class``), ``message`` its ``str()``, and
    ``remote_traceback`` the formatted traceback from the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "", remote_args: tuple = ()) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.remote_args = remote_args  # the exception's args, decoded by the safe codec (empty if they could not be)


class NoSuchFunction(WorkerBrokerError, AttributeError):
    """The target module has no exported function of that name (or the name is private or merely imported)."""


class WorkerDied(WorkerBrokerError):
    """The worker that was running (or about to run) the call ended; the next call starts a fresh one."""


class WorkerStartError(WorkerBrokerError):
    """A worker could not be launched (its command failed, or ``max_workers`` workers already run)."""


class CallTimeout(WorkerBrokerError, TimeoutError):
    """The call did not finish within its timeout. The worker's call is interrupted."""


class RemoteTraceback(Exception):
    """The worker's traceback, chained as the ``__cause__`` of a rebuilt exception where Python has no
    ``add_note`` (3.10), so that an uncaught remote error still shows where it was raised."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'
