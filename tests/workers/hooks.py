"""Entry hooks, as the seed's onmessage({initialCall, beforeCall, afterCall}). Records what ran."""

log = []


def initial_call():
    log.append("initial")


def before_call(context):
    log.append(f"before {context.function}")


def after_call(context):
    log.append(f"after {context.function}")


def history():
    return list(log)


def fail():
    raise RuntimeError("inside")
