"""Another tenant's module beside attacks.py: what a sandboxed worker of attacks.py must not read or import."""

SECRET = "the neighbour's secret"


def secret() -> str:
    return SECRET
