"""Launching worker kernels through jupyter_client, and the options a `worker_constructor` returns.

A worker is started by a `jupyter_client.KernelManager`, so its provisioner decides where it runs: the local
provisioner by default, or whatever a kernel spec names (``WorkerSpec(kernel_name=...)``), e.g. one of the
``gateway_provisioners`` for containers and remote hosts. We never call ``wait_for_ready``: ZeroMQ queues the
first request until the kernel has bound its sockets, so the first call is sent at once.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager

from worker_kernel import lane as lanes
from worker_kernel.permissions import Permissions, SandboxConfig
from worker_kernel.transport import curve_keys, is_loopback

from .provisioned import ProvisionedKernel
from .stdio import WorkerOutput

log = logging.getLogger("wb_magic")

DEFAULT_ARGV = (sys.executable, "-m", "worker_kernel", "-f", "{connection_file}")
LANE_BY_DEFAULT = True  # what ``WorkerSpec(lane=None)`` means for a worker of the default command
# what a sandboxed worker keeps of the host's environment without env=True: nothing secret, what Python needs
SANDBOX_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "PYTHONHASHSEED", "WB_DEBUG")


@dataclass(frozen=True)
class WorkerSpec:
    """How to launch one worker: what a ``worker_constructor(module, segregation_id)`` returns.

    ``argv``: the command (``{connection_file}`` is filled in); default ``python -m worker_kernel``.
    ``kernel_name``: launch through an installed kernel spec instead (and so through its provisioner).
    ``env``: variables set on top of the host's environment (``None`` removes one); ``cwd``: the working
    directory.
    ``hooks``: ``"module:name"``, an object with ``initial_call``/``before_call``/``after_call``.

    The sandbox (docs/security.md): ``permissions`` (a `Permissions`; None, the default, runs the worker with
    the host's rights), ``memory_limit`` (bytes of address space), ``cpu_seconds`` (CPU time over the worker's
    life), ``file_size_limit`` (bytes per file written). ``enforce="strict"`` makes a worker whose sandbox this
    machine cannot enforce refuse to start; ``"best-effort"`` runs it with a loud warning of what is not.
    A sandboxed worker gets a scrubbed environment: only what `Permissions.env` names, plus ``env``.

    ``lane``: whether calls travel on the worker's lane (a private socketpair, docs/architecture.md) rather than
    on its Jupyter channels. ``None`` (the default) means yes for the default command and for sandboxed workers,
    no for a kernel spec or another ``argv`` (which may not speak the lane). A sandboxed worker always has its
    lane: ``lane=False`` with a sandbox is refused (ZeroMQ would let such a worker make the host assemble a
    message of any size, docs/security.md).
    """

    argv: tuple[str, ...] | None = None
    kernel_name: str | None = None
    env: dict[str, str | None] = field(default_factory=dict)
    cwd: str | None = None
    hooks: str | None = None
    permissions: Permissions | None = None
    memory_limit: int | None = None
    cpu_seconds: float | None = None
    file_size_limit: int | None = None
    enforce: str = "strict"
    lane: bool | None = None

    def __post_init__(self) -> None:
        if self.lane is False and self.sandboxed:
            raise ValueError(
                "a sandboxed worker needs its lane: lane=False would let it make the host assemble ZeroMQ messages"
                " of any size (docs/security.md)"
            )
        if self.lane and self.kernel_name:
            raise ValueError("a worker launched through a kernel_name has no lane: use lane=None or False")

    @property
    def uses_lane(self) -> bool:
        """Whether the broker launches this worker with a lane (see ``lane``)."""
        if self.kernel_name:
            return False
        if self.lane is not None:
            return self.lane
        return self.sandboxed or (self.argv is None and LANE_BY_DEFAULT)

    @functools.cached_property  # asked on every routed call; a frozen spec's answer never changes
    def sandboxed(self) -> bool:
        limits = (self.memory_limit, self.cpu_seconds, self.file_size_limit)
        return self.permissions is not None or any(limit is not None for limit in limits)

    def sandbox(self, module: str | None = None) -> SandboxConfig | None:
        """The worker's `SandboxConfig`, or None when it runs with the host's rights and no limits."""
        if not self.sandboxed:
            return None
        runtime = runtime_dir()  # every worker's connection file and key
        if self.permissions is not None:
            for name in ("read", "write"):
                granted = getattr(self.permissions, name)
                for path in granted if isinstance(granted, tuple) else ():
                    real = os.path.realpath(path)
                    if real == runtime or real.startswith(runtime + os.sep):
                        raise ValueError(f"Permissions({name}=...) must not reach into {runtime}: {path}")
        return SandboxConfig(
            permissions=self.permissions,
            memory_limit=self.memory_limit,
            cpu_seconds=self.cpu_seconds,
            file_size_limit=self.file_size_limit,
            enforce=self.enforce,
            module=module if module and os.path.isabs(module) else None,
            protected=(runtime,),
        )

    def command(self, module: str | None = None) -> list[str]:
        argv = list(self.argv or DEFAULT_ARGV)
        if self.hooks:
            argv += ["--hooks", self.hooks]
        sandbox = self.sandbox(module)
        if sandbox is not None:
            argv += ["--sandbox", sandbox.dumps()]
        return argv

    def environment(self) -> dict[str, str]:
        """The worker's environment: the host's, or for a sandboxed worker only what its permissions let
        through; then ``env`` on top (``None`` removes a variable)."""
        allowed = self.permissions.env if self.permissions is not None else True
        if allowed is True:
            env = dict(os.environ)
        else:
            names = [*SANDBOX_ENV, *(allowed or ()), *(["PATH"] if self.permissions and self.permissions.run else [])]
            env = {name: os.environ[name] for name in names if name in os.environ}
        if "PYTHONPATH" in env:
            env["PYTHONPATH"] = without_auto_instrumentation(env["PYTHONPATH"])
        for name, value in self.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env


def without_auto_instrumentation(python_path: str) -> str:
    """``PYTHONPATH`` less the folder that ``opentelemetry-instrument`` puts first on it, whose
    ``sitecustomize`` would make every worker import OpenTelemetry and instrument itself at start-up. A worker
    records the spans of traced calls on its own (`worker_kernel.tracing`) and imports nothing of OpenTelemetry."""
    marker = os.path.join("opentelemetry", "instrumentation", "auto_instrumentation")
    kept = [entry for entry in python_path.split(os.pathsep) if not os.path.normpath(entry).endswith(marker)]
    return os.pathsep.join(kept)


def runtime_dir() -> str:
    """Jupyter's runtime folder (private to the user, 0700), where workers' connection files are written."""
    from jupyter_core.paths import jupyter_runtime_dir

    path = os.path.realpath(jupyter_runtime_dir())
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
    return path


# a worker's connection file names the process that launched it: wb-worker-<host pid>-<random>.json
CONNECTION_FILE = re.compile(r"wb-worker-(?P<host>[0-9]+)-[0-9a-f]+\.json(?:\.refused)?")


def connection_file_name() -> str:
    """A new worker's connection file name (in `runtime_dir`), naming this process as its host."""
    return f"wb-worker-{os.getpid()}-{os.urandom(8).hex()}.json"


