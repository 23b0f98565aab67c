"""What a sandboxed worker may do: Deno's permission names, shared by the host and the worker.

``Permissions`` is plain data. The host puts it in a `WorkerSpec`; the launcher hands it to the worker as JSON
(``--sandbox``); the worker enforces it with the kernel's own mechanisms before it imports any target module
(`worker_kernel.sandbox`, which only a sandboxed worker imports). See docs/security.md for what enforces each
permission and what does not.

This module imports only the standard library's lightest parts: the host imports it, and so does every worker.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Union

PathGrant = Union[bool, tuple[str, ...]]

ENFORCE_MODES = ("strict", "best-effort")

# A worker that refuses to start because its sandbox cannot be enforced exits with this code (EX_CONFIG) after
# writing its reason, one line, to stderr and to `refusal_file(connection_file)`.
REFUSED_EXIT_CODE = 78


def refusal_file(connection_file: str) -> str:
    """Where a worker that refused to start leaves its reason for the host (beside its connection file)."""
    return connection_file + ".refused"


def _paths(value: Any, name: str) -> PathGrant:
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"Permissions({name}=...) takes True, False or a list of paths, not {value!r}") from None
    out = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"Permissions({name}=...): {item!r} is not a path")
        out.append(os.path.abspath(os.path.expanduser(os.fspath(item))))
    return tuple(dict.fromkeys(out))


def _names(value: Any) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        value = [value]
    items = tuple(value)
    for item in items:
        if not isinstance(item, str) or not item or "=" in item:
            raise TypeError(f"Permissions(env=...): {item!r} is not an environment variable name")
    return tuple(dict.fromkeys(items))


def _ports(value: Any) -> bool | tuple[int, ...]:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        value = [value]
    items = tuple(value)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 < item < 65536:
            raise TypeError(f"Permissions(net=...) takes True, False or a list of TCP ports, not {item!r}")
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class Permissions:
    """A worker's rights, with Deno's names. ``Permissions()`` denies everything but what the worker itself
    needs to run (its interpreter, its libraries, its own module); `Permissions.all()` allows everything.

    ``read`` / ``write``: True, False or paths (a directory grants everything beneath it). ``net``: True, False,
    or TCP ports the worker may connect to (on any host). ``env``: True (the host's whole environment), False,
    or the names of the host's variables the worker gets. ``run``: start processes (``fork`` included).
    ``ffi``: load native code of its own (``ctypes``, ``cffi``). ``sys``: see the system (``/proc``, ``/sys``,
    system information, local daemons' sockets).
    """

    net: bool | tuple[int, ...] = False
    read: PathGrant = False
    write: PathGrant = False
    env: bool | tuple[str, ...] = False
    run: bool = False
    ffi: bool = False
    sys: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "net", _ports(self.net))
        object.__setattr__(self, "read", _paths(self.read, "read"))
        object.__setattr__(self, "write", _paths(self.write, "write"))
        object.__setattr__(self, "env", _names(self.env))
        for name in ("run", "ffi", "sys"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Permissions({name}=...) is True or False")

    @classmethod
    def all(cls) -> Permissions:
        """Every permission: the worker keeps only what the sandbox always takes (see docs/security.md)."""
        return cls(net=True, read=True, write=True, env=True, run=True, ffi=True, sys=True)

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            return list(value) if isinstance(value, tuple) else value

        return {name: plain(getattr(self, name)) for name in ("net", "read", "write", "env", "run", "ffi", "sys")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Permissions:
        known = ("net", "read", "write", "env", "run", "ffi", "sys")
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown permissions {sorted(unknown)}")
        return cls(**{name: data[name] for name in known if name in data})


@dataclass(frozen=True)
class SandboxConfig:
    """Everything the worker needs to confine itself; travels as the JSON of ``--sandbox``.

    ``permissions`` None means the host's rights (only the limits apply). ``module`` is the worker's target
    module when the host knows it: it may be read. ``protected`` are folders that must stay out of reach
    whatever is granted (the Jupyter runtime folder, with every worker's connection file and key).
    """

    permissions: Permissions | None = None
    memory_limit: int | None = None
    cpu_seconds: float | None = None
    file_size_limit: int | None = None
    enforce: str = "strict"
    module: str | None = None
    protected: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.enforce not in ENFORCE_MODES:
            raise ValueError(f"enforce must be one of {ENFORCE_MODES}, not {self.enforce!r}")
        for name in ("memory_limit", "file_size_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} is a positive number of bytes, not {value!r}")
        if self.cpu_seconds is not None and (
            isinstance(self.cpu_seconds, bool)
            or not isinstance(self.cpu_seconds, (int, float))
            or self.cpu_seconds <= 0
        ):
            raise ValueError(f"cpu_seconds is a positive number, not {self.cpu_seconds!r}")
        object.__setattr__(self, "protected", tuple(self.protected))

    def dumps(self) -> str:
        data = {
            "permissions": self.permissions.to_json() if self.permissions is not None else None,
            "memory_limit": self.memory_limit,
            "cpu_seconds": self.cpu_seconds,
            "file_size_limit": self.file_size_limit,
            "enforce": self.enforce,
            "module": self.module,
            "protected": list(self.protected),
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> SandboxConfig:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the sandbox configuration is a JSON object")
        permissions = data.get("permissions")
        return cls(
            permissions=Permissions.from_json(permissions) if permissions is not None else None,
            memory_limit=data.get("memory_limit"),
            cpu_seconds=data.get("cpu_seconds"),
            file_size_limit=data.get("file_size_limit"),
            enforce=data.get("enforce", "strict"),
            module=data.get("module"),
            protected=tuple(data.get("protected") or ()),
        )
