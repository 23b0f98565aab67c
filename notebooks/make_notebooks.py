"""Write the teaching notebooks and run them, so that each stores the outputs nbval checks.

    python notebooks/make_notebooks.py            # all of them
    python notebooks/make_notebooks.py 03_reload  # one

Each notebook is written from the cells below, then executed top to bottom in a fresh kernel whose working
directory is ``notebooks/`` (as under nbval), and saved with its outputs. Edit the cells here, not the .ipynb.
The saved outputs name files as the notebook does (``modules/fragile.py``), not by the absolute folder of the
machine that ran them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, output_from_msg

HERE = Path(__file__).resolve().parent


def md(text: str) -> Any:
    return new_markdown_cell(text.strip())


def code(source: str, *tags: str) -> Any:
    cell = new_code_cell(source.strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


RAISES = "raises-exception"
IGNORE = "nbval-ignore-output"

HELLO = [
    md("""
# 1. Hello, worker

**What you will learn:** how to run a function that lives in a Python module *in a different process*, and
call it as if it were here.

wb-magic runs a module in a **worker**: a separate Python process that imports the module and waits for
calls. In your notebook you get a **proxy**: an object that looks like the module (or like one of its
functions), and sends every call to the worker. The function runs there; its result comes back here.

Why bother? The worker cannot touch your notebook's variables, and if the module misbehaves (or crashes), your
notebook lives on. That matters when you run code that somebody else wrote.

First, load the extension. It adds a few commands that start with `%wb_`.
"""),
    code("%load_ext wb_magic"),
    md("""
Here is the module we will run. It is the classic first example: a function that says hello. It has a second
function that tells us which process it runs in.
"""),
    code('print(open("modules/hello.py").read())'),
    md("""
`%wb_proxy` starts a worker for the module, imports the module there, and puts a proxy of it in a variable
named after the module: `hello`. Calling `hello.hello(...)` sends the call to the worker.
"""),
    code("""
%wb_proxy modules/hello.py
hello.hello("World")
"""),
    md("""
That call ran in another process. Compare its process id with the notebook's own:
"""),
    code("""
import os

hello.process_id() != os.getpid()
"""),
    md("""
The proxy knows what the module offers, so `dir()`, tab completion (type `hello.` and press Tab) and `help()`
show the worker's functions with their real signatures and docstrings:
"""),
    code("dir(hello)"),
    code("help(hello.hello)"),
    md("""
## A proxy of one function

