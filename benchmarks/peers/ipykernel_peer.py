"""ipykernel through jupyter_client: an ``execute_request`` whose reply carries the value (user_expressions).

Also how long an ipykernel takes from launch to its first reply, and how much memory an idle one holds.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

from ..harness import ROOT, subprocess_env
from . import Peer


def launch() -> tuple[Any, Any]:
    """Start an ipykernel (the standard ``python3`` kernel of this interpreter) and a blocking client."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    # its warning about TCP without encryption would only clutter the report's console output
    manager.start_kernel(env=subprocess_env(), cwd=str(ROOT), stderr=subprocess.DEVNULL)
    client = manager.blocking_client()
    client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    return manager, client


def reply_to(client: Any, msg_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        msg = client.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg["content"]


def first_reply() -> tuple[float, Any, Any]:
    """Seconds from launching a kernel to its first execute_reply; returns the manager and client too."""
    start = time.perf_counter()
    manager, client = launch()
    content = reply_to(client, client.execute("1", store_history=False))
    elapsed = time.perf_counter() - start
    if content.get("status") != "ok":
        raise RuntimeError(f"ipykernel answered {content}")
    return elapsed, manager, client


def stop(manager: Any, client: Any) -> None:
    client.stop_channels()
    manager.shutdown_kernel(now=True)


class IPyKernel(Peer):
    name = "ipykernel"
    label = "ipykernel execute_request"
    requires = ("ipykernel", "jupyter_client")

    def start(self) -> None:
        self.manager, self.client = launch()
        content = reply_to(self.client, self.client.execute("from benchmarks.work import hello", store_history=False))
        if content.get("status") != "ok":
            raise RuntimeError(f"ipykernel could not import the work: {content}")

    @property
    def pid(self) -> int:
        return int(self.manager.provisioner.pid)

    def call(self, name: str = "World") -> Any:
        msg_id = self.client.execute(f"r = hello({name!r})", store_history=False, user_expressions={"r": "r"})
        content = reply_to(self.client, msg_id)
        return eval(content["user_expressions"]["r"]["data"]["text/plain"])  # a str repr we produced ourselves

    def close(self) -> None:
        if hasattr(self, "client"):
            stop(self.manager, self.client)
