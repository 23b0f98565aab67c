"""The seccomp filter of a sandboxed worker, as data: its rules and their classic BPF program. Pure (no system
call is made here; the confiner installs the program), so the suite checks it without privileges.

Seccomp sees system calls and their integer arguments, never paths (Landlock's job): it denies what Landlock
does not cover (``listen()``, TCP Fast Open, UDP, process creation, metadata changes, ...), see docs/security.md.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from ..permissions import Permissions
from .plan import SandboxError

# -- constants (linux/seccomp.h, linux/audit.h, linux/sched.h, sys/socket.h, sys/mman.h, asm/unistd_64.h) --------

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

CLONE_THREAD = 0x00010000
CLONE_NAMESPACES = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
SOCK_STREAM, SOCK_TYPE_MASK = 1, 0xF
IPPROTO_TCP = 6
MSG_FASTOPEN = 0x20000000
PROT_WRITE, PROT_EXEC, MAP_ANONYMOUS = 2, 4, 0x20
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
SOL_SOCKET, SO_SNDBUF, SO_RCVBUF, F_SETPIPE_SZ = 1, 7, 8, 1031
SIGXCPU = 24

# x86_64 system call numbers (the tests check them against asm/unistd_64.h where it is installed)
NR = {
    "read": 0, "write": 1, "poll": 7, "mmap": 9, "mprotect": 10, "rt_sigaction": 13, "ioctl": 16,
    "sched_yield": 24, "shmget": 29, "shmat": 30, "shmctl": 31, "getpid": 39, "socket": 41, "connect": 42,
    "sendto": 44, "recvfrom": 45, "sendmsg": 46, "recvmsg": 47, "bind": 49, "listen": 50, "socketpair": 53,
    "setsockopt": 54, "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "kill": 62, "semget": 64, "semop": 65,
    "semctl": 66, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "fcntl": 72, "chmod": 90, "fchmod": 91,
    "chown": 92, "fchown": 93, "lchown": 94, "sysinfo": 99, "ptrace": 101, "syslog": 103, "rt_sigqueueinfo": 129,
    "utime": 132,
    "uselib": 134, "personality": 135, "setpriority": 141, "sched_setparam": 142, "sched_setscheduler": 144,
    "vhangup": 153, "modify_ldt": 154, "pivot_root": 155, "adjtimex": 159, "chroot": 161, "acct": 163,
    "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
    "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175,
    "delete_module": 176, "quotactl": 179, "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190,
    "removexattr": 197, "lremovexattr": 198, "fremovexattr": 199, "tkill": 200, "futex": 202,
    "sched_setaffinity": 203, "lookup_dcookie": 212, "semtimedop": 220, "clock_settime": 227, "epoll_wait": 232,
    "tgkill": 234, "utimes": 235, "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242,
    "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245, "kexec_load": 246, "add_key": 248,
    "request_key": 249, "keyctl": 250, "ioprio_set": 251, "migrate_pages": 256, "fchownat": 260,
    "futimesat": 261, "fchmodat": 268, "ppoll": 271, "unshare": 272, "get_robust_list": 274, "move_pages": 279,
    "utimensat": 280, "epoll_pwait": 281, "rt_tgsigqueueinfo": 297, "perf_event_open": 298,
    "fanotify_init": 300, "prlimit64": 302, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "clock_adjtime": 305, "sendmmsg": 307, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
    "kcmp": 312, "finit_module": 313, "sched_setattr": 314, "memfd_create": 319, "kexec_file_load": 320,
    "bpf": 321, "execveat": 322, "userfaultfd": 323, "pkey_mprotect": 329, "pidfd_send_signal": 424,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435,
    "pidfd_getfd": 438, "process_madvise": 440, "mount_setattr": 442, "quotactl_fd": 443,
    "process_mrelease": 448, "fchmodat2": 452, "setxattrat": 463, "removexattrat": 466, "file_setattr": 469,
}  # fmt: skip

# Never allowed in a sandboxed worker, whatever its permissions: other processes' memory and tracing, the
# machine's configuration, mounts and namespaces, kernel modules, keyrings, io_uring (its operations bypass
# seccomp), SysV and POSIX IPC (channels to other workers and to the host that Landlock does not see).
ALWAYS_DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "get_robust_list",
    "process_madvise", "process_mrelease", "migrate_pages", "move_pages", "perf_event_open", "bpf",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key", "request_key",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "iopl", "ioperm", "quotactl",
    "quotactl_fd", "syslog", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname",
    "setdomainname", "vhangup", "name_to_handle_at", "open_by_handle_at", "fanotify_init", "lookup_dcookie",
    "personality", "uselib", "modify_ldt", "shmget", "shmat", "shmctl", "semget", "semop", "semctl",
    "semtimedop", "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
)  # fmt: skip
# A file's mode, owner, times and extended attributes: Landlock does not govern them, and the worker runs as the
# owner of files it must not change (chmod needs nothing more), so they need write=True.
METADATA_CHANGES = (
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "setxattr",
    "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr", "setxattrat", "removexattrat",
    "file_setattr", "utime", "utimes", "utimensat", "futimesat",
)  # fmt: skip
# The calls a serving worker makes most are allowed first, so that the filter costs them a handful of steps.
HOT = ("read", "write", "futex", "poll", "ppoll", "epoll_wait", "epoll_pwait", "recvfrom", "recvmsg", "getpid",
       "sched_yield")  # fmt: skip


_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA
_AND = 0x54  # BPF_ALU | BPF_AND | BPF_K
_RET = 0x06  # BPF_RET | BPF_K

EPERM = SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS = SECCOMP_RET_ERRNO | errno.ENOSYS
NO_EFFECT = SECCOMP_RET_ERRNO  # errno 0: the call returns success and does nothing
FULL = 0xFFFFFFFF


@dataclass(frozen=True)
class Check:
    """``(word & mask) == value``, where word is the low (or high) 32 bits of argument ``arg``."""

    arg: int
    value: int
    mask: int = FULL
    high: bool = False

    @property
    def offset(self) -> int:  # in struct seccomp_data: nr, arch, instruction_pointer, then args[6]
        return 16 + 8 * self.arg + (4 if self.high else 0)


@dataclass(frozen=True)
class SeccompRule:
    syscall: str
    action: int
    checks: tuple[Check, ...] = ()


def seccomp_rules(p: Permissions, abi: int, pid: int, exec_path: int = 0, guard_cpu: bool = False) -> list[SeccompRule]:
    """The filter's rules in order: for a system call, the first of its rules whose checks all hold decides;
    one no rule decides is allowed. The low 32 bits of an argument are all the kernel reads of the ones checked
    here (ints, clone flags, protections, message flags, ioctl commands)."""
    deny, allow = EPERM, SECCOMP_RET_ALLOW
    rules: list[SeccompRule] = []
    if p.net is not True:  # first: ZeroMQ sends with sendto, and an allowed one need not pass every rule below
        for name, arg in (("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3)):
            rules.append(SeccompRule(name, deny, (Check(arg, MSG_FASTOPEN, MSG_FASTOPEN),)))
            rules.append(SeccompRule(name, allow))
    rules += [SeccompRule(name, deny) for name in ALWAYS_DENIED]
    rules.append(SeccompRule("clone3", ENOSYS))  # its flags are in memory a filter cannot read: glibc falls back
    # processes
    if p.run:
        rules.append(SeccompRule("clone", allow, (Check(0, 0, CLONE_NAMESPACES),)))
    else:
        rules.append(SeccompRule("clone", allow, (Check(0, CLONE_THREAD, CLONE_THREAD | CLONE_NAMESPACES),)))
        rules.append(SeccompRule("execve", allow, (Check(0, exec_path & FULL), Check(0, exec_path >> 32, high=True))))
        rules += [SeccompRule(name, deny) for name in ("fork", "vfork", "execve", "execveat")]
    rules.append(SeccompRule("clone", deny))
    # sockets: connected AF_UNIX stream pairs (asyncio's self-pipe) always; socket() as net says; never listen() or
    # bind() without net=True (Landlock does not see the port listen() picks). Without net=True, no TCP Fast Open
    # (a connect inside sendto, sendmsg or sendmmsg, which Landlock does not see) on any socket: the listening
    # sockets a worker inherits and the connections ZeroMQ accepts on them can be freed for a new connection
    # (shutdown, connect(AF_UNSPEC)) without socket(); and without net, no connect() at all (where Landlock
    # cannot filter TCP, ABI < 4, nothing else would stop one)
    rules.append(SeccompRule("socketpair", allow, (Check(0, AF_UNIX), Check(1, SOCK_STREAM, SOCK_TYPE_MASK))))
    rules.append(SeccompRule("socketpair", deny))
    if p.net is True:
        if not p.sys:
            rules.append(SeccompRule("socket", deny, (Check(0, AF_UNIX),)))
    else:
        if p.net:  # plain TCP only: Landlock's port rules cover no other protocol (MPTCP, SCTP) a stream can be
            for family in (AF_INET, AF_INET6):
                for protocol in (0, IPPROTO_TCP):
                    stream = (Check(0, family), Check(1, SOCK_STREAM, SOCK_TYPE_MASK), Check(2, protocol))
                    rules.append(SeccompRule("socket", allow, stream))
        else:
            rules.append(SeccompRule("connect", deny))
        rules += [SeccompRule(name, deny) for name in ("socket", "listen", "bind")]
    # kernel memory outside the address space: sockets and pipes keep the system's default buffers (a larger
    # one is what a socket or pipe can queue: up to net.core.wmem_max, fs.pipe-max-size, megabytes each, where
    # RLIMIT_NOFILE bounds only their number). Setting a socket's buffer succeeds without effect: libzmq
    # aborts on a refusal
    rules += [SeccompRule("setsockopt", NO_EFFECT, (Check(1, SOL_SOCKET), Check(2, o))) for o in (SO_SNDBUF, SO_RCVBUF)]
    rules.append(SeccompRule("fcntl", deny, (Check(1, F_SETPIPE_SZ),)))
    # other processes: limits and priorities of this process only; scheduling of this process, and calls about
    # another thread or process succeed without effect (a filter cannot tell this process's threads from
    # others, and ZeroMQ's threads set their own scheduling, taking a refusal for a fatal error)
    rules += [SeccompRule("prlimit64", allow, (Check(0, who),)) for who in (0, pid)]
    rules.append(SeccompRule("prlimit64", deny))
    for name in ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr"):
        rules += [SeccompRule(name, allow, (Check(0, who),)) for who in (0, pid)]
        rules.append(SeccompRule(name, NO_EFFECT))
    for name, which in (("setpriority", 0), ("ioprio_set", 1)):
        rules += [SeccompRule(name, allow, (Check(0, which), Check(1, who))) for who in (0, pid)]
        rules.append(SeccompRule(name, deny))
    if abi < 6:  # no Landlock signal scoping: signals to this process only (so, not to its children)
        rules.append(SeccompRule("kill", allow, (Check(0, pid),)))
        rules += [SeccompRule(n, allow, (Check(0, pid),)) for n in ("tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")]
        rules += [SeccompRule(n, deny) for n in
                  ("kill", "tgkill", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal")]  # fmt: skip
    # the terminal the worker may share with the host: no typing into its shell
    rules += [SeccompRule("ioctl", deny, (Check(1, cmd),)) for cmd in (TIOCSTI, TIOCLINUX)]
    if p.write is not True:
        rules += [SeccompRule(name, deny) for name in METADATA_CHANGES]
    if not p.ffi:  # no executable memory but files mapped as they are: not anonymous, not writable, never later
        rules.append(
            SeccompRule("mmap", deny, (Check(2, PROT_EXEC, PROT_EXEC), Check(3, MAP_ANONYMOUS, MAP_ANONYMOUS)))
        )
        rules.append(SeccompRule("mmap", deny, (Check(2, PROT_EXEC | PROT_WRITE, PROT_EXEC | PROT_WRITE),)))
        rules.append(SeccompRule("mprotect", deny, (Check(2, PROT_EXEC, PROT_EXEC),)))
        rules.append(SeccompRule("pkey_mprotect", deny, (Check(2, PROT_EXEC, PROT_EXEC),)))
        rules.append(SeccompRule("memfd_create", deny))
    if not p.sys:
        rules.append(SeccompRule("sysinfo", deny))
    if guard_cpu:  # the CPU limit's SIGXCPU must end the worker: no handler for it, no ignoring it
        rules.append(SeccompRule("rt_sigaction", allow, (Check(0, SIGXCPU), Check(1, 0), Check(1, 0, high=True))))
        rules.append(SeccompRule("rt_sigaction", deny, (Check(0, SIGXCPU),)))
    return rules


def seccomp_program(p: Permissions, abi: int, pid: int, exec_path: int = 0, guard_cpu: bool = False) -> bytes:
    """The filter as classic BPF (struct sock_filter[]). Another architecture, or the x32 ABI: killed."""
    prog: list[tuple[int, int, int, int]] = [
        (_LD_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 1, 0, AUDIT_ARCH_X86_64),
        (_RET, 0, 0, SECCOMP_RET_KILL_PROCESS),
        (_LD_ABS, 0, 0, 0),  # seccomp_data.nr
        (_JGE, 0, 1, X32_SYSCALL_BIT),
        (_RET, 0, 0, SECCOMP_RET_KILL_PROCESS),
    ]
    hot = [NR[name] for name in HOT]
    prog += [(_JEQ, len(hot) - i, 0, number) for i, number in enumerate(hot)]
    prog += [(_JA, 0, 0, 1), (_RET, 0, 0, SECCOMP_RET_ALLOW)]
    holds_nr = True  # the accumulator holds seccomp_data.nr: after the hot calls, and after a rule with no checks
    for rule in seccomp_rules(p, abi, pid, exec_path, guard_cpu):
        block: list[tuple[int, int, int, int]] = [] if holds_nr else [(_LD_ABS, 0, 0, 0)]
        block.append((_JEQ, 0, -1, NR[rule.syscall]))
        holds_nr = not rule.checks  # a failed check leaves an argument in the accumulator
        for check in rule.checks:
            block.append((_LD_ABS, 0, 0, check.offset))
            if check.mask != FULL:
                block.append((_AND, 0, 0, check.mask))
            block.append((_JEQ, 0, -1, check.value))
        block.append((_RET, 0, 0, rule.action))
        # a failed test jumps past the block's end, to the next rule
        prog += [(c, jt, len(block) - i - 1 if jf == -1 else jf, k) for i, (c, jt, jf, k) in enumerate(block)]
    prog.append((_RET, 0, 0, SECCOMP_RET_ALLOW))
    if len(prog) > 4096:
        raise SandboxError("the seccomp filter is too long")
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)
