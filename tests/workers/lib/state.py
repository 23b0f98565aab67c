"""A dependency shared by the modules beside lib/: its state lives in each worker that imports it."""

value = None


def get():
    return value


def put(new):
    global value
    value = new
    return value
