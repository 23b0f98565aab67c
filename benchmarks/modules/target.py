"""The wb-magic side of the benchmarks: the same functions as benchmarks/work.py, loaded in a worker."""


def hello(name):
    return f"Hello {name}"


def echo(value):
    return value


def ping():
    return 1
