"""A worker that calls another worker (hello.py) through the broker."""

from worker_kernel import broker_proxy, current_call

hello = broker_proxy().worker_proxy("./hello.py")
visits = 0


def greet_twice(name: str) -> list[str]:
    global visits
    visits += 1
    call = current_call()
    worker = f"greeter of {call.segregation_id}" if call.segregation_id else "greeter"
    print(f"{worker}: visit {visits}, called by {call.source_module or 'the host'}")
    return [hello.hello(name), hello.hello(name.upper())]
