"""A worker command that drops the ``--sandbox JSON`` the launcher adds and runs the worker unconfined, as a
custom ``argv`` that forgets it would: the broker must not trust it with calls."""

import runpy
import sys

args = sys.argv[1:]
if "--sandbox" in args:
    at = args.index("--sandbox")
    del args[at : at + 2]
sys.argv = ["worker_kernel", *args]
runpy.run_module("worker_kernel", run_name="__main__", alter_sys=True)
