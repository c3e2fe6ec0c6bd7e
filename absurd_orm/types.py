"""Value objects returned by the public API. All ids are strings; datetimes are aware UTC."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, Mapping

__all__ = [
    "TaskState",
    "TERMINAL_STATES",
    "SpawnResult",
    "RetryTaskResult",
    "ClaimedTask",
    "TaskResultSnapshot",
    "StepHandle",
    "RunInfo",
    "TaskInfo",
]

TaskState = Literal["pending", "running", "sleeping", "completed", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class _Subscriptable:
    """Lets results answer ``result["task_id"]`` like the dicts of Absurd's SDK."""

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def keys(self) -> list[str]:
        """Field names, so ``dict(result)`` works."""
        return list(asdict(self).keys())  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class SpawnResult(_Subscriptable):
    """What ``spawn`` returns; ``created`` is False when an idempotency key matched."""

    task_id: str
    run_id: str
    attempt: int
    created: bool = True


@dataclass(frozen=True, slots=True)
class RetryTaskResult(_Subscriptable):
    """What ``retry_task`` returns (the same task in place, or a new one)."""

    task_id: str
    run_id: str
    attempt: int
    created: bool


@dataclass(frozen=True, slots=True)
class ClaimedTask(_Subscriptable):
    """A run handed to a worker by ``claim_tasks``, with what it needs to execute."""

    run_id: str
    task_id: str
    task_name: str
    attempt: int
    params: Any
    headers: Mapping[str, Any] | None
    retry_strategy: Mapping[str, Any] | None
    max_attempts: int | None
    wake_event: str | None = None
    event_payload: Any = None
    queue_name: str = "default"
    claim_expires_at: datetime | None = None
    wake_step: str | None = None
    checkpoints: Mapping[str, tuple[str, Any]] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class TaskResultSnapshot:
    """A task's state and, once terminal, its result or failure."""

    state: TaskState
    result: Any = None
    failure: Mapping[str, Any] | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the task is completed, failed or cancelled."""
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class StepHandle:
    """A step begun with ``begin_step``; ``done`` means a stored result exists."""

    name: str
    checkpoint_name: str
    done: bool
    state: Any = None


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One attempt of a task, as stored."""

    run_id: str
    task_id: str
    attempt: int
    state: str
    claimed_by: str | None
    claim_expires_at: datetime | None
    available_at: datetime | None
    wake_event: str | None
    event_payload: Any
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    result: Any
    failure: Mapping[str, Any] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task with its runs and checkpoints (``list_tasks`` leaves those empty)."""

    task_id: str
    queue: str
    task_name: str
    state: str
    attempts: int
    max_attempts: int | None
    params: Any
    headers: Mapping[str, Any] | None
    retry_strategy: Mapping[str, Any] | None
    cancellation: Mapping[str, Any] | None
    result: Any
    failure: Mapping[str, Any] | None
    idempotency_key: str | None
    enqueued_at: datetime
    first_started_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    last_attempt_run: str | None
    runs: list[RunInfo] = field(default_factory=list)
    checkpoints: dict[str, Any] = field(default_factory=dict)
