"""What a worker sees of its arguments' identities, and values with repeats and cycles to send back."""


def same(a, b=None, *, c=None) -> list[bool]:
    """Which of a, b and c are one object: [a is b, a is c, b is c]."""
    return [a is b, a is c, b is c]


def echo(value):
    return value


def cyclic() -> dict:
    node: dict = {"name": "root", "children": []}
    node["children"].append({"name": "child", "parent": node})
    return node
