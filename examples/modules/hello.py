"""The seed's hello example."""


def hello(name: str) -> str:
    """Greet someone."""
    return f"Hello {name}"
