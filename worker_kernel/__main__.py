"""``python -m worker_kernel -f CONNECTION_FILE [--hooks MODULE:NAME]``: start a worker kernel."""

from __future__ import annotations

import argparse
import json
import logging
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker_kernel", description="a wb-magic worker kernel")
    parser.add_argument("-f", "--connection-file", required=True, help="the Jupyter connection file")
    parser.add_argument(
        "--hooks",
        help="MODULE[:NAME]: an object with initial_call / before_call / after_call, run around every call",
    )
    options = parser.parse_args(argv)
    if os.environ.get("WB_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s worker %(process)d %(name)s: %(message)s")
    with open(options.connection_file, encoding="utf-8") as f:
        connection = json.load(f)

    from .kernel import WorkerKernel

    hooks = None
    if options.hooks:
        from .loader import load_module, resolve_module

        spec, _, name = options.hooks.partition(":")
        module = load_module(resolve_module(spec))
        hooks = getattr(module, name) if name else module
    kernel = WorkerKernel(connection, hooks=hooks)
    kernel.start()
    kernel.run()


if __name__ == "__main__":
    main()
