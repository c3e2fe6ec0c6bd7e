"""absurd-orm's initial schema: queues, tasks, runs, checkpoints, events, waits.

Revision ID: absurd_0001_initial
Revises:
Create Date: 2026-11-25

Deploy: pre (creates new tables only). Works on SQLite and PostgreSQL; the partial
indexes use each dialect's ``*_where`` option.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "absurd_0001_initial"
down_revision = None
branch_labels = ("absurd",)
depends_on = None

# JSON text, kept exactly as written: json (not jsonb) on PostgreSQL, TEXT on SQLite.
_JSON = sa.JSON().with_variant(sa.Text(), "sqlite")
_ID = sa.Uuid(as_uuid=False)
_TS = sa.DateTime(timezone=True)
_QUEUE = sa.String(64)
_NAME = sa.String(255)


def _partial(predicate: str) -> dict[str, object]:
    return {"postgresql_where": sa.text(predicate), "sqlite_where": sa.text(predicate)}


def upgrade() -> None:
    # Read by absurd-orm's schema check: it works whichever Alembic history ran us
    # (a host revision with depends_on records only its own id in alembic_version).
    version = op.create_table(
        "absurd_schema_version",
        sa.Column("revision", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("revision", name="pk_absurd_schema_version"),
    )
    op.bulk_insert(version, [{"revision": revision}])
    op.create_table(
        "absurd_queues",
        sa.Column("queue_name", _QUEUE, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("queue_name", name="pk_absurd_queues"),
    )
    op.create_table(
        "absurd_tasks",
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("queue", _QUEUE, nullable=False),
        sa.Column("task_name", _NAME, nullable=False),
        sa.Column("params", _JSON, nullable=True),
        sa.Column("headers", _JSON, nullable=True),
        sa.Column("retry_strategy", _JSON, nullable=True),
        sa.Column("max_attempts", sa.Integer(), nullable=True),
        sa.Column("max_delay", sa.Float(), nullable=True),
        sa.Column("max_duration", sa.Float(), nullable=True),
        sa.Column("cancel_at", _TS, nullable=True),
        sa.Column("idempotency_key", _NAME, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_attempt_run", _ID, nullable=True),
        sa.Column("result", _JSON, nullable=True),
        sa.Column("has_waiters", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("enqueued_at", _TS, nullable=False),
        sa.Column("first_started_at", _TS, nullable=True),
        sa.Column("completed_at", _TS, nullable=True),
        sa.Column("cancelled_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("task_id", name="pk_absurd_tasks"),
        sa.ForeignKeyConstraint(["queue"], ["absurd_queues.queue_name"],
                                name="fk_absurd_tasks_queue_absurd_queues"),
    )
    op.create_index("uq_absurd_tasks_queue_idempotency_key", "absurd_tasks",
                    ["queue", "idempotency_key"], unique=True,
                    **_partial("idempotency_key IS NOT NULL"))
    op.create_index("ix_absurd_tasks_queue_task_id", "absurd_tasks", ["queue", "task_id"])
    op.create_index("ix_absurd_tasks_cancel_at", "absurd_tasks", ["queue", "cancel_at"],
                    **_partial("cancel_at IS NOT NULL"))
    op.create_table(
        "absurd_runs",
        sa.Column("run_id", _ID, nullable=False),
        sa.Column("queue", _QUEUE, nullable=False),
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claim_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("claimed_by", _NAME, nullable=True),
        sa.Column("claim_expires_at", _TS, nullable=True),
        sa.Column("available_at", _TS, nullable=True),
        sa.Column("wake_event", _NAME, nullable=True),
        sa.Column("wake_step", _NAME, nullable=True),
        sa.Column("event_payload", _JSON, nullable=True),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("completed_at", _TS, nullable=True),
        sa.Column("failed_at", _TS, nullable=True),
        sa.Column("result", _JSON, nullable=True),
        sa.Column("failure", _JSON, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_absurd_runs"),
    )
    op.create_index("ix_absurd_runs_claim", "absurd_runs", ["queue", "available_at", "run_id"],
                    **_partial("state IN ('pending', 'sleeping')"))
    op.create_index("ix_absurd_runs_lease", "absurd_runs", ["queue", "claim_expires_at"],
                    **_partial("state = 'running'"))
    op.create_index("ix_absurd_runs_task_id", "absurd_runs", ["task_id"])
    op.create_table(
        "absurd_checkpoints",
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("checkpoint_name", _NAME, nullable=False),
        sa.Column("queue", _QUEUE, nullable=False),
        sa.Column("state", _JSON, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner_run_id", _ID, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("task_id", "checkpoint_name", name="pk_absurd_checkpoints"),
    )
    op.create_table(
        "absurd_events",
        sa.Column("queue", _QUEUE, nullable=False),
        sa.Column("event_name", _NAME, nullable=False),
        sa.Column("payload", _JSON, nullable=True),
        sa.Column("emitted_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("queue", "event_name", name="pk_absurd_events"),
        sa.ForeignKeyConstraint(["queue"], ["absurd_queues.queue_name"],
                                name="fk_absurd_events_queue_absurd_queues"),
    )
    op.create_index("ix_absurd_events_queue_emitted_at", "absurd_events", ["queue", "emitted_at"])
    op.create_table(
        "absurd_waits",
        sa.Column("run_id", _ID, nullable=False),
        sa.Column("step_name", _NAME, nullable=False),
        sa.Column("queue", _QUEUE, nullable=False),
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("event_name", _NAME, nullable=True),
        sa.Column("awaited_task_id", _ID, nullable=True),
        sa.Column("timeout_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "step_name", name="pk_absurd_waits"),
    )
    op.create_index("ix_absurd_waits_queue_event_name", "absurd_waits", ["queue", "event_name"])
    if op.get_bind().dialect.name == "postgresql":
        # Idle workers LISTEN on this channel: a run that becomes claimable wakes them
        # at once instead of at their next poll. Duplicate notifications within one
        # transaction are merged by the server.
        op.execute("""
            CREATE FUNCTION absurd_notify_pending() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('absurd_pending', NEW.queue);
                RETURN NULL;
            END $$""")
        op.execute("""
            CREATE TRIGGER absurd_runs_notify_pending
            AFTER INSERT OR UPDATE OF state ON absurd_runs
            FOR EACH ROW WHEN (NEW.state = 'pending')
            EXECUTE FUNCTION absurd_notify_pending()""")
    op.create_index("ix_absurd_waits_awaited_task_id", "absurd_waits", ["awaited_task_id"])
    op.create_index("ix_absurd_waits_task_id", "absurd_waits", ["task_id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS absurd_runs_notify_pending ON absurd_runs")
        op.execute("DROP FUNCTION IF EXISTS absurd_notify_pending()")
    for name in ("absurd_waits", "absurd_events", "absurd_checkpoints", "absurd_runs",
                 "absurd_tasks", "absurd_queues", "absurd_schema_version"):
        op.drop_table(name)
