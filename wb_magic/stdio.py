"""A sandboxed worker's stdin, stdout and stderr: never the host's own descriptors.

A worker that inherited the host's fds 0-2 could read the user's keystrokes from a terminal and turn its echo
off, write escape sequences to it (the window title, the clipboard through OSC 52), read the host's output back
through ``/proc/self/fd/1``, or truncate the host's log file and write lines that look like the host's. So a
sandboxed worker starts with ``/dev/null`` as its stdin and one pipe as its stdout and stderr. The host reads the
pipe on the broker's pump and writes what arrives to its own ``sys.stderr``, as text: line by line, each line
labelled with the worker, terminal control characters removed (`safe_text.printable`), lines cut at `MAX_LINE`
characters, and at most `BURST` bytes at once and `RATE` bytes a second after that (the rest is dropped, and one
line says so). A crash's traceback still reaches the user: what is left in the pipe is read before the worker's
calls fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

from worker_kernel.permissions import Permissions

from .pump import Pump
from .safe_text import printable

MAX_LINE = 2000  # characters of one line shown; a longer line is cut, and the cut marked
BURST = 64 * 1024  # bytes shown at once ...
RATE = 16 * 1024  # ... and a second after that, from one worker
DROPPED = f"[wb-magic: output dropped: more than {RATE} bytes a second]".encode()
READ_SIZE = 64 * 1024  # read from one worker's pipe in one turn of the pump
CLOSING_READS = 16  # at most, when the worker ends: a pipe holds 64 KiB unless its owner enlarges it


class WorkerOutput:
    """The pipe a sandboxed worker's stdout and stderr write to, and the host's reading of it.

    `child_stdio` gives the keyword arguments for the launch (``stdin``, ``stdout``, ``stderr``); `launched`
    closes the host's copy of the writing end; `watch` has a pump read the pipe as it fills; `close` shows what
    is left and closes it (on the pump, once the worker has ended or is being ended)."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()  # both close-on-exec: in the worker, only the copies made 1 and 2 live on
        self._fd: int | None = read_fd
        self._write_fd: int | None = write_fd
        os.set_blocking(self._fd, False)
        self._pending = b""  # the start of a line whose end has not arrived
        self._budget = float(BURST)
        self._checked = time.monotonic()
        self._dropping = False
        self._pump: Pump | None = None
        self._describe: Callable[[], str] = lambda: "a sandboxed worker"

    def child_stdio(self) -> dict[str, int]:
        """``stdin``, ``stdout`` and ``stderr`` for the launch, which Popen makes the worker's fds 0-2."""
        if self._write_fd is None:
            raise ValueError("this worker output was launched already")
        return {"stdin": subprocess.DEVNULL, "stdout": self._write_fd, "stderr": self._write_fd}

    def launched(self) -> None:
        """After the launch (or its failure): the worker holds the writing end; the host must not, or the pipe
        would never reach its end."""
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None

    def watch(self, pump: Pump, describe: Callable[[], str]) -> None:
        """Read the pipe on ``pump`` whenever it is readable. ``describe()`` names the worker in each line."""
        self._describe = describe
        if self._fd is not None:
            self._pump = pump
            pump.register(self._fd, self._on_readable)

    def close(self) -> None:
        """Show what the worker left in the pipe (what fits in the rate: a worker still alive may write on, so
        at most `CLOSING_READS` reads), then close it."""
        self.launched()
        for _ in range(CLOSING_READS):
            if not self._read():
                break
        self._end()

    def _on_readable(self) -> None:
        self._read()

    def _read(self) -> bool:
        """One read; at the end of the pipe, the last partial line is shown and the pipe closed. Whether more
        may follow."""
        if self._fd is None:
            return False
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._end()
            return False
        self._show(data)
        return True

    def _end(self) -> None:
        if self._pending:
            self._show(b"\n")
        if self._fd is not None:
            if self._pump is not None:
                self._pump.unregister(self._fd)
            os.close(self._fd)
            self._fd = None

    def _show(self, data: bytes) -> None:
        shown = self._within_rate(data)
        lines = (self._pending + shown).split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > 4 * MAX_LINE or (self._pending and len(shown) < len(data)):
            lines.append(self._pending)  # a line with no end in sight, or cut by the rate: show its start now
            self._pending = b""
        if len(shown) < len(data) and not self._dropping:
            self._dropping = True
            lines.append(DROPPED)
        if lines:
            self._write(lines)

    def _within_rate(self, data: bytes) -> bytes:
        """What of ``data`` the rate lets through (a leaky bucket of `BURST` bytes, refilled at `RATE`)."""
        moment = time.monotonic()
        self._budget = min(float(BURST), self._budget + (moment - self._checked) * RATE)
        self._checked = moment
        shown = data[: int(self._budget)]
        self._budget -= len(shown)
        if len(shown) == len(data):
            self._dropping = False
        return shown

    def _write(self, lines: list[bytes]) -> None:
        label = printable(self._describe()).replace("\n", " ")  # one line, whatever the file is called
        out = []
        for raw in lines:
            # the label the host adds counts against the rate too: else a flood of empty lines would come out
            # many times larger than it went in
            if self._budget < len(label) + 3:
                if not self._dropping or lines[-1].startswith(DROPPED):  # a note once, when dropping begins
                    self._dropping = True
                    out.append(f"[{label}] {DROPPED.decode()}\n")
                break
            self._budget -= len(label) + 3
            line = printable(raw.decode("utf-8", "replace"))
            if len(line) > MAX_LINE:
                line = line[:MAX_LINE] + " [wb-magic: line cut]"
            out.append(f"[{label}] {line}\n")
        try:
            stream = sys.stderr
            stream.write("".join(out))
            stream.flush()
        except Exception:  # a closed or broken stderr: the worker's output has nowhere to go
            pass


def output_for(permissions: Permissions | None) -> WorkerOutput | None:
    """The pipes of a worker launched with ``permissions``: a sandboxed worker's own, and None for a trusted
    worker (``permissions`` None), which shares the host's stdout and stderr as any child process does."""
    return WorkerOutput() if permissions is not None else None
