"""An untrusted module that tries to make the broker act for it: it names targets, and reports what it got."""

from worker_kernel import broker_proxy


def call(target, function, *args, segregation_id=None):
    """Call ``function`` of ``target`` through the broker; what came back, or the error as text."""
    proxy = broker_proxy().worker_proxy(target if segregation_id is None else (target, segregation_id))
    try:
        return {"value": getattr(proxy, function)(*args)}
    except Exception as exc:
        return {
            "error": type(exc).__name__,
            "text": str(exc),
            "args": repr(exc.args),
            "traceback": getattr(exc, "remote_traceback", ""),
        }
