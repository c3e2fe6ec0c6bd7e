"""Declarative SQLAlchemy models over absurd-orm's tables, for queries in your own code.

>>> from sqlalchemy import select
>>> from absurd_orm.models import Task
>>> session.scalars(select(Task).where(Task.state == "failed")).all()

Each class is mapped onto a table of :mod:`absurd_orm.schema` (same ``metadata``). The
engine itself uses the Core tables, so importing this module (and the ORM) is only for
applications that want mapped classes. Treat the rows as read-only: every state change
goes through the engine, which keeps the invariants documented in the repository.
"""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase

from .schema import checkpoints, events, metadata, queues, runs, schema_version, tasks, waits

__all__ = ["metadata", "Base", "Queue", "Task", "Run", "Checkpoint", "Event", "Wait",
           "SchemaVersion", "queues", "tasks", "runs", "checkpoints", "events", "waits",
           "schema_version"]


class Base(DeclarativeBase):
    """Declarative base bound to absurd-orm's MetaData (never the host's)."""

    metadata = metadata


class Queue(Base):
    """A named queue; tasks may only be spawned into queues that exist."""

    __table__ = queues


class Task(Base):
    """A durable unit of work; ``attempts`` is the number of the latest run."""

    __table__ = tasks


class Run(Base):
    """One attempt at a task; ``available_at`` NULL means "wait without a timer"."""

    __table__ = runs


class Checkpoint(Base):
    """A stored step result; ``status`` is ``committed`` or ``timeout`` (a wait ran out)."""

    __table__ = checkpoints


class Event(Base):
    """An event per (queue, name): the first emit wins and stays cached."""

    __table__ = events


class Wait(Base):
    """A sleeping run waiting for an event or for another task to reach a terminal state."""

    __table__ = waits


class SchemaVersion(Base):
    """The revision absurd-orm's schema is at."""

    __table__ = schema_version
