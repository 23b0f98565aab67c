"""The seed's stateful module: a module-level string, empty until set. ``/stateful/set_state?value=x`` (204),
then ``/stateful/get_state`` answers ``x``; a segregated worker (``?id=``) keeps its own."""

_state = ""


def set_state(params: dict) -> None:
    global _state
    _state = params.get("value", "")


def get_state(params: dict) -> str:
    return _state
