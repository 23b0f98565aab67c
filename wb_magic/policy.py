"""Who may make the broker act for them: the default rule for worker-to-worker calls.

Routing is a privilege. A worker-to-worker call asks the host to reach, and perhaps start, another worker; a
sandboxed worker that could name any target could have the host start a trusted worker of the standard library's
``subprocess`` and run what it likes. So by default:

- a trusted worker (a `WorkerSpec` without a sandbox) may call any target, as the seed's workers may;
- a sandboxed worker may call only a ``.py`` module *file* (never a dotted name, which the host would look up on its own
  ``sys.path``), only as its own segregation id (its own tenant), and only a target whose worker is sandboxed too
  and is no less confined than the caller: it grants none of ``net``, ``write``, ``env``, ``run``, ``ffi``, ``sys``
  beyond what the caller has, keeps every limit the caller has, at most as large, and is enforced as strictly.

A ``call_policy(source_module, source_segregation_id, module, segregation_id, function)`` given to the broker is
asked first: True allows the call, False refuses it, None leaves the decision to this rule. That is how a host
opts into the seed's pattern of an untrusted worker calling a trusted proxy (the example app's fetch proxy).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from worker_kernel.loader import is_file_spec

from .launcher import WorkerSpec

CallPolicy = Callable[[str, "str | None", str, "str | None", str], "bool | None"]

# the permission flags a target may not grant beyond its sandboxed caller (``read`` is not among them: every
# module reads its own file, and what a target may read is for its own code, not the caller's, to use)
GUARDED_PERMISSIONS = ("net", "write", "env", "run", "ffi", "sys")
LIMITS = ("memory_limit", "cpu_seconds", "file_size_limit")


def _grants_beyond(target: Any, caller: Any) -> bool:
    """Whether a permission value (False, True, or a tuple of items) grants something ``caller`` does not."""
    if target is False or target == ():
        return False
    if caller is True:
        return False
    if target is True or caller is False:
        return True
    return not set(target) <= set(caller)


def confinement_gap(caller: WorkerSpec, target: WorkerSpec) -> str | None:
    """Why ``target``'s worker would be less confined than ``caller``'s, or None if it is not."""
    if not target.sandboxed:
        return "its worker would run with the host's rights (its WorkerSpec has no sandbox)"
    mine, theirs = caller.permissions, target.permissions
    for name in GUARDED_PERMISSIONS:
        granted = getattr(theirs, name) if theirs is not None else False
        held = getattr(mine, name) if mine is not None else False
        if _grants_beyond(granted, held):
            return f"its worker would be granted {name}={granted!r}, beyond the caller's {name}={held!r}"
    for name in LIMITS:
        limit, bound = getattr(caller, name), getattr(target, name)
        if limit is not None and (bound is None or bound > limit):
            return f"its worker would run with {name}={bound!r}, looser than the caller's {name}={limit!r}"
    if caller.enforce == "strict" and target.enforce != "strict":
        return f"its worker would be enforced {target.enforce!r}, not 'strict' as the caller is"
    return None


def default_rule(
    caller: WorkerSpec,
    caller_segregation_id: str | None,
    module: str,
    segregation_id: str | None,
    target: Callable[[], WorkerSpec],
) -> str | None:
    """The rule a call from a worker with spec ``caller`` to ``(module, segregation_id)`` breaks, or None if it
    is allowed. ``target()`` gives the spec the target's worker runs (or would be launched) with."""
    if not caller.sandboxed:
        return None
    if not is_file_spec(module):
        return f"a sandboxed worker may call module files only, not the dotted name {module!r}"
    if not module.endswith(".py"):  # any other file would run as Python, and its errors quote its text
        return f"a sandboxed worker may call Python module files (.py) only, not {os.path.basename(module)!r}"
    if segregation_id != caller_segregation_id:
        return (
            f"a sandboxed worker may call other workers only as its own segregation id"
            f" ({caller_segregation_id!r}), not as {segregation_id!r}"
        )
    gap = confinement_gap(caller, target())
    if gap is not None:
        return f"a sandboxed worker may call only workers as confined as itself: {gap}"
    return None


# a traceback's frame line, also inside an exception group's box: '  File "/x.py", line 3, in f'
_FRAME = re.compile(r'^[ |+-]*File "(?P<path>[^"]*)", line \d+')
_SYNTAX_ERRORS = ("SyntaxError", "IndentationError", "TabError")


def readable_by(spec: WorkerSpec, modules: Iterable[str]) -> Callable[[str], bool]:
    """Whether a worker of ``spec`` hosting ``modules`` may read a file: its own modules, its ``read`` grants,
    and the interpreter's own libraries (which every worker reads to run)."""
    grants = spec.permissions.read if spec.permissions is not None else False
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if isinstance(grants, tuple):
        roots.update(os.path.realpath(p) for p in grants)
    own = {os.path.realpath(m) for m in modules if is_file_spec(m)}

    def readable(path: str) -> bool:
        if path.startswith("<") and path.endswith(">"):
            return True  # '<string>', '<frozen os>': there is no file to read
        real = os.path.realpath(path)
        if real in own:
            return True
        if grants is True:
            return not any(real == top or real.startswith(top + os.sep) for top in ("/proc", "/sys", "/dev"))
        return any(real == root or real.startswith(root + os.sep) for root in roots)

    return readable


def scrub_error(content: dict[str, Any], spec: WorkerSpec, modules: Iterable[str]) -> dict[str, Any]:
    """An error reply as a sandboxed caller may see it: frames of files it may not read keep their file, line
    and function, but lose their source lines, and a syntax error's offending text is dropped. (A traceback
    quoting a file it cannot read would let a worker read the file by having another worker import it.)"""
    readable = readable_by(spec, modules)
    out = dict(content)
    tb = content.get("traceback")
    if isinstance(tb, list):
        scrubbed, hiding = [], False
        for line in "".join(entry for entry in tb if isinstance(entry, str)).splitlines(keepends=True):
            frame = _FRAME.match(line)
            if frame is not None:
                hiding = not readable(frame.group("path"))
            elif hiding and line[:1] in (" ", "|", "\t"):
                continue  # a source line (or a caret line) of a file the caller may not read
            else:
                hiding = False
            scrubbed.append(line)
        out["traceback"] = scrubbed
    if content.get("ename") in _SYNTAX_ERRORS:
        out["eargs"] = None  # (message, (file, line, offset, text, ...)): the text is the file's own line
    return out
