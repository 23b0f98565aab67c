"""The seed's hello example."""


def hello(name: str, greeting: str = "Hello") -> str:
    """Greet someone by name."""
    return f"{greeting} {name}"


async def ahello(name: str) -> str:
    """Greet, from a coroutine."""
    return f"Hello {name}"
