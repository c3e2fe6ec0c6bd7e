"""Exception hierarchy: every error raised on purpose subclasses :class:`AbsurdError`.

Where the meaning matches a built-in, the class also subclasses it (``ValueError``,
``TypeError``, ``LookupError``, ``TimeoutError``) so callers can catch either.
"""

from __future__ import annotations

import builtins

__all__ = [
    "AbsurdError",
    "ValidationError",
    "SchemaOutOfDate",
    "UnsupportedDialect",
    "QueueNotFound",
    "TaskNotFound",
    "InvalidTaskState",
    "NotJSONSerializable",
    "TimeoutError",
    "CancelledTask",
    "FailedTask",
    "SuspendTask",
]


class AbsurdError(Exception):
    """Base class of every error absurd-orm raises on purpose."""


class ValidationError(AbsurdError, ValueError):
    """An argument is invalid (a name, a number, an option): nothing was written."""


class SchemaOutOfDate(AbsurdError, RuntimeError):
    """The database schema is missing or older than this version of absurd-orm."""


class UnsupportedDialect(AbsurdError, ValueError):
    """The SQLAlchemy dialect (or its server version) is not supported."""


class QueueNotFound(AbsurdError, ValueError):
    """The named queue does not exist (create it with ``Engine.create_queue``)."""


class TaskNotFound(AbsurdError, LookupError):
    """No task with that id exists in that queue."""


class InvalidTaskState(AbsurdError, ValueError):
    """The operation is not allowed in the task's current state."""


class NotJSONSerializable(AbsurdError, TypeError):
    """A value that must be stored is not strict standard JSON."""


class TimeoutError(AbsurdError, builtins.TimeoutError):  # noqa: A001 - mirrors Absurd's SDK
    """Waiting for an event or a task result ran out of time."""


class CancelledTask(AbsurdError):
    """The running task was cancelled; its worker stops executing it."""


class FailedTask(AbsurdError):
    """The run lost its lease (or already failed): its writes are refused (fencing)."""


class SuspendTask(AbsurdError):
    """Internal control flow: the handler suspended (sleep or wait). Do not catch it."""
