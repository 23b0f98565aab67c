"""A worker that writes raw bytes on its own lane: how a hostile worker speaks to the broker there."""

import os

from worker_kernel import kernel


def hello(name):
    return f"Hello {name}"


def send_raw(data: bytes, close: bool = True):
    """Write ``data`` on the lane, then (by default) close it: whatever the bytes say, the call cannot end well."""
    fd = kernel.running._lane_fd
    os.set_blocking(fd, True)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if close:
        os.close(fd)
        import time

        while True:
            time.sleep(1)
    os.set_blocking(fd, False)
    return "written"
