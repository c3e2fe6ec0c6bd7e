"""absurd-orm's tables in SQLAlchemy Core, on a MetaData of our own.

One set of tables serves every queue: each table has a ``queue`` column, and it leads
every index that claiming, lease expiry, wait lookup and event lookup use. Partial
indexes cover only live rows, so those lookups stay cheap however much history the
tables hold.

Tables (Absurd's vocabulary): queues; tasks (the durable unit: name + params); runs (one
per attempt); checkpoints (stored step results, keyed by task and step name); events
(first emit per queue and name wins; ``emitted_at`` NULL marks a not-yet-emitted row);
waits (a sleeping run waiting for an event or for another task to finish); and a
one-row schema version marker.

The engine works on these Core tables only, so a worker never imports the ORM;
:mod:`absurd_orm.models` maps declarative classes onto them. The Alembic revisions in
``migrations/versions`` create exactly this schema (a test compares them).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    false,
    text,
)

from .sqltypes import IdType, JSONType, UTCDateTime

__all__ = ["metadata", "queues", "tasks", "runs", "checkpoints", "events", "waits",
           "schema_version"]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: absurd-orm's own MetaData: list it next to a host's in Alembic's ``target_metadata``.
metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Live run states whose rows the partial indexes cover.
_CLAIMABLE = "state IN ('pending', 'sleeping')"
_RUNNING = "state = 'running'"
_QUEUE = String(64)
_NAME = String(255)


def _partial(predicate: str) -> dict[str, object]:
    return {"postgresql_where": text(predicate), "sqlite_where": text(predicate)}


queues = Table(
    "absurd_queues", metadata,
    Column("queue_name", _QUEUE, primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
)

tasks = Table(
    "absurd_tasks", metadata,
    Column("task_id", IdType, primary_key=True),
    Column("queue", _QUEUE, ForeignKey("absurd_queues.queue_name"), nullable=False),
    Column("task_name", _NAME, nullable=False),
    Column("params", JSONType, nullable=True),
    Column("headers", JSONType, nullable=True),
    Column("retry_strategy", JSONType, nullable=True),
    Column("max_attempts", Integer, nullable=True),
    Column("max_delay", Float, nullable=True),
    Column("max_duration", Float, nullable=True),
    # When the cancellation policy fires next: enqueued_at + max_delay before the first
    # start, first_started_at + max_duration after it, NULL otherwise or once terminal.
    Column("cancel_at", UTCDateTime, nullable=True),
    Column("idempotency_key", _NAME, nullable=True),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_attempt_run", IdType, nullable=True),
    Column("result", JSONType, nullable=True),
    # Set once another task awaits this one, so finishing only looks for waiters then.
    Column("has_waiters", Boolean, nullable=False, server_default=false()),
    Column("enqueued_at", UTCDateTime, nullable=False),
    Column("first_started_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    Column("cancelled_at", UTCDateTime, nullable=True),
    # Partial: tasks without a key (most) add nothing to this index.
    Index("uq_absurd_tasks_queue_idempotency_key", "queue", "idempotency_key", unique=True,
          **_partial("idempotency_key IS NOT NULL")),
    Index("ix_absurd_tasks_queue_task_id", "queue", "task_id"),
    Index("ix_absurd_tasks_cancel_at", "queue", "cancel_at", **_partial("cancel_at IS NOT NULL")),
)

runs = Table(
    "absurd_runs", metadata,
    Column("run_id", IdType, primary_key=True),
    Column("queue", _QUEUE, nullable=False),
    Column("task_id", IdType, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    # How often this run was claimed: 1 on an attempt's first execution, when no
    # checkpoint can exist yet for a first attempt (the claim skips loading them).
    Column("claim_count", Integer, nullable=False, server_default=text("0")),
    Column("claimed_by", _NAME, nullable=True),
    Column("claim_expires_at", UTCDateTime, nullable=True),
    # NULL means "waiting without a timer" (an event or a child, no timeout).
    Column("available_at", UTCDateTime, nullable=True),
    Column("wake_event", _NAME, nullable=True),
    Column("wake_step", _NAME, nullable=True),
    Column("event_payload", JSONType, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    Column("failed_at", UTCDateTime, nullable=True),
    Column("result", JSONType, nullable=True),
    Column("failure", JSONType, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_absurd_runs_claim", "queue", "available_at", "run_id", **_partial(_CLAIMABLE)),
    Index("ix_absurd_runs_lease", "queue", "claim_expires_at", **_partial(_RUNNING)),
    Index("ix_absurd_runs_task_id", "task_id"),
)

checkpoints = Table(
    "absurd_checkpoints", metadata,
    Column("task_id", IdType, primary_key=True),
    Column("checkpoint_name", _NAME, primary_key=True),
    Column("queue", _QUEUE, nullable=False),
    Column("state", JSONType, nullable=True),
    # "committed", or "timeout" when a wait ran out (replays raise TimeoutError again).
    Column("status", String(16), nullable=False),
    Column("owner_run_id", IdType, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

events = Table(
    "absurd_events", metadata,
    Column("queue", _QUEUE, ForeignKey("absurd_queues.queue_name"), primary_key=True),
    Column("event_name", _NAME, primary_key=True),
    Column("payload", JSONType, nullable=True),
    Column("emitted_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_absurd_events_queue_emitted_at", "queue", "emitted_at"),
)

waits = Table(
    "absurd_waits", metadata,
    Column("run_id", IdType, primary_key=True),
    Column("step_name", _NAME, primary_key=True),
    Column("queue", _QUEUE, nullable=False),
    Column("task_id", IdType, nullable=False),
    Column("event_name", _NAME, nullable=True),
    Column("awaited_task_id", IdType, nullable=True),
    Column("timeout_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_absurd_waits_queue_event_name", "queue", "event_name"),
    Index("ix_absurd_waits_awaited_task_id", "awaited_task_id"),
    Index("ix_absurd_waits_task_id", "task_id"),
)

#: One row: the absurd-orm revision the schema is at, whichever Alembic history ran it.
schema_version = Table(
    "absurd_schema_version", metadata,
    Column("revision", String(32), primary_key=True),
)
