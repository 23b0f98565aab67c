"""Prints as it is imported: that output belongs to the call (or inspection) that imported it."""

print("imported")


def answer():
    return 42
