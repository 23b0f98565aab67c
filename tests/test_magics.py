"""The IPython magics, driven through IPython's test shell and through a real ipykernel, with real workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from IPython.core.error import UsageError
from IPython.testing import globalipapp
from IPython.utils.capture import capture_output

import wb_magic
from wb_magic import CallTimeout, RemoteError, WorkerBrokerError, WorkerDied
from wb_magic.magics import _COLUMNS, WorkerBrokerMagics, WorkerTable

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def ip():
    """IPython's global test shell with the extension loaded; unloaded (workers shut down) at the end."""
    globalipapp.start_ipython()
    shell = globalipapp.get_ipython()
    shell.run_line_magic("load_ext", "wb_magic")
    yield shell
    shell.run_line_magic("unload_ext", "wb_magic")


@pytest.fixture(autouse=True)
def no_workers_left(request):
    yield
    if "ip" in request.fixturenames:
        wb_magic.get_broker().terminate()


def run(ip, source: str):
    """Run a cell; returns (result, stdout, stderr) with colours stripped."""
    with capture_output() as out:
        result = ip.run_cell(source)
    return result, ANSI.sub("", out.stdout), ANSI.sub("", out.stderr)


def ok(ip, source: str):
    """Run a cell that must succeed; its value."""
    result, stdout, stderr = run(ip, source)
    assert result.success, stdout + stderr
    return result.result