def remove_orphaned_connection_files() -> list[str]:
    """Delete the connection files (and refusal notes) of workers whose host process no longer runs.

    A host that is killed cannot clean up after its workers; they exit when it does (they watch it), and this
    removes what they left. Jupyter's server does the same with its ``jpserver-<pid>.json`` files. Returns the
    names removed.
    """
    folder = runtime_dir()
    removed = []
    for name in os.listdir(folder):
        match = CONNECTION_FILE.fullmatch(name)
        if match is None or _runs(int(match["host"])):
            continue
        try:
            os.unlink(os.path.join(folder, name))
        except FileNotFoundError:  # another host swept it first
            continue
        removed.append(name)
    return removed


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


class _OneSpec(KernelSpecManager):
    """Hands jupyter_client the kernel spec of one worker, without a search of the kernel spec folders."""

    def __init__(self, spec: KernelSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._spec = spec

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return self._spec


def launch(
    spec: WorkerSpec,
    module: str | None = None,
    output: WorkerOutput | None = None,
    lane: tuple[int, int] | None = None,
    spin: float = 0.0,
) -> KernelManager | ProvisionedKernel:
    """Start a worker kernel; returns its manager with the kernel process running (perhaps not yet bound).
    ``module`` is the worker's target, which a sandboxed worker may read; ``output``, the pipes that take the
    place of the host's stdin, stdout and stderr (a sandboxed worker's, `wb_magic.stdio`); ``lane``, the worker's
    ends of its lane and control pipe (`links.LaneLink.child_fds`), which it inherits: their numbers go in its
    environment. The caller closes its copies after the launch."""
    if spec.kernel_name:
        if spec.sandboxed:  # fail closed: a kernel spec's command (a remote launcher, say) would not confine it
            raise ValueError(
                "a sandboxed WorkerSpec cannot be started through a kernel spec "
                f"(kernel_name={spec.kernel_name!r}): wb-magic confines a worker with its own command on this "
                "host (argv), and a kernel spec's launcher, on this host or another, would run it unconfined"
            )
        return _provisioned(spec)
    kernel_spec = KernelSpec(
        argv=spec.command(module),
        display_name="wb-magic worker",
        language="python",
        interrupt_mode="message",
        metadata={"debugger": False},
    )
    manager = KernelManager(kernel_name="wb-worker", kernel_spec_manager=_OneSpec(kernel_spec))
    # every worker's connection file (and so its key) goes in the private runtime folder that sandboxed workers
    # can never reach, not in the temporary folder where jupyter_client would put it
    remove_orphaned_connection_files()
    manager.connection_file = os.path.join(runtime_dir(), connection_file_name())
    manager.cache_ports = False  # the ports below, not jupyter_client's (from the ephemeral range)
    ports = listening_ports(manager.ip, 5)
    manager.shell_port, manager.iopub_port, manager.stdin_port, manager.control_port, manager.hb_port = ports
    kwargs: dict[str, Any] = {"env": spec.environment()}
    if spec.cwd:
        kwargs["cwd"] = spec.cwd
    if output is not None:
        kwargs.update(output.child_stdio())  # jupyter_client hands them to the provisioner, and it to Popen
    if lane is not None:  # the local provisioner hands pass_fds to Popen, which keeps the descriptors' numbers
        kwargs["env"][lanes.ENV] = f"{lane[0]},{lane[1]}"
        if spec.sandboxed:  # so that it fails a call whose JSON its broker would refuse, rather than be ended
            kwargs["env"][lanes.MAX_JSON_ENV] = str(lanes.SANDBOXED_MAX_JSON)
        kwargs["pass_fds"] = lane
        kwargs["env"][lanes.SPIN_ENV] = str(round(spin * 1e6))
    try:
        manager.start_kernel(**kwargs)
    finally:
        if output is not None:
            output.launched()
    return manager


def listening_ports(ip: str, count: int) -> list[int]:
    """``count`` free TCP ports for a worker to listen on, from the range below the kernel's ephemeral ports.

    jupyter_client takes free ports from the ephemeral range (it binds port 0), closes them, and the worker
    binds them some 100 ms later. Meanwhile any outgoing connection on the machine may get one of them as its
    source port (the broker's own reconnects to workers that are still starting make many), and the worker
    then fails with "Address already in use". Ports below the ephemeral range are never handed out that way.
    """
    low = _ephemeral_low()
    chosen: list[int] = []
    held = []
    try:
        while len(chosen) < count:
            port = random.randint(max(1024, low - 12000), low - 1)
            with _handed_out_lock:  # never the same port to two workers of this process (as jupyter_client's cache)
                if port in _handed_out:
                    continue
                _handed_out[port] = None
                while len(_handed_out) > HANDED_OUT_KEPT:
                    del _handed_out[next(iter(_handed_out))]
            sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((ip, port))
            except OSError:
                sock.close()
                continue
            held.append(sock)  # held until all are chosen, so that none is chosen twice
            chosen.append(port)
    finally:
        for sock in held:
            sock.close()
    return chosen


HANDED_OUT_KEPT = 4096  # ports remembered as handed out, oldest forgotten first
_handed_out: dict[int, None] = {}
_handed_out_lock = threading.Lock()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return max(2048, int(f.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _provisioned(spec: WorkerSpec) -> ProvisionedKernel:
    """A worker started through its kernel spec's provisioner (on the provisioners' own thread)."""
    assert spec.kernel_name is not None
    kernel = ProvisionedKernel(spec.kernel_name)
    kernel.connection_file = os.path.join(runtime_dir(), f"wb-worker-{os.urandom(8).hex()}.json")
    kwargs: dict[str, Any] = {"env": spec.environment()}
    if spec.cwd:
        kwargs["cwd"] = spec.cwd
    kernel.start(**kwargs)
    info = kernel.get_connection_info()
    if not is_loopback(info) and curve_keys(info) is None:  # fail closed: never talk to a worker in the clear
        kernel.shutdown_kernel(now=True)
        raise PermissionError(
            f"kernel spec {spec.kernel_name!r} started a worker at {info.get('ip')} without CurveZMQ keys: "
            "refusing to send calls over the network in the clear"
        )
    return kernel


def process_id(manager: KernelManager | ProvisionedKernel) -> int | None:
    """The worker's process id on this host, or None (a kernel elsewhere, or not started by a process)."""
    if isinstance(manager, ProvisionedKernel):
        return manager.pid
    provisioner = manager.provisioner
    pid = getattr(provisioner, "pid", None)
    return int(pid) if pid else None
