"""``python -m worker_kernel.launcher``: start a worker on this host for a broker elsewhere, speaking the
kernel-launcher protocol of gateway_provisioners (DistributedProvisioner over SSH, and the container
provisioners), which a kernel spec's ``argv`` fills in::

    python -m worker_kernel.launcher --kernel-id {kernel_id} --response-address {response_address}
        --public-key {public_key} --port-range {port_range} --transport-encryption {transport_encryption}

The launcher picks the worker's ports (within ``--port-range``), makes its HMAC key and a CurveZMQ key pair,
starts ``python -m worker_kernel`` as its child, and sends the connection information back to the response
address, encrypted as the protocol has it (an AES key wrapped with the broker's RSA public key). The Curve keys
are made here, on the worker's host, and travel only inside that payload. Then it listens on the protocol's
communication port for signal and shutdown requests (``{"signum": N}``, ``{"shutdown": 1}``), forwards
signals to the worker, and exits when the worker does: a closed port is how the broker's side learns that the
worker is gone.

The container provisioners pass the same values in the environment (``KERNEL_ID``, ``RESPONSE_ADDRESS``,
``PUBLIC_KEY``, ``PORT_RANGE``, ``TRANSPORT_ENCRYPTION``), so a container image's command can be just
``python -m worker_kernel.launcher``.

The payload's cryptography needs the ``cryptography`` package (``pip install wb-magic[remote]``); it is imported
by this launcher only, never by the worker itself.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import zmq

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
PAYLOAD_VERSION = 1  # the protocol's payload format: {"version", "key": RSA-wrapped AES key, "conn_info"}
REQUEST_LIMIT = 64 * 1024  # bytes a signal or shutdown request may take
REQUEST_TIMEOUT = 5.0  # seconds a connection to the communication port may take to send its request
SIGNALS = {0, signal.SIGINT, signal.SIGTERM, signal.SIGKILL}  # what a request may send (0 = "are you there?")
SHUTDOWN_GRACE = 10.0  # seconds the worker gets to exit after a shutdown request before it is killed
DEFAULT_BROKER_TIMEOUT = 10.0  # seconds without a heartbeat from the broker after which the worker exits


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    options = parser.parse_args(argv)
    for name in ("kernel_id", "response_address", "public_key"):
        if not getattr(options, name):
            parser.error(f"--{name.replace('_', '-')} (or ${name.upper()}) is required")
    encrypt = _payload_cipher(options.public_key)  # fails early, with what to install, when it cannot
    lower, upper = _port_range(options.port_range)
    sockets = [_bound(options.ip, lower, upper) for _ in (*CHANNELS, "comm")]
    comm = sockets.pop()
    comm.listen(8)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:  # the worker binds these a moment later
        sock.close()
    connection: dict[str, Any] = {
        **{f"{channel}_port": port for channel, port in zip(CHANNELS, ports, strict=True)},
        "ip": options.ip,
        "transport": "tcp",
        "signature_scheme": "hmac-sha256",
        "key": secrets.token_hex(32),
        "kernel_name": "wb-remote",
    }
    if not options.allow_plaintext:
        public, secret = zmq.curve_keypair()
        connection["curve_publickey"], connection["curve_secretkey"] = public.decode(), secret.decode()
    folder = tempfile.mkdtemp(prefix="wb-remote-")  # 0700: the connection file holds the keys
    try:
        worker = _start_worker(options, folder, connection)
        try:
            info = {**connection, "pid": worker.pid, "pgid": os.getpgid(worker.pid)}
            info.update(comm_port=comm.getsockname()[1], kernel_id=options.kernel_id)
            _respond(options.response_address, encrypt(json.dumps(info).encode()))
            code = _serve(comm, worker)
        finally:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    finally:
        comm.close()
        shutil.rmtree(folder, ignore_errors=True)
    sys.exit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker_kernel.launcher", description=__doc__.split("\n\n")[0])
    # the container provisioners pass these in the environment (KERNEL_ID, RESPONSE_ADDRESS, ...) instead
    env = os.environ.get
    parser.add_argument("--kernel-id", default=env("KERNEL_ID"), help="the kernel's id, sent back with its info")
    parser.add_argument("--response-address", default=env("RESPONSE_ADDRESS"), metavar="IP:PORT", help="where to")
    parser.add_argument("--public-key", default=env("PUBLIC_KEY"), help="the broker's RSA public key (base64 DER)")
    parser.add_argument(
        "--port-range", default=env("PORT_RANGE") or "0..0", metavar="LOW..HIGH", help="ports to use (0..0: any)"
    )
    parser.add_argument(
        "--transport-encryption",
        nargs="?",
        default=os.environ.get("TRANSPORT_ENCRYPTION", ""),
        help="the provisioner's policy; this launcher always makes CurveZMQ keys unless --allow-plaintext",
    )
    parser.add_argument("--ip", default="0.0.0.0", help="the address the worker listens on (default: all)")
    parser.add_argument("--allow-plaintext", action="store_true", help="no CurveZMQ keys: traffic in the clear")
    parser.add_argument(
        "--broker-timeout",
        type=float,
        default=DEFAULT_BROKER_TIMEOUT,
        metavar="SECONDS",
        help="the worker exits when no heartbeat came from its broker for this long",
    )
    parser.add_argument("--hooks", help="MODULE[:NAME], as for python -m worker_kernel")
    return parser


def _payload_cipher(public_key: str) -> Any:
    """A function that encrypts a payload for the broker: AES-128 (ECB, PKCS#7, as the protocol has it) under a
    fresh key, which is wrapped with the broker's RSA key (PKCS#1 v1.5)."""
    try:
        from cryptography.hazmat.primitives import padding
        from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.serialization import load_der_public_key
    except ImportError:
        sys.exit("wb-magic launcher: the 'cryptography' package is missing: pip install 'wb-magic[remote]'")
    rsa_key: Any = load_der_public_key(base64.b64decode(public_key))

    def encrypt(data: bytes) -> bytes:
        aes_key = secrets.token_bytes(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(data) + padder.finalize()
        encryptor = Cipher(algorithms.AES(aes_key), modes.ECB()).encryptor()
        sealed = encryptor.update(padded) + encryptor.finalize()
        payload = {
            "version": PAYLOAD_VERSION,
            "key": base64.b64encode(rsa_key.encrypt(aes_key, PKCS1v15())).decode(),
            "conn_info": base64.b64encode(sealed).decode(),
        }
        return base64.b64encode(json.dumps(payload).encode())

    return encrypt


def _port_range(text: str) -> tuple[int, int]:
    try:
        lower, upper = (int(part) for part in text.split(".."))
    except ValueError:
        sys.exit(f"wb-magic launcher: --port-range must be LOW..HIGH, not {text!r}")
    if (lower, upper) != (0, 0) and not 1024 <= lower < upper <= 65535:
        sys.exit(f"wb-magic launcher: --port-range {text} is not within 1024..65535")
    return lower, upper


def _bound(ip: str, lower: int, upper: int, tries: int = 50) -> socket.socket:
    """A TCP socket bound to a free port of the range (any port for 0..0)."""
    for _ in range(tries):
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((ip, random.randint(lower, upper) if upper else 0))
            return sock
        except OSError:
            sock.close()
    sys.exit(f"wb-magic launcher: no free port in {lower}..{upper} on {ip}")


def _start_worker(options: argparse.Namespace, folder: str, connection: dict[str, Any]) -> subprocess.Popen:
    path = os.path.join(folder, "kernel.json")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
        json.dump(connection, f)
    command = [sys.executable, "-m", "worker_kernel", "-f", path, "--broker-timeout", str(options.broker_timeout)]
    if options.allow_plaintext:
        command.append("--allow-plaintext")
    if options.hooks:
        command += ["--hooks", options.hooks]
    env = {**os.environ, "JPY_PARENT_PID": str(os.getpid())}  # the worker exits with its launcher
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)


def _respond(address: str, payload: bytes) -> None:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=30) as sock:
        sock.sendall(payload)


