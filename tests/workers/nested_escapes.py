"""Exceptions that carry terminal escape sequences where Python prints them from nested arguments."""

import sys

NASTY = "\x1b]0;PWNED-TITLE\x07\x1b[31mRED\rOVERWRITTEN \u202eevil"


def syntax_error():
    raise SyntaxError("bad", (NASTY, 1, 1, "text " + NASTY))


def exception_group():
    if sys.version_info < (3, 11):
        raise ValueError(NASTY)
    raise ExceptionGroup("group " + NASTY, [ValueError(NASTY)])  # noqa: F821 (3.11+)


def os_error():
    raise OSError(2, "No such file " + NASTY, NASTY, None, NASTY)
