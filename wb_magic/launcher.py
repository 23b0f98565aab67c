"""Launching worker kernels through jupyter_client, and the options a `worker_constructor` returns.

A worker is started by a `jupyter_client.KernelManager`, so its provisioner decides where it runs: the local
provisioner by default, or whatever a kernel spec names (``WorkerSpec(kernel_name=...)``), e.g. one of the
``gateway_provisioners`` for containers and remote hosts. We never call ``wait_for_ready``: ZeroMQ queues the
first request until the kernel has bound its sockets, so the first call is sent at once.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager

log = logging.getLogger("wb_magic")

DEFAULT_ARGV = (sys.executable, "-m", "worker_kernel", "-f", "{connection_file}")


@dataclass(frozen=True)
class WorkerSpec:
    """How to launch one worker: what a ``worker_constructor(module, segregation_id)`` returns.

    ``argv``: the command (``{connection_file}`` is filled in); default ``python -m worker_kernel``.
    ``kernel_name``: launch through an installed kernel spec instead (and so through its provisioner).
    ``env``: variables set on top of the host's environment (``None`` removes one); ``cwd``: the working
    directory.
    ``hooks``: ``"module:name"``, an object with ``initial_call``/``before_call``/``after_call``.
    """

    argv: tuple[str, ...] | None = None
    kernel_name: str | None = None
    env: dict[str, str | None] = field(default_factory=dict)
    cwd: str | None = None
    hooks: str | None = None

    def command(self) -> list[str]:
        argv = list(self.argv or DEFAULT_ARGV)
        if self.hooks:
            argv += ["--hooks", self.hooks]
        return argv


class _OneSpec(KernelSpecManager):
    """Hands jupyter_client the kernel spec of one worker, without a search of the kernel spec folders."""

    def __init__(self, spec: KernelSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._spec = spec

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return self._spec


def launch(spec: WorkerSpec) -> KernelManager:
    """Start a worker kernel; returns its manager with the kernel process running (perhaps not yet bound)."""
    if spec.kernel_name:
        manager = KernelManager(kernel_name=spec.kernel_name)
    else:
        kernel_spec = KernelSpec(
            argv=spec.command(),
            display_name="wb-magic worker",
            language="python",
            interrupt_mode="message",
            metadata={"debugger": False},
        )
        manager = KernelManager(kernel_name="wb-worker", kernel_spec_manager=_OneSpec(kernel_spec))
    env = {**os.environ, **spec.env}
    env = {name: value for name, value in env.items() if value is not None}
    kwargs: dict[str, Any] = {"env": env}
    if spec.cwd:
        kwargs["cwd"] = spec.cwd
    manager.start_kernel(**kwargs)
    return manager


def process_id(manager: KernelManager) -> int | None:
    provisioner = manager.provisioner
    pid = getattr(provisioner, "pid", None)
    return int(pid) if pid else None
