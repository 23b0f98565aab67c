"""A worker's connection file, written again when the worker had to listen on other ports than it was given."""

from __future__ import annotations

import json
import os
from typing import Any


def write_connection_file(path: str, connection: dict[str, Any]) -> None:
    """Replace a connection file with ``connection`` (its ports changed), atomically and readable by its owner
    only, as jupyter_client writes it."""
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(connection, f, indent=2)
    os.replace(temporary, path)
