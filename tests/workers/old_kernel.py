"""Run a worker kernel as on an older kernel, for real: ``old_kernel.py FEATURES -f CONNECTION_FILE`` installs a
seccomp filter under which the system calls of the FEATURES (``landlock``, ``seccomp``, comma-separated) fail with
ENOSYS, as on a kernel built without them, then runs the worker, which (with all it execs) inherits the filter."""

import runpy
import struct
import sys

from worker_kernel.sandbox.confiner import install_seccomp

CALLS = {"landlock": (444, 445, 446), "seccomp": (317,)}
ENOSYS = 0x00050000 | 38
ALLOW = 0x7FFF0000

missing = [number for feature in sys.argv.pop(1).split(",") for number in CALLS[feature]]
program = [(0x20, 0, 0, 0)]  # load the system call number
for number in missing:
    program += [(0x15, 0, 1, number), (0x06, 0, 0, ENOSYS)]
program.append((0x06, 0, 0, ALLOW))
install_seccomp(b"".join(struct.pack("=HBBI", *ins) for ins in program))  # the last seccomp() it may make
sys.argv = ["worker_kernel", *sys.argv[1:]]
runpy.run_module("worker_kernel", run_name="__main__", alter_sys=True)
