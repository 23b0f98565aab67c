"""An untrusted module that calls a trusted one through the broker, and prints."""

from worker_kernel import broker_proxy, current_call

hello = broker_proxy().worker_proxy("../hello.py")


def greet(name):
    print(f"relaying {name}")
    return hello.hello(name)


def who_am_i():
    call = current_call()
    return [call.module, call.source_module]
