"""A second host for tests/test_remote.py, made on this machine: a network namespace with its own address on a
veth pair, a mount namespace of its own that hides the test modules, and an OpenSSH server run by hand in it.

Needs root, ``ip`` (iproute2), ``unshare``/``nsenter`` (util-linux) and Debian's openssh-server
(tests/install_sshd.sh, which `make test` runs). Traffic stays on the veth pair and on loopback. Everything is
named after the test process's pid, so that runs side by side do not meet, and a run that finds the leftovers
of a run whose process is gone removes them first.
"""

from __future__ import annotations

import atexit
import os
import select
import shutil
import signal
import subprocess
import threading
from pathlib import Path

PREFIX = "wbrmt"  # network namespaces and veth ends: wbrmt<pid> (namespace), wbrmt<pid>h / wbrmt<pid>r (veth)
RUN_ROOT = Path("/run/wb-remote-test")  # keys, configs and logs of each run (visible inside the namespace)
SSHD = "/usr/sbin/sshd"
READY_TIMEOUT = 30.0  # seconds for sshd to listen


def missing() -> str | None:
    """Why this machine cannot host the test host, or None."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "nsenter", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"needs {tool} (tests/install_sshd.sh installs it)"
    if not os.access(SSHD, os.X_OK):
        return f"needs {SSHD}: Debian's openssh-server (tests/install_sshd.sh installs it)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _addresses(pid: int) -> tuple[str, str]:
    """A /30 of the link-local range for this run: (this host's end, the test host's end)."""
    index = pid % (200 * 64)
    third, fourth = 1 + index // 64, (index % 64) * 4
    if third >= 169:  # never near 169.254.169.254, where clouds answer
        third += 1
    return f"169.254.{third}.{fourth + 1}", f"169.254.{third}.{fourth + 2}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(namespace: str) -> None:
    """Kill whatever runs in ``namespace``, then delete it with its veth pair and its run folder."""
    pids = _ip("netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    for pid in pids:  # wait for each to be gone (a zombie of ours is reaped by its Popen)
        try:
            fd = os.pidfd_open(int(pid))
        except (ProcessLookupError, ValueError):
            continue
        try:
            select.select([fd], [], [], 10)
        finally:
            os.close(fd)
    _ip("netns", "delete", namespace, check=False)
    _ip("link", "delete", f"{namespace}h", check=False)  # gone with its peer, unless the namespace lingered
    shutil.rmtree(RUN_ROOT / namespace, ignore_errors=True)


def remove_leftovers() -> list[str]:
    """Remove the namespaces of earlier runs whose test process has ended (a run that was killed)."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit() and not _alive(int(name[len(PREFIX) :])):
            _remove(name)
            removed.append(name)
    for folder in RUN_ROOT.glob(f"{PREFIX}*") if RUN_ROOT.is_dir() else ():
        suffix = folder.name[len(PREFIX) :]
        if suffix.isdigit() and not _alive(int(suffix)):
            shutil.rmtree(folder, ignore_errors=True)
    return removed


class RemoteHost:
    """The test host: ``address`` is its IP, ``local_address`` ours on the same link; ``home`` is a HOME whose
    ``.ssh`` holds a user key the host accepts for root and the host's key in ``known_hosts``. ``hidden`` are
    the folders of this machine that the host cannot see (tmpfs mounted over them)."""

    def __init__(self, hidden: list[Path]) -> None:
        self.namespace = f"{PREFIX}{os.getpid()}"
        self.local_address, self.address = _addresses(os.getpid())
        self.run = RUN_ROOT / self.namespace
        self.home = self.run / "home"
        self.hidden = [p.resolve() for p in hidden]
        self.sshd: subprocess.Popen | None = None
        self.listening = False

    def start(self) -> None:
        atexit.register(self.stop)  # a run interrupted past its fixtures' teardown still removes the host
        try:
            self._network()
            self._keys()
            self._sshd()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.kill()
        if self.sshd is not None:
            self.sshd.wait(30)
        _remove(self.namespace)

    def _network(self) -> None:
        ns, host_end, remote_end = self.namespace, f"{self.namespace}h", f"{self.namespace}r"
        _ip("netns", "add", ns)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", remote_end, "netns", ns)
        _ip("addr", "add", f"{self.local_address}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("-n", ns, "addr", "add", f"{self.address}/30", "dev", remote_end)
        _ip("-n", ns, "link", "set", remote_end, "up")
        _ip("-n", ns, "link", "set", "lo", "up")

    def _keys(self) -> None:
        ssh = self.home / ".ssh"
        ssh.mkdir(parents=True, mode=0o700)
        os.chmod(self.run, 0o700)
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*keygen, "-f", str(self.run / "host_key"), "-C", "wb-remote-test host"], check=True)
        subprocess.run([*keygen, "-f", str(ssh / "id_ed25519"), "-C", "wb-remote-test user"], check=True)
        shutil.copy(ssh / "id_ed25519.pub", self.run / "authorized_keys")
        host_key = (self.run / "host_key.pub").read_text().split()
        (ssh / "known_hosts").write_text(f"{self.address} {host_key[0]} {host_key[1]}\n")
        (self.run / "sshd_config").write_text(
            f"ListenAddress {self.address}\n"
            "Port 22\n"
            f"HostKey {self.run / 'host_key'}\n"
            f"PidFile {self.run / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.run / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PrintMotd no\n"
            "X11Forwarding no\n"
            "AllowTcpForwarding no\n"
        )

    def _sshd(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # OpenSSH's privilege separation folder
        masks = " && ".join(f"mount -t tmpfs -o size=1m,mode=0755 wb-hidden '{p}'" for p in self.hidden)
        script = f"{masks} && exec {SSHD} -D -e -f '{self.run / 'sshd_config'}'"
        self.sshd = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.namespace,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        listening = threading.Event()
        threading.Thread(target=self._log_sshd, args=(listening,), daemon=True).start()
        if not listening.wait(READY_TIMEOUT) or not self.listening:
            log = (self.run / "sshd.log").read_text(errors="replace") if (self.run / "sshd.log").exists() else ""
            raise RuntimeError(f"sshd in {self.namespace} did not start: {log}")

    def _log_sshd(self, listening: threading.Event) -> None:
        """Copy sshd's log to sshd.log (the pipe must never fill up); tell when it listens or has ended."""
        assert self.sshd is not None and self.sshd.stderr is not None
        with open(self.run / "sshd.log", "ab", buffering=0) as log:
            for line in self.sshd.stderr:
                log.write(line)
                if b"Server listening on" in line:
                    self.listening = True
                    listening.set()
        listening.set()  # sshd ended: start() finds it dead rather than waiting out its time

    def enter(self) -> list[str]:
        """The command prefix that runs a program on the test host (its network and mount namespaces)."""
        assert self.sshd is not None
        return ["nsenter", "-t", str(self.sshd.pid), "-n", "-m"]

    def cut(self) -> None:
        """Cut the link to the test host (this host's end of the veth pair goes down)."""
        _ip("link", "set", f"{self.namespace}h", "down")

    def mend(self) -> None:
        _ip("link", "set", f"{self.namespace}h", "up")

    def pids(self) -> set[int]:
        """The processes running on the test host, sshd's included."""
        return {int(pid) for pid in _ip("netns", "pids", self.namespace, check=False).stdout.split()}
