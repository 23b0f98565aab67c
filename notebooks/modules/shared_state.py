"""A module that other modules import to share a value (within one process)."""

value = "initial"
