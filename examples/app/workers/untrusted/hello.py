"""The smallest module: ``/hello/world`` answers "Hello World", ``/hello/hello?name=Ada`` greets anyone."""


def world(params: dict) -> str:
    return "Hello World"


def hello(params: dict) -> str:
    return f"Hello {params.get('name', 'World')}"
