"""Run a worker kernel on a kernel without Landlock, for real: a seccomp filter makes the three Landlock system
calls fail with ENOSYS, as on a kernel built without it, and the worker (and what it execs) inherits it."""

import runpy
import struct
import sys

from worker_kernel.sandbox import install_seccomp

LANDLOCK_CALLS = (444, 445, 446)
ENOSYS = 0x00050000 | 38
ALLOW = 0x7FFF0000

program = [(0x20, 0, 0, 0)]  # load the system call number
for number in LANDLOCK_CALLS:
    program += [(0x15, 0, 1, number), (0x06, 0, 0, ENOSYS)]
program.append((0x06, 0, 0, ALLOW))
install_seccomp(b"".join(struct.pack("=HBBI", *ins) for ins in program))
sys.argv = ["worker_kernel", *sys.argv[1:]]
runpy.run_module("worker_kernel", run_name="__main__", alter_sys=True)
