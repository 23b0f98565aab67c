"""``/console/log?k=v``: prints its parameters in the worker. The print travels to the server's console (the
broker relays a worker's output to whoever called it, here through the trusted handler to the host), and the
answer is ``204 No Content``: the function returns None."""


def log(params: dict) -> None:
    print("console.log:", " ".join(f"{key}={value}" for key, value in params.items()))
