"""``python -m worker_kernel -f CONNECTION_FILE [--hooks MODULE:NAME] [--sandbox JSON]``: start a worker kernel.

With ``--sandbox``, the process confines itself and re-executes as a confined worker (see `worker_kernel.sandbox`);
``--confined FD`` marks that second image, which reads what it needs from the descriptor the confiner left.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker_kernel", description="a wb-magic worker kernel")
    parser.add_argument("-f", "--connection-file", required=True, help="the Jupyter connection file")
    parser.add_argument(
        "--hooks",
        help="MODULE[:NAME]: an object with initial_call / before_call / after_call, run around every call",
    )
    parser.add_argument("--sandbox", metavar="JSON", help="confine the worker first (a wb-magic SandboxConfig)")
    parser.add_argument("--confined", type=int, metavar="FD", help=argparse.SUPPRESS)
    parser.add_argument(
        "--allow-plaintext",
        action="store_true",
        help="listen on a network address without CurveZMQ keys (refused by default)",
    )
    parser.add_argument(
        "--broker-timeout",
        type=float,
        metavar="SECONDS",
        help="exit when no heartbeat came from the broker for this long (for workers on other hosts)",
    )
    options = parser.parse_args(argv)
    if os.environ.get("WB_DEBUG"):
        from .debugging import enable_debugging

        enable_debugging(True)
    if options.sandbox is not None:  # re-executes confined, or exits with the reason it cannot
        from .sandbox.confiner import confine_and_exec, confined_command

        command = confined_command(options.connection_file, options.hooks) + _transport_args(options)
        confine_and_exec(options.sandbox, options.connection_file, command)
    confinement = None
    if options.confined is not None:
        from .sandbox.confined import Confinement

        confinement = Confinement(options.confined)
        confinement.install()  # before anything of the worker's is imported
        connection = confinement.connection
    else:
        with open(options.connection_file, encoding="utf-8") as f:
            connection = json.load(f)

    from .kernel import WorkerKernel

    hooks = None
    if options.hooks:
        from .loader import load_module, resolve_module

        spec, _, name = options.hooks.partition(":")
        module = load_module(resolve_module(spec))
        hooks = getattr(module, name) if name else module
    try:
        kernel = WorkerKernel(
            connection,
            hooks=hooks,
            allow_plaintext=options.allow_plaintext,
            broker_timeout=options.broker_timeout,
            connection_file=None if confinement is not None else options.connection_file,
        )
    except ValueError as exc:  # a refused transport, an unsupported signature scheme: say why, exit non-zero
        sys.exit(f"wb-magic worker: {exc}")
    if confinement is not None:
        confinement.adopt(kernel)
    kernel.start()
    kernel.run()


def _transport_args(options: argparse.Namespace) -> list[str]:
    """The transport options the confined image is started with again."""
    args = ["--allow-plaintext"] if options.allow_plaintext else []
    if options.broker_timeout is not None:
        args += ["--broker-timeout", str(options.broker_timeout)]
    return args


if __name__ == "__main__":
    main()
