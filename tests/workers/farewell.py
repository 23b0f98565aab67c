"""A module that leaves word when its worker shuts down, through atexit as any Python program would."""

import atexit


def say_goodbye_to(path: str) -> None:
    def goodbye() -> None:
        with open(path, "w") as f:
            f.write("goodbye")

    atexit.register(goodbye)
