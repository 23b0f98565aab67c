"""A hostile worker's text: escape sequences, carriage returns and bidirectional overrides in what it prints,
raises and names, and output that claims to belong to no call (the red team's findings 03 and 04)."""

from worker_kernel import kernel

ESCAPES = "\x1b]0;PWNED-TITLE\x07 \x1b[31mRED\x1b[0m \rCR \u202eevil"


def printed():
    print("visible-line\rFORGED host line overwrites", flush=True)
    print("abc\u202edesrever", flush=True)
    return "ok"


def stray():
    """Output frames on the lane with call id 0 (no call), as a thread of the worker's could send after its call
    returned; sent before this call's reply, so that the host has handled them when the call returns."""
    running = kernel.running
    running._lane_output(0, "stdout", '{"status": "ok", "balance": 1000000}\n')
    running._lane_output(0, "stderr", "INFO:host: all checks passed\rERROR overwritten\n")
    return "returned"


def boom():
    raise ValueError("msg " + ESCAPES)


def boom2():
    raise type("Bad\x1b[31mName", (Exception,), {})("x\x1b[5mblink " + ESCAPES)
