"""A sandboxed worker that tries to make the host hold more memory than one message may take (issue 11, finding 6).

Each attack writes what a hostile worker can write: on its Jupyter sockets, which the broker never connects to for
a sandboxed worker, and on its lane, whose reader checks every length before it allocates anything.
"""

import os
import struct

import zmq

from worker_kernel import kernel

MiB = 1 << 20
HEADER = struct.Struct("<BBHIQ")
REPLY = 4


def hello(name):
    return f"Hello {name}"


def zmq_multipart(frames=24, size=60 * MiB):
    """The red team's attack: one multipart message of ``frames`` frames of ``size`` bytes, on every socket that
    can send to a peer (one block, sent ``frames`` times: the worker's own memory limit is 512 MB)."""
    block = b"x" * size
    running = kernel.running
    sent = 0
    for sock in (running.iopub.socket, running.shell, running.stdin):
        for ident in (running._last_idents or [b""]) if sock.socket_type == zmq.ROUTER else [None]:
            parts = ([ident] if ident is not None else []) + [block] * frames
            try:
                sock.send_multipart(parts, flags=zmq.DONTWAIT, copy=False)
                sent += 1
            except zmq.ZMQError:
                pass
    return sent


def lane_announce(buffers=24, size=60 * MiB):
    """A lane frame that announces ``buffers`` buffers of ``size`` bytes, then starts sending them."""
    fd = kernel.running._lane_fd
    header = HEADER.pack(REPLY, 0, buffers, 2, 1) + struct.pack(f"<{buffers}Q", *[size] * buffers)
    os.write(fd, header + b"{}")
    block = b"x" * MiB
    for _ in range(size // MiB):
        os.write(fd, block)
    return "not ended"


def lane_within_cap(frames=24, size=60 * MiB):
    """``frames`` frames of ``size`` bytes each, within the cap, as replies to calls that do not exist; then a
    normal return."""
    fd = kernel.running._lane_fd
    os.set_blocking(fd, True)
    block = memoryview(b"x" * size)
    for i in range(frames):
        os.write(fd, HEADER.pack(REPLY, 0, 1, 2, 10**6 + i) + struct.pack("<Q", size) + b"{}")
        at = 0
        while at < size:
            at += os.write(fd, block[at:])
    os.set_blocking(fd, False)
    return "sent"


def close_lane_and_wait():
    """Close the lane and go on running: the call must fail at once, not at its timeout."""
    os.close(kernel.running._lane_fd)
    import time

    while True:
        time.sleep(1)
