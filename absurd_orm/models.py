"""Declarative SQLAlchemy models of absurd-orm's tables, on a MetaData of our own.

One set of tables serves every queue: each table has a ``queue`` column, and it leads
every index that claiming, lease expiry, wait lookup and event lookup use. Partial
indexes cover only live rows, so those lookups stay cheap however much history the
tables hold.

The Alembic revisions in ``migrations/versions`` create exactly this schema (a test
compares them); revisions never import this module.

Tables (Absurd's vocabulary): queues; tasks (the durable unit: name + params); runs (one
per attempt); checkpoints (stored step results, keyed by task and step name); events
(first emit per queue and name wins; ``emitted_at`` NULL marks a not-yet-emitted row);
waits (a sleeping run waiting for an event or for another task to finish).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    false,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .sqltypes import IdType, JSONType, UTCDateTime

__all__ = ["metadata", "Base", "Queue", "Task", "Run", "Checkpoint", "Event", "Wait", "SchemaVersion"]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: absurd-orm's own MetaData: list it next to a host's in Alembic's ``target_metadata``.
metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Live run states whose rows the claim index covers.
_CLAIMABLE = "state IN ('pending', 'sleeping')"
_RUNNING = "state = 'running'"


class Base(DeclarativeBase):
    """Declarative base bound to absurd-orm's MetaData (never the host's)."""

    metadata = metadata


class Queue(Base):
    """A named queue; tasks may only be spawned into queues that exist."""

    __tablename__ = "absurd_queues"

    queue_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Task(Base):
    """A durable unit of work; ``attempts`` is the number of the latest run."""

    __tablename__ = "absurd_tasks"

    task_id: Mapped[str] = mapped_column(IdType, primary_key=True)
    queue: Mapped[str] = mapped_column(
        String(64), ForeignKey("absurd_queues.queue_name"), nullable=False
    )
    task_name: Mapped[str] = mapped_column(String(255), nullable=False)
    params: Mapped[Any] = mapped_column(JSONType, nullable=True)
    headers: Mapped[Any] = mapped_column(JSONType, nullable=True)
    retry_strategy: Mapped[Any] = mapped_column(JSONType, nullable=True)
    max_attempts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_delay: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_duration: Mapped[float | None] = mapped_column(Float, nullable=True)
    # When the cancellation policy fires next: enqueued_at + max_delay before the first
    # start, first_started_at + max_duration after it, NULL otherwise or once terminal.
    cancel_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    last_attempt_run: Mapped[str | None] = mapped_column(IdType, nullable=True)
    result: Mapped[Any] = mapped_column(JSONType, nullable=True)
    # Set once another task awaits this one, so finishing only looks for waiters then.
    has_waiters: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    enqueued_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    first_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("queue", "idempotency_key"),
        Index("ix_absurd_tasks_queue_task_id", "queue", "task_id"),
        Index(
            "ix_absurd_tasks_cancel_at",
            "queue",
            "cancel_at",
            postgresql_where=text("cancel_at IS NOT NULL"),
            sqlite_where=text("cancel_at IS NOT NULL"),
        ),
    )


class Run(Base):
    """One attempt at a task; ``available_at`` NULL means "wait without a timer"."""

    __tablename__ = "absurd_runs"

    run_id: Mapped[str] = mapped_column(IdType, primary_key=True)
    queue: Mapped[str] = mapped_column(String(64), nullable=False)
    task_id: Mapped[str] = mapped_column(IdType, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    # How often this run was claimed: 1 on an attempt's first execution, when no
    # checkpoint can exist yet for a first attempt (the claim skips loading them).
    claim_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    claimed_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    claim_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    available_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    wake_event: Mapped[str | None] = mapped_column(String(255), nullable=True)
    wake_step: Mapped[str | None] = mapped_column(String(255), nullable=True)
    event_payload: Mapped[Any] = mapped_column(JSONType, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    result: Mapped[Any] = mapped_column(JSONType, nullable=True)
    failure: Mapped[Any] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        Index(
            "ix_absurd_runs_claim",
            "queue",
            "available_at",
            "run_id",
            postgresql_where=text(_CLAIMABLE),
            sqlite_where=text(_CLAIMABLE),
        ),
        Index(
            "ix_absurd_runs_lease",
            "queue",
            "claim_expires_at",
            postgresql_where=text(_RUNNING),
            sqlite_where=text(_RUNNING),
        ),
        Index("ix_absurd_runs_task_id", "task_id"),
    )


class Checkpoint(Base):
    """A stored step result; ``status`` is ``committed`` or ``timeout`` (a wait ran out)."""

    __tablename__ = "absurd_checkpoints"

    task_id: Mapped[str] = mapped_column(IdType, primary_key=True)
    checkpoint_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    queue: Mapped[str] = mapped_column(String(64), nullable=False)
    state: Mapped[Any] = mapped_column(JSONType, nullable=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    owner_run_id: Mapped[str | None] = mapped_column(IdType, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Event(Base):
    """An event per (queue, name): the first emit wins and stays cached."""

    __tablename__ = "absurd_events"

    queue: Mapped[str] = mapped_column(
        String(64), ForeignKey("absurd_queues.queue_name"), primary_key=True
    )
    event_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    payload: Mapped[Any] = mapped_column(JSONType, nullable=True)
    emitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (Index("ix_absurd_events_queue_emitted_at", "queue", "emitted_at"),)


class Wait(Base):
    """A sleeping run waiting for an event or for another task to reach a terminal state."""

    __tablename__ = "absurd_waits"

    run_id: Mapped[str] = mapped_column(IdType, primary_key=True)
    step_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    queue: Mapped[str] = mapped_column(String(64), nullable=False)
    task_id: Mapped[str] = mapped_column(IdType, nullable=False)
    event_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    awaited_task_id: Mapped[str | None] = mapped_column(IdType, nullable=True)
    timeout_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        Index("ix_absurd_waits_queue_event_name", "queue", "event_name"),
        Index("ix_absurd_waits_awaited_task_id", "awaited_task_id"),
        Index("ix_absurd_waits_task_id", "task_id"),
    )


class SchemaVersion(Base):
    """One row: the absurd-orm revision the schema is at, whichever Alembic history ran it."""

    __tablename__ = "absurd_schema_version"

    revision: Mapped[str] = mapped_column(String(32), primary_key=True)


queues = Queue.__table__
tasks = Task.__table__
runs = Run.__table__
checkpoints = Checkpoint.__table__
events = Event.__table__
waits = Wait.__table__
schema_version = SchemaVersion.__table__
