"""Worker lifecycle events, and the cleaners that receive them.

A `WorkerCleaner` is any callable that takes a `WorkerEvent`, as in the seed: ``"create"`` when a worker
starts, ``"get"`` on every access, ``"remove"`` when one ends, ``"terminate"`` when the broker ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .broker import Worker, WorkerBroker

EventType = Literal["create", "get", "remove", "terminate"]


@dataclass(frozen=True)
class WorkerEvent:
    type: EventType
    broker: WorkerBroker
    worker: Worker | None = None
    key: Any = None
    module: str | None = None
    segregation_id: str | None = None


WorkerCleaner = Callable[[WorkerEvent], None]