def _serve(comm: socket.socket, worker: subprocess.Popen) -> int:
    """Answer the communication port until the worker ends; its exit code."""
    watch = os.pidfd_open(worker.pid)
    deadline: float | None = None  # after a shutdown request: when the worker is killed
    try:
        while True:
            ready, _, _ = select.select([comm.fileno(), watch], [], [], _remaining(deadline))
            if watch in ready:
                return worker.wait()
            if comm.fileno() not in ready:  # a shutdown request's grace is over
                worker.kill()
                return worker.wait()
            request = _request(comm)
            if request.get("shutdown"):
                deadline = deadline or time.monotonic() + SHUTDOWN_GRACE
            signum = request.get("signum")
            if type(signum) is int and signum in SIGNALS and signum != 0:
                try:
                    os.kill(worker.pid, signum)
                except ProcessLookupError:
                    pass
    finally:
        os.close(watch)


def _request(comm: socket.socket) -> dict[str, Any]:
    """One request from the communication port (an empty dict for a malformed one)."""
    conn, _ = comm.accept()
    data = b""
    with conn:
        conn.settimeout(REQUEST_TIMEOUT)
        try:
            while len(data) <= REQUEST_LIMIT and (chunk := conn.recv(4096)):
                data += chunk
                request = _parsed(data)  # complete: no need to wait for the sender to close
                if request is not None:
                    return request
        except OSError:
            pass
    return _parsed(data) or {}


def _parsed(data: bytes) -> dict[str, Any] | None:
    try:
        request = json.loads(data)
    except ValueError:
        return None
    return request if isinstance(request, dict) else {}


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


if __name__ == "__main__":
    main()
