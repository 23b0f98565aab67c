"""``/proc/<pid>/status``, read one way: what the sandbox asks of its own process (capabilities) and what the
broker asks of a sandboxed worker's (``NoNewPrivs``, ``Seccomp``) before it trusts it to be confined."""

from __future__ import annotations


def read_status(pid: int | str = "self") -> dict[str, str]:
    """The fields of ``/proc/<pid>/status`` (``"NoNewPrivs": "1"``, ``"CapEff": "0000000000000000"``...), their
    values stripped; empty if the file cannot be read (no such process, or not ours to look at)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if colon:
            fields[name] = value.strip()
    return fields


def is_confined(status: dict[str, str]) -> bool:
    """Whether a process runs with no-new-privileges and a seccomp filter, as the sandbox leaves a worker."""
    return status.get("NoNewPrivs") == "1" and status.get("Seccomp") == "2"


def has_capability(status: dict[str, str], capability: int) -> bool:
    """Whether ``capability`` (a ``CAP_*`` number) is in the process's effective set."""
    try:
        return bool(int(status.get("CapEff", "0"), 16) >> capability & 1)
    except ValueError:
        return False
