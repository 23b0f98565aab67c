"""The sandbox of an untrusted worker: its `Permissions`, enforced by the Linux kernel before any target import.

A sandboxed worker starts as ``python -m worker_kernel -f CONNECTION --sandbox JSON`` and confines itself in
two images of the same process, which is where this package splits:

- `plan` (pure): the Landlock rules for the worker's permissions, and what this machine cannot enforce of them;
  `seccomp` (pure): the seccomp filter's rules and BPF program. Both are unit-tested without privileges.
- `confiner` (stage one): probes the machine, refuses to start if it cannot enforce the plan (exit code
  `REFUSED_EXIT_CODE`), binds the five listening sockets, confines the process (no new privileges, no
  capabilities, a mount namespace with ``noexec`` folders, Landlock, resource limits, the seccomp filter) and
  ``execve``s a fresh interpreter. The only module that imports ctypes.
- `confined` (stage two): the fresh image, which inherits all of it irrevocably and never loaded ctypes: it
  installs the audit hook (clear `PermissionError`\\ s naming the permission) and adopts the listening sockets.

Landlock does not cover everything (``listen()`` binds a port without ``bind()``; TCP Fast Open connects
without ``connect()``; UDP; pathname UNIX sockets; mode, owner and time changes; SysV IPC), hence the seccomp
filter; seccomp cannot see paths, hence Landlock. See docs/security.md for the full map.

This ``__init__`` imports nothing: each image imports only its own stage. The names below are looked up in
their module on first use, for callers that import them from the package.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "landlock_abi": "confiner",
    "seccomp_problem": "confiner",
    "install_seccomp": "confiner",
    "confine_and_exec": "confiner",
    "confined_command": "confiner",
    "probe_machine": "confiner",
    "Confinement": "confined",
    "AuditHook": "confined",
    "Plan": "plan",
    "Machine": "plan",
    "Rule": "plan",
    "SandboxError": "plan",
    "NR": "seccomp",
    "seccomp_rules": "seccomp",
    "seccomp_program": "seccomp",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
