"""Kernel specs that place workers on other hosts: ``WorkerSpec(kernel_name="wb-remote")``.

``python -m wb_magic.kernelspec --remote-hosts HOST[,HOST...] [--python PATH] [--user | --prefix DIR]`` installs
``wb-remote``: gateway_provisioners' DistributedProvisioner starts ``python -m worker_kernel.launcher`` over SSH
on one of the hosts (round robin), and the launcher answers with the worker's encrypted connection information.
docs/remote.md has the set-up, and a kernel spec for the container provisioners.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

LAUNCHER_ARGS = (
    "--kernel-id", "{kernel_id}",
    "--response-address", "{response_address}",
    "--public-key", "{public_key}",
    "--port-range", "{port_range}",
    "--transport-encryption", "{transport_encryption}",
)  # fmt: skip


def remote_kernel_spec(
    remote_hosts: list[str],
    python: str = sys.executable,
    *,
    broker_timeout: float | None = None,
    launch_timeout: int = 30,
    display_name: str = "wb-magic worker (remote hosts)",
) -> dict[str, Any]:
    """The ``kernel.json`` of a kernel spec that starts workers on ``remote_hosts`` through DistributedProvisioner.

    ``python`` is the interpreter on the remote hosts (with wb-magic and its ``remote`` extra installed);
    ``broker_timeout``: seconds after which a worker whose broker went silent exits (the launcher's default
    otherwise). The command is run by a remote shell without quoting, so paths must not contain spaces.
    """
    if not remote_hosts:
        raise ValueError("a remote kernel spec needs at least one host")
    if any(char.isspace() for char in python):
        raise ValueError(f"the remote python path must not contain spaces (it is run unquoted): {python!r}")
    argv = [python, "-m", "worker_kernel.launcher", *LAUNCHER_ARGS]
    if broker_timeout is not None:
        argv += ["--broker-timeout", str(broker_timeout)]
    return {
        "argv": argv,
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {
            "debugger": False,
            "supported_encryption": ["curve"],
            "kernel_provisioner": {
                "provisioner_name": "distributed-provisioner",
                "config": {"remote_hosts": list(remote_hosts), "launch_timeout": launch_timeout},
            },
        },
    }


def install(spec: dict[str, Any], name: str = "wb-remote", *, user: bool = False, prefix: str | None = None) -> str:
    """Install a kernel spec under ``name``; returns the folder it went to."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "kernel.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=1)
        return KernelSpecManager().install_kernel_spec(folder, name, user=user, prefix=prefix)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wb_magic.kernelspec", description=__doc__.split("\n\n")[0])
    parser.add_argument("--remote-hosts", required=True, help="comma-separated hosts that workers may run on")
    parser.add_argument("--python", default=sys.executable, help="the interpreter on the remote hosts")
    parser.add_argument("--name", default="wb-remote", help="the kernel spec's name (WorkerSpec(kernel_name=...))")
    parser.add_argument("--broker-timeout", type=float, help="seconds a worker outlives a silent broker")
    parser.add_argument("--user", action="store_true", help="install for this user only")
    parser.add_argument("--prefix", help="install under this prefix (a virtual environment, say)")
    options = parser.parse_args(argv)
    hosts = [host.strip() for host in options.remote_hosts.split(",") if host.strip()]
    spec = remote_kernel_spec(hosts, options.python, broker_timeout=options.broker_timeout)
    print(install(spec, options.name, user=options.user, prefix=options.prefix))


if __name__ == "__main__":
    main()
