"""Waits for the test: a call that stays pending until a line arrives through a FIFO."""


def wait_for_line(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.readline().strip()
