"""absurd-orm: durable execution for Python on SQLAlchemy (SQLite or PostgreSQL).

Public surface only: everything here is re-exported from its module.
"""

from .clock import ManualClock, system_clock
from .context import TaskContext, get_current_context
from .engine import DEFAULT_URL, Engine
from .errors import (
    AbsurdError,
    CancelledTask,
    FailedTask,
    InvalidTaskState,
    NotJSONSerializable,
    QueueNotFound,
    SchemaOutOfDate,
    SuspendTask,
    TaskNotFound,
    TimeoutError,
    UnsupportedDialect,
    ValidationError,
)
from .schema import metadata
from .types import (
    ClaimedTask,
    RetryTaskResult,
    RunInfo,
    SpawnResult,
    StepHandle,
    TaskInfo,
    TaskResultSnapshot,
)
from .workflow import Workflow

__version__ = "0.1.0"

__all__ = [
    "AbsurdError",
    "CancelledTask",
    "ClaimedTask",
    "DEFAULT_URL",
    "Engine",
    "FailedTask",
    "InvalidTaskState",
    "ManualClock",
    "NotJSONSerializable",
    "QueueNotFound",
    "RetryTaskResult",
    "RunInfo",
    "SchemaOutOfDate",
    "SpawnResult",
    "StepHandle",
    "SuspendTask",
    "TaskContext",
    "TaskInfo",
    "TaskNotFound",
    "TaskResultSnapshot",
    "TimeoutError",
    "UnsupportedDialect",
    "ValidationError",
    "Workflow",
    "get_current_context",
    "metadata",
    "system_clock",
]