def usage_error(ip, source: str) -> str:
    """Run a cell that must fail with one clear line (a UsageError, no traceback); that line."""
    result, stdout, stderr = run(ip, source)
    assert isinstance(result.error_in_exec, UsageError), (result.error_in_exec, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("UsageError: "), stderr
    assert "Traceback" not in stdout + stderr
    return lines[0]


def shown(ip, source: str) -> str:
    """The plain text of what a cell displayed."""
    with capture_output() as out:
        result = ip.run_cell(source)
    assert result.success, out.stdout + out.stderr
    return "".join(o.data["text/plain"] + "\n" for o in out.outputs)


def printed(ip, source: str) -> str:
    result, stdout, stderr = run(ip, source)
    assert result.success, stdout + stderr
    return stdout


# -- the extension and the session broker ---------------------------------------------------------------------


def test_one_broker_per_session_and_the_magics_are_importable(ip):
    assert wb_magic.get_broker() is wb_magic.get_broker()
    assert {"wb_proxy", "wb_reload", "wb_workers", "wb_shutdown", "wb_debug"} <= set(ip.magics_manager.magics["line"])
    assert "wb_module" in ip.magics_manager.magics["cell"]
    assert issubclass(WorkerBrokerMagics, __import__("IPython").core.magic.Magics)
    ip.run_line_magic("load_ext", "wb_magic")  # loading twice changes nothing
    assert wb_magic.get_broker() is wb_magic.get_broker()


def test_unload_shuts_the_workers_down_and_load_starts_afresh(ip, workers_dir):
    ok(ip, f"%wb_proxy {workers_dir / 'values.py'}")
    pid = ok(ip, "values.pid()")
    first = wb_magic.get_broker()
    ip.run_line_magic("unload_ext", "wb_magic")
    try:
        assert not psutil.pid_exists(pid)
        assert first.closed
        result, _, stderr = run(ip, "%wb_workers")
        assert not result.success and "not found" in stderr
    finally:
        ip.run_line_magic("load_ext", "wb_magic")
    assert wb_magic.get_broker() is not first
    result, _, _ = run(ip, "values.echo(1)")  # a proxy of the closed broker says so
    assert isinstance(result.error_in_exec, WorkerBrokerError) and "closed" in str(result.error_in_exec)
    ok(ip, f"%wb_proxy {workers_dir / 'values.py'}")
    assert ok(ip, "values.echo(1)") == 1


# -- %wb_proxy ------------------------------------------------------------------------------------------------


def test_wb_proxy_binds_module_and_function_proxies(ip, workers_dir, monkeypatch):
    monkeypatch.chdir(workers_dir)  # relative paths resolve against the working directory, as in a notebook
    ok(ip, "%wb_proxy hello.py")
    assert ok(ip, "hello.hello('World')") == "Hello World"
    ok(ip, "%wb_proxy -f hello hello.py greet")
    assert ok(ip, "greet('you', greeting='Hi')") == "Hi you"
    ok(ip, "%wb_proxy -f hello ./hello.py")  # with -f too, the default name is the module's basename
    assert ok(ip, "hello('fn')") == "Hello fn"
    ok(ip, "%wb_proxy hello.py hi")
    assert ok(ip, "hi.hello('there')") == "Hello there"
    assert len(wb_magic.get_broker().workers) == 1  # one module, one worker


def test_wb_proxy_async(ip, workers_dir):
    ok(ip, f"%wb_proxy -a {workers_dir / 'hello.py'} ahello")
    assert ok(ip, "await ahello.hello('async')") == "Hello async"
    ok(ip, f"%wb_proxy -a -f ahello {workers_dir / 'hello.py'} greet")
    assert ok(ip, "import asyncio\nawait asyncio.gather(greet('a'), greet('b'))") == ["Hello a", "Hello b"]


def test_wb_proxy_segregation_ids_give_workers_of_their_own(ip, workers_dir):
    counter = workers_dir / "counter.py"
    ok(ip, f"%wb_proxy {counter}")
    ok(ip, f"%wb_proxy -s alice {counter} alice")
    ok(ip, f"%wb_proxy --segregation-id bob {counter} bob")
    assert ok(ip, "[counter.increment(), counter.increment(), alice.increment(), bob.increment()]") == [1, 2, 1, 1]
    assert sorted(str(w.segregation_id) for w in wb_magic.get_broker().workers) == ["None", "alice", "bob"]


def test_wb_proxy_timeout(ip, workers_dir):
    ok(ip, f"%wb_proxy -t 0.5 {workers_dir / 'values.py'} impatient")
    result, stdout, _ = run(ip, "impatient.block_until_interrupted()")
    assert isinstance(result.error_in_exec, CallTimeout)
    assert "CallTimeout" in stdout and "took longer than 0.5 s" in stdout
    assert ok(ip, "impatient.echo('still there')") == "still there"


def test_wb_proxy_finds_dotted_modules(ip):
    ok(ip, "%wb_proxy textwrap")
    assert ok(ip, "textwrap.dedent('    indented')") == "indented"
    ok(ip, "%wb_proxy email.utils")  # bound under its last name
    assert ok(ip, "utils.parseaddr('Ada <ada@example.com>')") == ("Ada", "ada@example.com")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("%wb_proxy -x hello.py", "unrecognized arguments: -x"),
        ("%wb_proxy", "the following arguments are required: target"),
        ("%wb_proxy missing.py", "no module file 'missing.py'"),
        ("%wb_proxy no_such_module_anywhere", "no %%wb_module, file or module named 'no_such_module_anywhere'"),
        ("%wb_proxy 'not a module!'", "is not a %%wb_module name, a path to a .py file or a dotted module name"),
        ("%wb_proxy hello.py 2fast", "NAME must be a Python identifier, not '2fast'"),
        ("%wb_proxy hello.py class", "NAME must be a Python identifier, not 'class'"),
        ("%wb_proxy -f nope hello.py", "hello.py has no function 'nope' (it has: ahello, hello)"),
        ("%wb_proxy -f 'a b' hello.py", "FUNCTION must be a Python identifier"),
        ("%wb_proxy -t soon hello.py", "argument -t/--timeout: invalid float value: 'soon'"),
        ("%wb_proxy -t 0 hello.py", "the timeout must be a positive number of seconds"),
        ("%wb_reload", "the following arguments are required: target"),
        ("%wb_reload missing.py", "no module file 'missing.py'"),
        ("%wb_reload --hard hello.py", "unrecognized arguments: --hard"),
        ("%wb_workers everything", "%wb_workers takes no arguments"),
        ("%wb_shutdown", "%wb_shutdown needs a TARGET, or --all"),
        ("%wb_shutdown --all hello.py", "takes a TARGET or --all, not both"),
        ("%wb_shutdown nothere", "no %%wb_module, file or module named 'nothere'"),
        ("%wb_reload nothere", "no %%wb_module, file or module named 'nothere'"),
        ("%wb_shutdown nothere.py", "no module file 'nothere.py'"),
        ("%wb_reload nothere.py", "no module file 'nothere.py'"),
        ("%wb_debug loud", "%wb_debug takes on or off, not 'loud'"),
        ("%%wb_module\nx = 1", "the following arguments are required: name"),
        ("%%wb_module my-module\nx = 1", "NAME must be a Python identifier, not 'my-module'"),
        ("%%wb_module broken\ndef f():\n    return (\n", "error in %%wb_module broken, line 2: '(' was never closed"),
    ],
)
def test_bad_input_gets_one_clear_line(ip, workers_dir, monkeypatch, line, expected):
    monkeypatch.chdir(workers_dir)
    assert expected in usage_error(ip, line)


