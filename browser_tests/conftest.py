"""A real JupyterLab, and Debian's Chromium driven by Playwright, for the browser tests (``make browser-test``).

The server runs from this project's environment with private Jupyter folders (config, data, runtime, settings,
workspaces, IPython profile), on a free loopback port, with a token. It serves a copy of ``notebooks/`` (the
lab saves what it runs; the tracked notebooks stay untouched). Its ``python3`` kernel spec, in a private
JUPYTER_PATH, runs this environment's Python. At the end every process the session started is gone: the test
fails if one is left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from .lab import Lab

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
CHROMIUM = Path(os.environ.get("WB_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(os.environ.get("WB_SCREENSHOTS", REPO / "build" / "browser-screenshots"))
SERVER_START_TIMEOUT = 180  # seconds: a cold start on a busy 2-core machine
# Chromium on a machine with no network: without these it keeps trying to reach Google's services
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--disable-dev-shm-usage",
]

# JupyterLab settings: every cell in the DOM (no windowing), no news or update checks (no network here), no
# autosave while cells run
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SCREENSHOTS.is_dir():
        terminalreporter.write_line(f"browser test screenshots: {SCREENSHOTS.resolve()}")


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """The folder the screenshots go to (WB_SCREENSHOTS, or build/browser-screenshots in the checkout)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in [*SCREENSHOTS.glob("*.png"), *SCREENSHOTS.glob("FAILED-*.log")]:
        old.unlink()
    return SCREENSHOTS


@pytest.fixture(scope="session")
def started() -> Iterator[list[psutil.Process]]:
    """Every process this session started, checked at the very end: none may outlive the tests."""
    seen: list[psutil.Process] = []
    yield seen
    me = psutil.Process()
    seen.extend(me.children(recursive=True))
    _, alive = psutil.wait_procs(seen, timeout=30)
    for proc in alive:
        _kill_quietly(proc)
    if alive:
        pytest.fail(
            "processes left behind by the browser tests (now killed): " + ", ".join(_describe(p) for p in alive)
        )


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:120]}"
    except psutil.Error:
        return str(proc.pid)


def _kill_quietly(proc: psutil.Process) -> None:
    try:
        proc.kill()
    except psutil.Error:
        pass


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the lab serves: a copy of notebooks/ (modules included)."""
    root = tmp_path_factory.mktemp("lab") / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns("scratch", "__pycache__", ".ipynb_checkpoints"))
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jupyter_env(home: Path) -> dict[str, str]:
    """Private Jupyter folders, with a ``python3`` kernel spec for this environment's Python."""
    folders = {
        "JUPYTER_CONFIG_DIR": home / "config",
        "JUPYTER_DATA_DIR": home / "data",
        "JUPYTER_RUNTIME_DIR": home / "runtime",
        "JUPYTER_PATH": home / "path",
        "JUPYTERLAB_SETTINGS_DIR": home / "settings",
        "JUPYTERLAB_WORKSPACES_DIR": home / "workspaces",
        "IPYTHONDIR": home / "ipython",
    }
    for folder in folders.values():
        folder.mkdir(parents=True)
    spec = folders["JUPYTER_PATH"] / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3 (ipykernel)", "language": "python", "interrupt_mode": "signal"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    for name, values in SETTINGS.items():
        path = folders["JUPYTERLAB_SETTINGS_DIR"] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON"))}
    env.update({k: str(v) for k, v in folders.items()})
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    return env


class Server:
    """A JupyterLab server process, its log, and the URL it serves on once it is ready."""

    def __init__(self, root: Path, home: Path) -> None:
        self.port = _free_port()
        self.token = secrets.token_hex(24)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log: list[str] = []
        self._ready = threading.Event()
        argv = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
            "--ServerApp.terminals_enabled=False",
        ] + (["--allow-root"] if os.geteuid() == 0 else [])  # fmt: skip
        self.process = subprocess.Popen(
            argv,
            cwd=root,
            env=_jupyter_env(home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip("\n"))
            if f"127.0.0.1:{self.port}/lab" in line:
                self._ready.set()
        self.process.wait()
        self._ready.set()  # it ended: whoever waits sees that

    def wait_ready(self) -> None:
        if not self._ready.wait(SERVER_START_TIMEOUT) or self.process.poll() is not None:
            raise RuntimeError(
                f"JupyterLab did not start within {SERVER_START_TIMEOUT} s (exit code {self.process.poll()}):\n"
                + "\n".join(self.log[-40:])
            )

    def api(self, method: str, path: str) -> Any:
        """A call to the server's REST API; its JSON answer (None when it has none)."""
        request = urllib.request.Request(
            f"{self.base}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def stop(self) -> None:
        """Shut the kernels and the server down through the API, then make sure the process group is gone."""
        if self.process.poll() is None:
            try:
                self.api("POST", "/api/shutdown")
                self.process.wait(timeout=60)
            except Exception:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


_servers: list[Server] = []  # the session's server, for the log of a failed test


@pytest.fixture(scope="session")
def server(lab_root: Path, tmp_path_factory: pytest.TempPathFactory, started: list[psutil.Process]) -> Iterator[Server]:
    lab = Server(lab_root, tmp_path_factory.mktemp("jupyter-home"))
    _servers.append(lab)
    started.append(psutil.Process(lab.process.pid))
    try:
        lab.wait_ready()
        yield lab
    finally:
        started.extend(_descendants(lab.process.pid))
        lab.stop()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: the browser tests drive Debian's Chromium. Install it with "
            "`apt-get update && apt-get install -y chromium` (as root), or point WB_CHROMIUM at a Chromium binary."
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def browser_context(chromium: Path, tmp_path_factory: pytest.TempPathFactory, started: list[psutil.Process]):
    """Headless Chromium with a fresh profile; its whole process group is ended at the end."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS + (["--no-sandbox"] if os.geteuid() == 0 else []),
            viewport={"width": 1280, "height": 1000},
            timeout=120_000,
        )
        browsers = [p for p in psutil.Process().children(recursive=True) if str(profile) in " ".join(_cmdline(p))]
        started.extend(browsers)
        try:
            yield context
        finally:
            context.close()
            for proc in browsers:  # Playwright starts Chromium in a process group of its own
                try:
                    group = os.getpgid(proc.pid)
                    if proc.is_running() and group != os.getpgrp():
                        os.killpg(group, signal.SIGKILL)
                except (ProcessLookupError, PermissionError, psutil.Error):
                    pass


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


@pytest.fixture(scope="session")
def lab(server: Server, browser_context, screenshots: Path) -> Lab:
    return Lab(browser_context, server.base, server.token, screenshots)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failed test (or its set-up) leaves a screenshot of the page and the server's log, FAILED-<test>.png and
    .log, beside the other screenshots."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        name = "FAILED-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in item.name)
        session_lab = getattr(item, "funcargs", {}).get("lab") or getattr(item, "funcargs", {}).get("scratch")
        if isinstance(session_lab, Lab):
            try:
                session_lab.screenshot(name)
            except Exception:
                pass
        for lab_server in _servers:  # and the server's log, for what the kernels said
            (SCREENSHOTS / f"{name}.log").write_text("\n".join(lab_server.log) + "\n")
    return report