With `-f` you get a proxy of a single function. The last word is the variable name to use (by default it is the
module's name).
"""),
    code("""
%wb_proxy -f hello modules/hello.py greet
greet("Ada")
"""),
    md("""
Both proxies talk to the **same** worker: one module, one worker process. The broker (the part of wb-magic in
the notebook that starts workers and carries calls) lists its workers:
"""),
    code("""
import wb_magic

len(wb_magic.get_broker().workers)  # how many workers run
"""),
    md("""
## Asynchronous proxies

With `-a` the proxy's functions are *coroutines*: you `await` them, and several calls can be in flight at once.
"""),
    code("""
%wb_proxy -a modules/hello.py ahello
await ahello.hello("async world")
"""),
    code("""
import asyncio

await asyncio.gather(ahello.hello("Grace"), ahello.hello("Alan"), ahello.hello("Barbara"))
"""),
    code("""
%wb_proxy -a -f hello modules/hello.py agreet
await agreet("Linus")
"""),
    md("""
## Without the magics

The magics are a shortcut. In plain Python, the same broker (one per notebook) makes the same proxies:
"""),
    code("""
broker = wb_magic.get_broker()
broker.worker_proxy("modules/hello.py").hello("from Python")
"""),
    md("""
`%wb_workers` lists the workers that run. (Its process ids and memory change every run, which is why this
notebook's checks ignore that output.)
"""),
    code("%wb_workers", IGNORE),
]

ISOLATION = [
    md("""
# 2. Isolation: whose state is it?

**What you will learn:** where a module's state lives when it runs in a worker, and which workers share it
(none do, unless you make them the same worker).

A module's global variables live in the process that imported it. Every worker is its own process, so every
worker has its own copy of every module it imports. Let's watch that happen.
"""),
    code("%load_ext wb_magic"),
    md("""
## State in a global

`counter.py` keeps a count in a global variable:
"""),
    code('print(open("modules/counter.py").read())'),
    code("""
%wb_proxy modules/counter.py
[counter.increment(), counter.increment(), counter.increment()]
"""),
    md("""
The count lives in the worker, and lives as long as the worker does. The notebook's own copy of the module
(if it imported one) would start at 0: it is a different process.
"""),
    code("""
import importlib.util

spec = importlib.util.spec_from_file_location("local_counter", "modules/counter.py")
local_counter = importlib.util.module_from_spec(spec)
spec.loader.exec_module(local_counter)
local_counter.count, counter.increment()
"""),
    md("""
## State in a shared module

`writer.py` and `reader.py` both import `shared_state.py`. In one ordinary Python program they would share it:
a value the writer puts there, the reader would see.
"""),
    code('print(open("modules/writer.py").read())'),
    code('print(open("modules/reader.py").read())'),
    code("""
%wb_proxy modules/writer.py
%wb_proxy modules/reader.py
writer.put("written by writer")
[writer.get(), reader.get()]
"""),
    md("""
The reader still sees `'initial'`: `writer.py` and `reader.py` are two different modules, so they run in two
different workers, and each worker imported its own `shared_state.py`. Nothing leaks from one to the other.
"""),
    md("""
## Two segregated workers of one module

Sometimes you want the *same* module in separate workers, say one per user, so that one user's state never
reaches another's. That is what a **segregation id** is for: `-s alice` asks for alice's own worker of the
module.
"""),
    code("""
%wb_proxy -s alice modules/counter.py alice
%wb_proxy -s bob modules/counter.py bob
[alice.increment(), alice.increment(), bob.increment(), alice.increment()]
"""),
    md("""
Alice's count and Bob's are separate, and both are separate from the `counter` worker we started first, which
carries on from where it was:
"""),
    code("counter.increment()"),
    md("""
Each of these is its own process. Here are the workers, by module and segregation id:
"""),
    code("""
from pathlib import Path

import wb_magic

workers = wb_magic.get_broker().workers
sorted((Path(w.module).name, w.segregation_id or "") for w in workers)
"""),
    code("len({w.pid for w in workers})"),
    code("%wb_workers", IGNORE),
]

RELOAD = [
    md("""
# 3. Reloading: new code in a running worker

**What you will learn:** what happens when you change a module that a worker has already imported, and how to
make the worker pick the change up.

A worker imports its module once, the first time it is called. Editing the file afterwards changes nothing in
the worker, until you **reload** the module: the worker then runs the new source, and the proxies you already
have call the new functions.

We will write a small module into a scratch folder, which this notebook empties each time it runs.
"""),
    code("""
%load_ext wb_magic
import shutil
from pathlib import Path

shutil.rmtree("scratch", ignore_errors=True)
Path("scratch").mkdir()
"""),
    code("""
%%writefile scratch/greeting.py
greeted = []


def greet(name):
    greeted.append(name)
    return f"Hello {name}"


def how_many():
    return len(greeted)
"""),
    code("""
%wb_proxy scratch/greeting.py
greeting.greet("Ada"), greeting.greet("Alan"), greeting.how_many()
"""),
    md("""
Now change the file on disk: a French greeting.
"""),
    code("""
%%writefile scratch/greeting.py
greeted = []


def greet(name):
    greeted.append(name)
    return f"Bonjour {name}"


def how_many():
    return len(greeted)
"""),
    md("""
The worker still runs the code it imported:
"""),
    code('greeting.greet("Grace")'),
    md("""
`%wb_reload` re-runs the module's new source in every worker of it. The module's globals start again too:
`greeted` is an empty list once more.
"""),
    code("""
%wb_reload scratch/greeting.py
greeting.greet("Grace"), greeting.how_many()
"""),
    md("""
A reload keeps the worker process; `%wb_reload --restart` starts a fresh one instead (useful when a module has
done something to its process that re-running its source cannot undo).
"""),
    code("""
%%writefile -a scratch/greeting.py


def process_id():
    import os

    return os.getpid()
"""),
    code("""
%wb_reload scratch/greeting.py
first = greeting.process_id()
%wb_reload --restart scratch/greeting.py
greeting.process_id() != first
"""),
    md("""
## Modules written in a cell

`%%wb_module NAME` turns a cell into a worker module called NAME. Running the cell again reloads it, in every
worker of it, so the loop *edit, run, call* stays inside the notebook.
"""),
    code('''
%%wb_module shapes
def area(width, height):
    """The area of a rectangle."""
    return width * height
'''),
    code("""
%wb_proxy shapes
shapes.area(3, 4)
"""),
    md("""
Change the cell and run it again: it says which workers it reloaded, and the proxy sees the new code, new
functions included.
"""),
    code('''
%%wb_module shapes
def area(width, height):
    """The area of a rectangle, in square centimetres."""
    return width * height


def perimeter(width, height):
    return 2 * (width + height)
'''),
    code("shapes.area(3, 4), shapes.perimeter(3, 4)"),
    code("dir(shapes)"),
    code("""
shutil.rmtree("scratch", ignore_errors=True)
"""),
]

WORKER_TO_WORKER = [
    md("""
# 4. Workers calling workers

**What you will learn:** how code in one worker calls a function in another worker, and how the called worker
can tell who is calling.

A worker cannot reach another worker directly. It asks the **broker** (the part of wb-magic in your notebook
that started them all) to make the call. Because every call passes through the broker, the broker can stamp
each one with the true caller: a worker cannot pretend to be somebody else.

Inside a worker, `broker_proxy()` gives a proxy maker that works like `%wb_proxy`, and `current_call()` says
who made the call that is running. We write two small modules in cells: a `ledger` that records purchases, and
a `shop` that uses it.
"""),
    code("%load_ext wb_magic"),
    code('''
%%wb_module ledger
from pathlib import Path

from worker_kernel import current_call

entries = []


def record(item):
    """Write down a purchase, and who asked for it."""
    call = current_call()
    caller = Path(call.source_module).stem if call.source_module else "the notebook"
    entries.append(item)
    return {"item": item, "called by": caller, "segregation id": call.source_segregation_id}


def history():
    return list(entries)
'''),
    code("""
%%wb_module shop
from worker_kernel import broker_proxy

ledger = broker_proxy().worker_proxy("./ledger.py")  # a path relative to this module


def buy(item):
    print(f"shop: buying {item}")
    return ledger.record(item)
"""),
    md("""
Call the shop from the notebook. The shop's worker calls the ledger's worker. The shop's `print` appears right
here, under the cell that made the call:
"""),
    code("""
%wb_proxy shop
shop.buy("apples")
"""),
    md("""
The ledger saw the call come from `shop`. Calling the ledger directly from the notebook looks different:
"""),
    code("""
%wb_proxy ledger
ledger.record("pears")
"""),
    md("""
A segregated shop (alice's own worker of `shop.py`) is stamped with its segregation id too:
"""),
    code("""
%wb_proxy -s alice shop alice_shop
alice_shop.buy("plums")
"""),
    md("""
Both shops used the same, unsegregated `ledger` worker, so it holds all three entries:
"""),
    code("ledger.history()"),
    code("""
from pathlib import Path
import wb_magic

sorted((Path(w.module).stem, w.segregation_id or "") for w in wb_magic.get_broker().workers)
"""),
]

FAILURES = [
    md("""
# 5. When things go wrong

**What you will learn:** what you see when a function in a worker raises an exception, takes too long, or
crashes its process, and why your notebook survives all three.

These are the reasons to run untrusted code in a worker in the first place. Our module, `fragile.py`, fails in
every way it can:
"""),
    code("%load_ext wb_magic"),
    code('print(open("modules/fragile.py").read())'),
    code("%wb_proxy modules/fragile.py"),
    md("""
## An exception in the worker

When the function raises, the exception comes back to the notebook. You see two tracebacks: the notebook's
(your cell's line), and under it the **remote** one, from the worker, showing the line that failed there.
"""),
    code("fragile.divide(1, 0)", RAISES),
    md("""
Built-in exception types, like `ZeroDivisionError`, arrive as themselves, so you can catch them as usual. The
worker's traceback is kept as text in `remote_traceback`:
"""),
    code("""
try:
    fragile.divide(1, 0)
except ZeroDivisionError as error:
    print("caught:", error)
    print("last line in the worker:", error.remote_traceback.splitlines()[-1])
"""),
    md("""
An exception class that the module defines itself arrives as a `RemoteError` that names it. The notebook never
rebuilds the worker's own classes: that would mean running the worker's code here.
"""),
    code('fragile.order("apples")', RAISES),
    md("""
## A call that takes too long

`-t` gives a proxy a timeout in seconds. When a call takes longer, it fails with `CallTimeout`, and the broker
interrupts the function in the worker, so the worker is free again.
"""),
    code("%wb_proxy -t 1 modules/fragile.py impatient"),
    code("impatient.wait_forever()", RAISES),
    code("impatient.divide(10, 4)"),
    md("""
## The interrupt button

The interrupt button (■) stops a long call too: the broker passes the interrupt on to the worker. Below, a
timer presses the button for us after one second; try the real button on `fragile.wait_forever()` yourself.
"""),
    code(
        """
import os
import signal
import threading

threading.Timer(1, os.kill, (os.getpid(), signal.SIGINT)).start()  # what the button does
fragile.wait_forever()
""",
        RAISES,
    ),
    code("fragile.divide(9, 3)"),
    md("""
## A worker that crashes

`crash()` kills its own process, as a segmentation fault would. The call fails at once with `WorkerDied`, and
the notebook carries on. The next call starts a fresh worker: a new process, with fresh state.
"""),
    code(
        """
before = fragile.process_id()
fragile.crash()
""",
        RAISES,
    ),
    code("""
after = fragile.process_id()
after != before
"""),
]

TRACING = [
    md("""
# 6. Seeing a call travel: traces

**What you will learn:** how to see where a call goes and where its time goes, when one call hops across
several workers, and where in the chain it failed.

wb-magic speaks **OpenTelemetry**, the standard for traces. A *trace* is the story of one piece of work: every
step is a *span* (a name, a start, an end, a parent). When a call goes from the notebook to a worker, and from that
worker to another, each step is a span, and all of them belong to one trace: the notebook's call is the parent of
the first worker's work, which is the parent of its call to the next worker, and so on.

`%%wb_trace` runs a cell with tracing on and then draws the trace as a *waterfall*: one row per span, indented
under its parent, with a bar showing when it ran.

We build a chain of three workers: a `checkout` that asks an `inventory`, which asks a `warehouse`.
"""),
    code("%load_ext wb_magic"),
    code('''
%%wb_module warehouse
shelves = {"apple": 10, "pear": 3}


def take(item, count):
    """Take items off the shelf; an item we never stocked is an error."""
    if item not in shelves:
        raise LookupError(f"the warehouse has never stocked {item!r}")
    shelves[item] -= count
    return shelves[item]
'''),
    code("""
%%wb_module inventory
from worker_kernel import broker_proxy

warehouse = broker_proxy().worker_proxy("./warehouse.py")


def reserve(item, count):
    left = warehouse.take(item, count)
    return {"item": item, "reserved": count, "left": left}
"""),
    code("""
%%wb_module checkout
from worker_kernel import broker_proxy

inventory = broker_proxy().worker_proxy("./inventory.py")


def buy(item, count=1):
    print(f"checkout: {count} x {item}")
    return inventory.reserve(item, count)
"""),
    md("""
A first call starts the three workers and imports their modules:
"""),
    code("""
%wb_proxy checkout
checkout.buy("apple")
"""),
    md("""
Now the same call, traced. The cell runs as usual (its output comes first), then the waterfall:
"""),
    code("""
%%wb_trace
checkout.buy("apple", 2)
"""),
    md("""
Read it from the top:

- **host** rows are your notebook's process: the cell itself, and the *client* span of the call it made.
- The **checkout** worker's *server* span is the function running there; inside it, its own *client* span for
  its call to the inventory.
- The purple **route** row is the broker, in your notebook's process, passing that call on: workers never talk to
  each other directly. It stamps who is calling, and can refuse.
- Then the **inventory** worker, and in the same way the **warehouse** worker, at the bottom of the chain.

Each bar starts where its span began and is as long as it lasted (the whole width is the whole cell). The times
change from run to run; the shape of the chain does not.

Now a call that fails at the bottom of the chain: the warehouse has never stocked unicorns.
"""),
    code("""
%%wb_trace
checkout.buy("unicorn")
""", RAISES),
    md("""
The error is shown as usual (with the traceback from the worker where it was raised), and in the waterfall every
span it went through is **red**, from the warehouse where it was raised up to your cell: the error travels back
along the same chain. The deepest red row is where to look first.

The same traces can go to any OpenTelemetry backend (Jaeger, Tempo, Honeycomb, ...): turn on
`WorkerBrokerInstrumentor` with your tracer provider and exporter, or run your program under
`opentelemetry-instrument`. The workers send their spans through the broker, so you set up one exporter, in your
process, not one per worker. `docs/telemetry.md` has the details.
"""),
]

NOTEBOOKS = {
    "01_hello": HELLO,
    "02_isolation": ISOLATION,
    "03_reload": RELOAD,
    "04_worker_to_worker": WORKER_TO_WORKER,
    "05_failures": FAILURES,
    "06_tracing": TRACING,
}


def build(name: str, cells: list[Any]) -> Path:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    started = time.perf_counter()
    execute(nb, HERE)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [relative_paths(output, HERE) for output in cell.outputs]
    path = HERE / f"{name}.ipynb"
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"{path.name}: {time.perf_counter() - started:.1f} s")
    return path


class ThisPython(KernelSpecManager):
    """The ipykernel of the Python running this script (as nbval's --nbval-current-env), whatever is installed."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        return KernelSpec(argv=argv, display_name="Python 3 (ipykernel)", language="python", interrupt_mode="signal")


def execute(nb: Any, cwd: Path) -> None:
    """Run every code cell in a fresh kernel and store its outputs (errors included) and execution count."""
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())
    manager.start_kernel(cwd=str(cwd))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            outputs: list[Any] = []

            def keep(msg: dict[str, Any], outputs: list[Any] = outputs) -> None:
                if msg["msg_type"] in ("stream", "display_data", "execute_result", "error"):
                    outputs.append(output_from_msg(msg))

            reply = client.execute_interactive(cell.source, output_hook=keep, timeout=120)
            cell.outputs = coalesce(outputs)
            cell.execution_count = reply["content"]["execution_count"]
            failed = any(o.output_type == "error" for o in outputs)
            if failed != (RAISES in cell.metadata.get("tags", [])):
                raise RuntimeError(f"cell {cell.source!r} {'failed' if failed else 'did not fail'}: {outputs}")
    finally:
        client.stop_channels()
        manager.shutdown_kernel()


def relative_paths(value: Any, folder: Path) -> Any:
    """``value`` (an output, or any part of one) with ``folder``'s absolute path left out of its text, so that
    ``/home/me/wb-magic/notebooks/modules/fragile.py`` reads ``modules/fragile.py``, as the notebook names it."""
    if isinstance(value, str):
        return value.replace(f"{folder}{os.sep}", "")
    if isinstance(value, list):
        return [relative_paths(item, folder) for item in value]
    if isinstance(value, dict):
        return type(value)({key: relative_paths(item, folder) for key, item in value.items()})
    return value


def coalesce(outputs: list[Any]) -> list[Any]:
    """Merge consecutive stream outputs of the same stream, as a notebook shows them."""
    merged: list[Any] = []
    for out in outputs:
        last = merged[-1] if merged else None
        if last is not None and out.output_type == last.output_type == "stream" and out.name == last.name:
            last.text += out.text
        else:
            merged.append(out)
    return merged


def main(names: list[str]) -> None:
    for name in names or list(NOTEBOOKS):
        build(name, NOTEBOOKS[name])


if __name__ == "__main__":
    main(sys.argv[1:])