def test_a_syntax_error_in_a_module_file_names_its_line(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("broken.py").write_text("def fine():\n    pass\n\ndef f(:\n    pass\n")
    assert usage_error(ip, "%wb_proxy broken.py").endswith("syntax error in broken.py, line 4: invalid syntax")
    assert wb_magic.get_broker().workers == []  # nothing was started for it


def test_an_error_while_importing_shows_the_remote_traceback(ip, tmp_path):
    (tmp_path / "explodes.py").write_text("x = 1\nraise RuntimeError('at import')\n")
    result, stdout, _ = run(ip, f"%wb_proxy {tmp_path / 'explodes.py'}")
    assert isinstance(result.error_in_exec, RuntimeError)
    assert f"File {tmp_path / 'explodes.py'}:2, in <module>" in stdout
    assert "magics.py" not in stdout and "broker.py" not in stdout


# -- %%wb_module ----------------------------------------------------------------------------------------------


def test_wb_module_defines_a_module_and_running_it_again_reloads_it(ip):
    assert printed(ip, "%%wb_module shapes\ncalls = 0\ndef area(w, h):\n    '''Width times height.'''\n"
                   "    global calls\n    calls += 1\n    return w * h\n") == ""  # fmt: skip
    ok(ip, "%wb_proxy shapes")
    ok(ip, "%wb_proxy -s other shapes other")
    assert ok(ip, "shapes.area(2, 3), shapes.area(1, 1), other.area(4, 4)") == (6, 1, 16)
    out = printed(
        ip,
        "%%wb_module shapes\ndef area(w, h):\n    return w * h * 10\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n",
    )
    assert out == "reloaded %%wb_module shapes in 2 workers\n"
    assert ok(ip, "shapes.area(2, 3), other.area(1, 1), shapes.perimeter(1, 2)") == (60, 10, 6)  # old proxies
    assert "perimeter" in dir(ip.user_ns["shapes"])
    assert ok(ip, "shapes.__name__") == "shapes"


def test_wb_module_cells_reach_each_other(ip):
    ok(ip, "%%wb_module helper\ndef double(x):\n    return 2 * x\n")
    ok(
        ip,
        "%%wb_module uses_helper\nfrom worker_kernel import broker_proxy, current_call\n"
        "helper = broker_proxy().worker_proxy('./helper.py')\n"
        "def quadruple(x):\n    return helper.double(helper.double(x))\n",
    )
    ok(ip, "%wb_proxy uses_helper")
    assert ok(ip, "uses_helper.quadruple(3)") == 12  # through helper's own worker
    ok(ip, "%%wb_module imports_helper\nimport helper\n\ndef triple(x):\n    return helper.double(x) + x\n")
    ok(ip, "%wb_proxy imports_helper")
    assert ok(ip, "imports_helper.triple(3)") == 9  # helper imported in this worker, as a plain module


def test_a_syntax_error_keeps_the_previous_version(ip):
    ok(ip, "%%wb_module steady\ndef version():\n    return 1\n")
    ok(ip, "%wb_proxy steady")
    assert ok(ip, "steady.version()") == 1
    usage_error(ip, "%%wb_module steady\ndef version(:\n    return 2\n")
    assert ok(ip, "steady.version()") == 1


def test_remote_tracebacks_name_the_cell(ip):
    ok(ip, "%%wb_module fails\n\ndef divide(a, b):\n    return a / b\n")
    ok(ip, "%wb_proxy fails")
    result, stdout, _ = run(ip, "fails.divide(1, 0)")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    assert "Cell %%wb_module fails, line 3, in divide" in stdout
    assert "return a / b" in stdout


# -- %wb_reload -----------------------------------------------------------------------------------------------


def test_wb_reload_runs_the_new_source_in_every_worker(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("greeting.py").write_text("said = []\ndef greet(name):\n    said.append(name)\n    return f'Hello {name}'\n"
                                   "def count():\n    return len(said)\n")  # fmt: skip
    ok(ip, "%wb_proxy greeting.py")
    ok(ip, "%wb_proxy -s b greeting.py other")
    assert ok(ip, "greeting.greet('a'), other.greet('b'), greeting.count()") == ("Hello a", "Hello b", 1)
    pids = {w.pid for w in wb_magic.get_broker().workers}
    Path("greeting.py").write_text("said = []\ndef greet(name):\n    return f'Bonjour {name}'\n"
                                   "def count():\n    return len(said)\n")  # fmt: skip
    assert printed(ip, "%wb_reload greeting.py") == "reloaded greeting.py in 2 workers\n"
    assert ok(ip, "greeting.greet('a'), other.greet('b'), greeting.count()") == ("Bonjour a", "Bonjour b", 0)
    assert {w.pid for w in wb_magic.get_broker().workers} == pids  # the same processes

    assert printed(ip, "%wb_reload --restart greeting.py") == "restarted greeting.py in 2 workers\n"
    assert {w.pid for w in wb_magic.get_broker().workers}.isdisjoint(pids)  # fresh processes
    assert ok(ip, "greeting.greet('again')") == "Bonjour again"


def test_wb_reload_with_no_worker_running(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("idle.py").write_text("def f():\n    return 1\n")
    assert printed(ip, "%wb_reload idle.py") == "reloaded idle.py (no worker was running it; started one)\n"
    assert [Path(w.module).name for w in wb_magic.get_broker().workers] == ["idle.py"]


def test_wb_reload_reports_a_syntax_error_and_keeps_serving(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("fragile.py").write_text("def f():\n    return 1\n")
    ok(ip, "%wb_proxy fragile.py")
    Path("fragile.py").write_text("def f():\n    return (\n")
    assert "syntax error in fragile.py, line 2" in usage_error(ip, "%wb_reload fragile.py")
    assert ok(ip, "fragile.f()") == 1


# -- %wb_workers and %wb_shutdown -----------------------------------------------------------------------------


def test_wb_workers_lists_the_live_workers(ip, workers_dir, monkeypatch):
    assert shown(ip, "%wb_workers") == "no live workers\n"
    monkeypatch.chdir(workers_dir)
    ok(ip, "%wb_proxy counter.py")
    ok(ip, "%wb_proxy -s alice counter.py alice")
    ok(ip, "counter.increment(); alice.increment(); alice.increment()")
    lines = shown(ip, "%wb_workers").splitlines()
    assert lines[0].split() == [
        "key", "module", "segregation", "id", "pid", "state", "calls", "last", "used", "memory", "connection", "file"
    ]  # fmt: skip
    rows = {line.split()[0] + line.split()[1]: line for line in lines[1:]}
    assert set(rows) == {"counter.pycounter.py", "counter.py[alice]"}
    alice = rows["counter.py[alice]"].split()
    info = next(w for w in wb_magic.get_broker().workers if w.segregation_id == "alice")
    assert alice[2:6] == ["counter.py", "alice", str(info.pid), "idle"]
    assert re.search(r"\d+ \s*(just now|\d+ s ago)\s+\d+\.\d MiB\s+wb-worker-\S+\.json$", rows["counter.py[alice]"])
    assert alice[-1] == os.path.basename(info.connection_file) and os.path.isfile(info.connection_file)


def test_a_console_attaches_to_a_worker_by_the_name_wb_workers_shows(ip, workers_dir, monkeypatch):
    """``jupyter console --existing NAME`` (the console extra), as docs/notebooks.md says, runs code in the
    worker's module, with its state; the worker serves on after the console leaves."""
    monkeypatch.chdir(workers_dir)
    ok(ip, "%wb_proxy counter.py")
    assert ok(ip, "counter.increment(); counter.increment()") == 2
    name = shown(ip, "%wb_workers").splitlines()[1].split()[-1]
    console = subprocess.run(
        [sys.executable, "-m", "jupyter_console", "--existing", name, "--simple-prompt"],
        input="count * 10\nincrement()\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert console.returncode == 0, console.stderr
    assert "Out[1]: 20" in console.stdout and "Out[2]: 3" in console.stdout
    assert "keeping kernel alive" in console.stdout
    assert ok(ip, "counter.increment()") == 4  # the console's call counted in the same worker


def test_the_workers_table_in_html_escapes_everything(ip, workers_dir):
    ok(ip, f"%wb_proxy -s '<script>alert(1)</script>' {workers_dir / 'hello.py'} tricky")
    ok(ip, "tricky.hello('x')")
    table = WorkerTable.of(wb_magic.get_broker().workers)
    page = table._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.startswith('<table class="wb-workers">') and page.count("<tr>") == 2
    assert [row.state for row in table] == ["idle"]


def test_the_workers_table_in_html_aligns_text_left_and_numbers_right(ip, workers_dir):
    """Every cell says its alignment: JupyterLab's stylesheet right-aligns the cells of a table that do not."""
    ok(ip, f"%wb_proxy {workers_dir / 'hello.py'} aligned")
    ok(ip, "aligned.hello('x')")
    page = WorkerTable.of(wb_magic.get_broker().workers)._repr_html_()
    cells = re.findall(r'<t[hd](?: class="(wb-[\w-]+)")? style="text-align: (\w+)">([^<]*)</t[hd]>', page)
    assert len(cells) == 2 * len(_COLUMNS) == len(re.findall(r"<t[hd][ >]", page)), page
    aligned = {(cls or text): side for cls, side, text in cells}
    assert aligned["module"] == aligned["wb-module"] == aligned["wb-key"] == aligned["wb-state"] == "left"
    assert aligned["pid"] == aligned["wb-pid"] == aligned["wb-memory"] == aligned["wb-calls"] == "right"


def test_wb_shutdown(ip, workers_dir, monkeypatch):
    monkeypatch.chdir(workers_dir)
    ok(ip, "%wb_proxy counter.py")
    ok(ip, "%wb_proxy -s alice counter.py alice")
    ok(ip, "%wb_proxy values.py")
    ok(ip, "counter.increment(); alice.increment(); values.echo(1)")
    assert printed(ip, "%wb_shutdown -s alice counter.py") == "shut down 1 worker of counter.py\n"
    assert printed(ip, "%wb_shutdown counter.py") == "shut down 1 worker of counter.py\n"
    assert printed(ip, "%wb_shutdown counter.py") == "shut down 0 workers of counter.py\n"
    assert [Path(w.module).name for w in wb_magic.get_broker().workers] == ["values.py"]
    assert ok(ip, "alice.increment()") == 1  # a fresh worker
    assert printed(ip, "%wb_shutdown --all") == "shut down 2 workers\n"
    assert wb_magic.get_broker().workers == []


def test_wb_shutdown_takes_a_module_whose_file_is_gone_while_its_worker_runs(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("fleeting.py").write_text("def f():\n    return 1\n")
    ok(ip, "%wb_proxy fleeting.py")
    Path("fleeting.py").unlink()
    assert printed(ip, "%wb_shutdown fleeting.py") == "shut down 1 worker of fleeting.py\n"
    assert "no module file 'fleeting.py'" in usage_error(ip, "%wb_shutdown fleeting.py")  # now it names nothing


# -- %wb_debug ------------------------------------------------------------------------------------------------


def test_wb_debug_logs_and_shows_the_brokers_frames(ip, workers_dir, caplog):
    assert printed(ip, "%wb_debug") == "wb_magic debug logging is off\n"
    ok(ip, f"%wb_proxy {workers_dir / 'values.py'}")
    try:
        assert printed(ip, "%wb_debug on") == "wb_magic debug logging is on\n"
        _, stdout, _ = run(ip, "%wb_shutdown --all\nvalues.raise_builtin('ValueError', 'bad')")
        assert any("started worker" in r.message for r in caplog.records)
        assert "broker.py" in stdout  # the local traceback in full
    finally:
        assert printed(ip, "%wb_debug off") == "wb_magic debug logging is off\n"
    _, stdout, _ = run(ip, "values.raise_builtin('ValueError', 'bad')")
    assert "broker.py" not in stdout


# -- exceptions, introspection --------------------------------------------------------------------------------


def test_a_remote_exception_shows_both_tracebacks_in_ipythons_style(ip, workers_dir, monkeypatch):
    monkeypatch.chdir(workers_dir.parent)  # a file beneath the working directory is named relative to it
    ok(ip, f"%wb_proxy {workers_dir / 'values.py'}")
    result, stdout, _ = run(ip, "values.raise_custom('it went wrong')")
    assert isinstance(result.error_in_exec, RemoteError)
    local, _, remote = stdout.partition("Remote traceback, in the worker (most recent call last)")
    assert "----> 1 values.raise_custom('it went wrong')" in local
    assert "RemoteError: values.CustomError: it went wrong" in local
    assert "broker.py" not in local and "proxy.py" not in local  # the broker's own frames are left out
    assert "(from the worker)" not in local  # shown once, below, not also as a note
    assert "direct cause" not in stdout  # nor, on Python 3.10, as the chained cause that stands in for the note
    assert "\nFile workers/values.py:30, in raise_custom" in remote
    assert "---> 30 raise CustomError(message)" in remote
    assert remote.rstrip().endswith("values.CustomError: it went wrong")
    assert "kernel.py" not in remote  # nor the worker kernel's


def test_other_exceptions_are_shown_as_ipython_shows_them(ip):
    result, stdout, _ = run(ip, "def f():\n    return 1 / 0\nf()")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    assert "----> 3 f()" in stdout and "return 1 / 0" in stdout and "Remote" not in stdout
    result, stdout, _ = run(ip, "def broken(:\n    pass")
    assert isinstance(result.error_before_exec, SyntaxError)
    assert "SyntaxError" in stdout and "def broken(:" in stdout


def test_worker_death_and_its_restart(ip, workers_dir):
    ok(ip, f"%wb_proxy {workers_dir / 'values.py'}")
    first = ok(ip, "values.pid()")
    result, stdout, _ = run(ip, "values.crash()")
    assert isinstance(result.error_in_exec, WorkerDied)
    assert "killed by SIGKILL" in stdout and "broker.py" not in stdout
    assert ok(ip, "values.pid()") != first


def test_control_characters_from_a_worker_do_not_reach_the_terminal(ip, tmp_path):
    (tmp_path / "sneaky.py").write_text(
        "def f():\n    raise ValueError('plain\\rover \\u202eright-to-left')  # \x1b]0;title\x07\x1b[2J\n"
    )
    ok(ip, f"%wb_proxy {tmp_path / 'sneaky.py'}")
    _, stdout, _ = run(ip, "sneaky.f()")
    remote = stdout.partition("Remote traceback")[2]
    assert "  # ]0;title[2J" in remote  # the source line, as safe_text.printable leaves it
    assert "ValueError: plainover right-to-left" in remote  # the message
    assert not {"\x1b", "\x07", "\r", "\u202e"} & set(remote)


def test_tab_completion_and_pinfo_show_the_remote_module(ip, workers_dir):
    from IPython.core.completer import provisionalcompleter

    ok(ip, f"%wb_proxy {workers_dir / 'hello.py'}")
    with provisionalcompleter():
        found = {c.text for c in ip.Completer.completions("hello.", 6)}
    assert {"hello", "ahello"} <= found
    help_text = printed(ip, "hello.hello?")
    assert "Signature: hello.hello(name: str, greeting: str = 'Hello') -> str" in help_text
    assert "Docstring: Greet someone by name." in help_text
    assert re.search(r"^File:\s+(.*)$", help_text, re.MULTILINE)[1] == str(workers_dir / "hello.py")  # not proxy.py
    source = printed(ip, "hello.ahello??")
    assert "async def ahello(" in source and "proxy.py" not in source  # the module's own source
    ok(ip, "%wb_proxy email.utils")  # a dotted module: its file, found without importing it here
    assert re.search(r"^File:\s+.*/email/utils\.py$", printed(ip, "utils.parseaddr?"), re.MULTILINE)


# -- in a real notebook kernel --------------------------------------------------------------------------------


class Kernel:
    """An ipykernel, as a notebook runs one, with the extension loaded."""

    def __init__(self, cwd: Path) -> None:
        from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
        from jupyter_client.manager import KernelManager

        class ThisPython(KernelSpecManager):  # the ipykernel of this environment, whatever kernels are installed
            def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
                argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
                return KernelSpec(argv=argv, display_name="Python", language="python", interrupt_mode="signal")

        self.manager = KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())
        self.manager.start_kernel(cwd=str(cwd))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def execute(self, code: str, *, interrupt_on: str | None = None, timeout: float = 60) -> tuple[str, list]:
        """Run a cell; (status, its iopub outputs). ``interrupt_on``: press interrupt when that text streams."""
        msg_id = self.client.execute(code)
        outputs = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind in ("stream", "error", "display_data", "execute_result"):
                outputs.append((kind, content))
                if interrupt_on and kind == "stream" and interrupt_on in content["text"]:
                    self.manager.interrupt_kernel()
        while True:  # wait_for_ready may leave kernel_info replies queued before this one
            reply = self.client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]["status"], outputs

    def value(self, code: str):
        status, outputs = self.execute(code)
        assert status == "ok", outputs
        results = [c["data"]["text/plain"] for kind, c in outputs if kind == "execute_result"]
        return __import__("ast").literal_eval(results[-1])

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)


@pytest.fixture(scope="module")
def kernel(workers_dir_module):
    k = Kernel(workers_dir_module)
    status, outputs = k.execute("%load_ext wb_magic\n%wb_proxy values.py\n%wb_proxy -a values.py avalues")
    assert status == "ok", outputs
    yield k
    k.stop()


@pytest.fixture(scope="module")
def workers_dir_module() -> Path:
    return Path(__file__).parent / "workers"


def test_in_a_kernel_prints_stream_as_they_happen_and_interrupt_stops_the_call(kernel):
    pid = kernel.value("values.pid()")
    # the worker prints "started", then waits for an interrupt: the print must reach the cell while it runs
    status, outputs = kernel.execute("values.block_until_interrupted()", interrupt_on="started")
    assert status == "error"
    assert outputs[0] == ("stream", {"name": "stdout", "text": "started\n"})
    assert outputs[-1][0] == "error" and outputs[-1][1]["ename"] == "KeyboardInterrupt"
    assert not any("broker.py" in line for line in outputs[-1][1]["traceback"])
    assert kernel.value("values.echo('still usable'), values.pid()") == ("still usable", pid)


def test_in_a_kernel_interrupt_stops_an_awaited_call(kernel):
    status, outputs = kernel.execute("await avalues.block_until_interrupted()", interrupt_on="started", timeout=30)
    assert status == "error" and outputs[-1][1]["ename"] in ("CancelledError", "KeyboardInterrupt")
    assert kernel.value("await avalues.echo('after')") == "after"


def test_in_a_kernel_worker_output_is_text_only(kernel):
    status, outputs = kernel.execute(
        "%%wb_module markup\n"
        "def show():\n"
        "    print('<b>bold?</b>')\n"
        "    return '<script>alert(2)</script>'\n"
        "def fail():\n    raise ValueError('<img src=x onerror=alert(3)>')\n"
    )
    assert status == "ok", outputs
    _, outputs = kernel.execute("%wb_proxy markup\nmarkup.show()")
    _, failed = kernel.execute("markup.fail()")
    outputs += failed
    assert ("stream", {"name": "stdout", "text": "<b>bold?</b>\n"}) in outputs
    for kind, content in outputs:
        if kind in ("display_data", "execute_result"):
            assert set(content["data"]) == {"text/plain"}, content
    assert failed[-1][1]["evalue"] == "<img src=x onerror=alert(3)>"  # an error output: shown as text


def test_in_a_kernel_the_workers_table_is_html(kernel):
    kernel.value("values.echo(1)")
    status, outputs = kernel.execute("%wb_workers")
    assert status == "ok"
    (kind, content), *_ = outputs
    assert kind == "display_data" and set(content["data"]) == {"text/plain", "text/html"}
    assert content["data"]["text/html"].startswith('<table class="wb-workers">')
    assert "values.py" in content["data"]["text/plain"]


def test_in_a_kernel_completion_and_remote_tracebacks(kernel):
    reply = kernel.client.complete("values.ech", 10, reply=True, timeout=30)
    content = reply["content"]
    assert {"echo", "echo_many"} <= set(content["matches"]) and content["cursor_start"] == len("values.")
    status, outputs = kernel.execute("values.raise_builtin('ValueError', 'bad value')")
    kind, content = outputs[-1]
    assert (kind, content["ename"], content["evalue"]) == ("error", "ValueError", "bad value")
    text = ANSI.sub("", "\n".join(content["traceback"]))
    assert "Remote traceback, in the worker" in text and "in raise_builtin" in text


def test_kernel_shutdown_terminates_its_workers(workers_dir):
    k = Kernel(workers_dir)
    try:
        assert k.execute("%load_ext wb_magic\n%wb_proxy values.py\n%wb_proxy -s x values.py other")[0] == "ok"
        pids = k.value("values.pid(), other.pid()")
    finally:
        k.stop()
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=30)
    assert alive == []
    assert os.path.isdir(workers_dir)


def test_cell_folders_of_killed_sessions_are_removed(tmp_path, monkeypatch):
    """A kernel that was killed leaves its %%wb_module folder behind; the next session's first cell removes
    the folders of processes that no longer run, and no other."""
    import subprocess
    import sys
    import tempfile

    from wb_magic import magics

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    orphan = tmp_path / f"{magics.CELLS_PREFIX}{ended.pid}-abc"
    alive = tmp_path / f"{magics.CELLS_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{magics.CELLS_PREFIX}notapid-ghi"
    for folder in (orphan, alive, other):
        folder.mkdir()
        (folder / "cell.py").write_text("x = 1\n")
    magics._remove_orphaned_cells()
    assert not orphan.exists()
    assert alive.exists() and other.exists()


# -- %%wb_trace ------------------------------------------------------------------------------------------------


def traced(ip, source: str):
    """Run a %%wb_trace cell; (the waterfall's text, its HTML, what the cell printed)."""
    formatter = ip.display_formatter
    types = formatter.active_types
    formatter.active_types = [*types, "text/html"]  # as in a notebook (the test shell is a terminal's)
    try:
        with capture_output() as out:
            ip.run_cell(f"%%wb_trace\n{source}")
    finally:
        formatter.active_types = types
    (picture,) = [o.data for o in out.outputs if "text/html" in o.data]
    return picture["text/plain"], picture["text/html"], ANSI.sub("", out.stdout + out.stderr)


def test_wb_trace_draws_a_call_across_workers(ip):
    ok(ip, "%%wb_module tr_back\ndef double(x):\n    return 2 * x\n")
    ok(ip, "%%wb_module tr_front\nfrom worker_kernel import broker_proxy\n"
           "back = broker_proxy().worker_proxy('./tr_back.py')\n"
           "def hop(x):\n    print('hopping')\n    return back.double(x) + 1\n")  # fmt: skip
    ok(ip, "%wb_proxy tr_front")
    text, page, printed = traced(ip, "print(tr_front.hop(20))")
    assert "hopping" in printed and "41" in printed  # the cell ran as usual
    lines = [line.split("[")[0].rstrip() for line in text.splitlines()]
    assert lines[0] == "%%wb_trace: 7 spans, 2 workers"
    assert [line.split()[0] for line in lines[1:]] == ["host", "host", "tr_front", "tr_front", "host", "tr_back",
                                                       "tr_back"]  # fmt: skip
    assert "route tr_back/double (internal)" in text
    assert "<script" not in page and page.count('class="wb-bar"') == 7
    rows = re.findall(r"<tr>(.*?)</tr>", page, re.DOTALL)
    assert len(rows) == 1 + 7
    for row in rows:  # process, span and kind read from the left (JupyterLab right-aligns cells that do not say)
        assert all("text-align:left" in cell for cell in re.findall(r"<t[hd][ >][^>]*>", row)[:3]), row
    assert wb_magic.tracing.tracer is None  # tracing is off again after the cell


def test_wb_trace_marks_errors_and_escapes_what_a_worker_names(ip):
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    ok(ip, f"%%wb_module tr_bad\ndef fail():\n    raise ValueError({hostile!r})\n")
    ok(ip, "%wb_proxy tr_bad")
    text, page, printed = traced(ip, "tr_bad.fail()")
    assert "ValueError" in printed  # the error is shown as usual
    assert "an error raised in tr_bad/fail (tr_bad)" in text.splitlines()[0]
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'fill="#d62728"' in page  # red bars


def test_wb_trace_without_the_sdk_says_how_to_install_it(ip, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if opentelemetry-sdk were not installed
    line = usage_error(ip, "%%wb_trace\n1 + 1")
    assert "pip install opentelemetry-sdk" in line


def test_wb_trace_refuses_a_cell_that_awaits_at_top_level(ip):
    line = usage_error(ip, "%%wb_trace\nimport asyncio\nawait asyncio.sleep(0)")
    assert "awaits at top level" in line


def test_wb_trace_also_sends_its_spans_to_the_sessions_exporter(ip):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from wb_magic.telemetry import WorkerBrokerInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    WorkerBrokerInstrumentor().instrument(tracer_provider=provider)
    try:
        ok(ip, "%%wb_module tr_session\ndef ping():\n    return 'pong'\n")
        ok(ip, "%wb_proxy tr_session")
        text, _, _ = traced(ip, "tr_session.ping()")
        assert wb_magic.tracing.tracer is not None  # the session's instrumentation is on again after the cell
    finally:
        WorkerBrokerInstrumentor().uninstrument()
    exported = {(s.name, s.kind.name) for s in exporter.get_finished_spans()}
    assert {("%%wb_trace", "INTERNAL"), ("tr_session/ping", "CLIENT"), ("tr_session/ping", "SERVER")} <= exported
    assert "tr_session/ping (server)" in text
