"""A trivial module, for the first call to a new worker."""


def ping():
    return 1
