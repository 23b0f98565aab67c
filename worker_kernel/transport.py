"""How a worker's sockets are secured: CurveZMQ keys from the connection file, and the refusal to listen in the
clear anywhere but on loopback.

A connection file may carry ``curve_publickey`` and ``curve_secretkey`` (Z85 text, as jupyter_client 8.9+ and
ipykernel 7 write them). With them, every socket the worker binds, the heartbeat included, is a CurveZMQ server:
traffic is encrypted, and a client that did not do the handshake with the server's public key gets nothing,
not even an echo. Messages are still signed with the connection's HMAC key, which is what authenticates the
broker (anyone holding the public key can complete a handshake).
"""

from __future__ import annotations

from typing import Any

import zmq

LOOPBACK_PREFIXES = ("127.",)
LOOPBACK_NAMES = ("localhost", "::1", "[::1]")


class PlaintextRefused(ValueError):
    """A worker was asked to listen on a network address without encryption keys."""


def is_loopback(connection: dict[str, Any]) -> bool:
    """Whether the connection's sockets are reachable from this host only (loopback TCP or IPC)."""
    if connection.get("transport", "tcp") != "tcp":
        return True  # ipc: a file on this host
    ip = str(connection.get("ip", "127.0.0.1"))
    return ip in LOOPBACK_NAMES or ip.startswith(LOOPBACK_PREFIXES)


def curve_keys(connection: dict[str, Any]) -> tuple[bytes, bytes] | None:
    """The server's (public, secret) Curve keys from a connection file, or None. A half pair is an error."""
    public, secret = connection.get("curve_publickey"), connection.get("curve_secretkey")
    if public is None and secret is None:
        return None
    keys = tuple(key.encode("ascii") if isinstance(key, str) else key for key in (public, secret))
    if not all(isinstance(key, bytes) and len(key) == 40 for key in keys):
        raise ValueError("the connection file's curve_publickey and curve_secretkey must both be 40-character Z85 keys")
    if not zmq.has("curve"):
        raise ValueError("the connection file has CurveZMQ keys, but this libzmq was built without CurveZMQ")
    return keys[0], keys[1]  # type: ignore[return-value]


def check(connection: dict[str, Any], allow_plaintext: bool = False) -> tuple[bytes, bytes] | None:
    """The Curve keys to serve with; raises `PlaintextRefused` for a network address without keys."""
    keys = curve_keys(connection)
    if keys is None and not allow_plaintext and not is_loopback(connection):
        raise PlaintextRefused(
            f"refusing to listen on {connection.get('ip')} without encryption: the connection file has no "
            "curve_publickey/curve_secretkey (anyone on the network could read and inject messages). Give it "
            "CurveZMQ keys, listen on 127.0.0.1, or pass --allow-plaintext to accept the risk."
        )
    return keys


def serve_curve(sock: zmq.Socket, keys: tuple[bytes, bytes]) -> None:
    """Make ``sock`` (not yet bound) a CurveZMQ server with the given (public, secret) keys."""
    sock.curve_secretkey = keys[1]
    sock.curve_publickey = keys[0]
    sock.curve_server = True


def connect_curve(sock: zmq.Socket, server_key: bytes) -> None:
    """Make ``sock`` (not yet connected) a CurveZMQ client of the server with public key ``server_key``, with
    a key pair of its own made for it."""
    public, secret = zmq.curve_keypair()
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_key
