"""Imports the logging.py beside it, as Python would for a script in this folder."""

import logging


def log_and_count(text):
    logging.note(text)
    return len(logging.lines)
