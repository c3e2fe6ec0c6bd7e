"""Internal: the repository's hot-path statements, compiled once per engine.

Claim, checkpoint, completion and spawn run for every task, several times; everything
else stays plain Core in the repository. Bound parameter names start with ``b_`` because
SQLAlchemy reserves column names for the SET/VALUES clauses of updates and inserts.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    bindparam,
    case,
    exists,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect

from ._sql import Prepared
from .dialects import DialectStrategy
from .schema import checkpoints, runs, tasks
from .sqltypes import IdType, UTCDateTime

__all__ = ["Statements", "CLAIMABLE_RUN", "RUNNING_RUN", "LIVE_RUN", "LIVE_STATES"]

LIVE_STATES = ("pending", "running", "sleeping")
# Literal SQL (not bound parameters) so that the planners match the partial indexes.
LIVE_RUN = runs.c.state.in_([literal_column(f"'{s}'") for s in LIVE_STATES])
CLAIMABLE_RUN = runs.c.state.in_([literal_column("'pending'"), literal_column("'sleeping'")])
RUNNING_RUN = runs.c.state == literal_column("'running'")


#: The columns a spawn writes (bound as ``b_<column>``).
_NEW_TASK_COLUMNS = ("task_id", "queue", "task_name", "params", "headers", "retry_strategy",
                     "max_attempts", "max_delay", "max_duration", "cancel_at",
                     "idempotency_key", "state", "attempts", "last_attempt_run", "enqueued_at")


def _b(name: str, type_: Any = None) -> Any:
    return bindparam(f"b_{name}", type_=type_)


class Statements:
    """Prepared statements for one dialect (each compiled on first use)."""

    def __init__(self, dialect: Dialect, strategy: DialectStrategy) -> None:
        self._dialect = dialect
        self._strategy = strategy

    def _prepare(self, statement: Any) -> Prepared:
        return Prepared(statement, self._dialect)

    # ------------------------------------------------------------------ claim

    @cached_property
    def sweep_due(self) -> Prepared:
        """Is any cancellation policy or lease due on the queue? (one cheap probe)"""
        now = _b("now", UTCDateTime())
        return self._prepare(select(or_(
            exists().where(tasks.c.queue == _b("queue"), tasks.c.cancel_at.is_not(None),
                           tasks.c.cancel_at <= now),
            exists().where(runs.c.queue == _b("queue"), RUNNING_RUN,
                           runs.c.claim_expires_at <= now),
        ).label("due")))

    @cached_property
    def claim_runs(self) -> Prepared:
        """Claim up to ``b_limit`` due runs, oldest first."""
        now = _b("now", UTCDateTime())
        candidates = (
            select(runs.c.run_id)
            .where(runs.c.queue == _b("queue"), CLAIMABLE_RUN, runs.c.available_at <= now)
            .order_by(runs.c.available_at, runs.c.run_id)
            .limit(_b("limit", Integer()))
        )
        upd = (update(runs)
               .values(state="running", claimed_by=_b("worker"),
                       claim_expires_at=_b("lease", UTCDateTime()), started_at=now,
                       available_at=now, claim_count=runs.c.claim_count + 1)
               .returning(runs.c.run_id, runs.c.task_id, runs.c.attempt, runs.c.wake_event,
                          runs.c.wake_step, runs.c.event_payload, runs.c.claim_count))
        return self._prepare(self._strategy.claim_statement(candidates, upd))

    @cached_property
    def claim_task(self) -> Prepared:
        """Mark a claimed run's task running; return what the worker needs to execute it."""
        attempt = _b("attempt", Integer())
        return self._prepare(
            update(tasks).where(tasks.c.task_id == _b("task_id")).values(
                state="running",
                attempts=case((tasks.c.attempts < attempt, attempt), else_=tasks.c.attempts),
                first_started_at=func.coalesce(tasks.c.first_started_at, _b("now", UTCDateTime())),
                last_attempt_run=_b("run_id"),
            ).returning(tasks.c.task_name, tasks.c.params, tasks.c.headers,
                        tasks.c.retry_strategy, tasks.c.max_attempts, tasks.c.max_delay,
                        tasks.c.max_duration))

    @cached_property
    def task_checkpoints(self) -> Prepared:
        """Every stored checkpoint of a task."""
        return self._prepare(
            select(checkpoints.c.checkpoint_name, checkpoints.c.status, checkpoints.c.state)
            .where(checkpoints.c.task_id == _b("task_id")))

    # ------------------------------------------------------------------ fencing

    @cached_property
    def run_state_locked(self) -> Prepared:
        """The run's state, share-locked (PostgreSQL) so no transition overtakes us."""
        return self._prepare(select(runs.c.state).where(runs.c.run_id == _b("run_id"))
                             .with_for_update(read=True))

    @cached_property
    def extend_lease(self) -> Prepared:
        """Push a running run's lease to ``b_lease`` (no lease stays no lease)."""
        return self._prepare(
            update(runs).where(runs.c.run_id == _b("run_id"), RUNNING_RUN).values(
                claim_expires_at=case((runs.c.claim_expires_at.is_(None), null()),
                                      else_=_b("lease", UTCDateTime()))))

    @cached_property
    def put_checkpoint_fenced(self) -> Prepared | None:
        """One statement: extend the lease of a still-running run, then upsert (CTE)."""
        if not self._strategy.dml_in_cte:
            return None
        fence = (update(runs).where(runs.c.run_id == _b("run_id"), RUNNING_RUN)
                 .values(claim_expires_at=case((runs.c.claim_expires_at.is_(None), null()),
                                               else_=_b("lease", UTCDateTime())))
                 .returning(runs.c.run_id).cte("absurd_fence"))
        rows = select(_b("task_id", IdType), _b("name", String()), _b("queue", String()),
                      _b("state", checkpoints.c.state.type), literal("committed"),
                      fence.c.run_id, _b("now", UTCDateTime())).select_from(fence)
        ins = self._strategy.insert(checkpoints).from_select(
            ["task_id", "checkpoint_name", "queue", "state", "status", "owner_run_id",
             "updated_at"], rows).add_cte(fence)
        return self._prepare(ins.on_conflict_do_update(
            index_elements=[checkpoints.c.task_id, checkpoints.c.checkpoint_name],
            set_=dict(state=ins.excluded.state, status=ins.excluded.status,
                      owner_run_id=ins.excluded.owner_run_id, updated_at=ins.excluded.updated_at)))

    @cached_property
    def put_checkpoint(self) -> Prepared:
        """Insert or overwrite a committed checkpoint."""
        ins = self._strategy.insert(checkpoints).values(
            task_id=_b("task_id"), checkpoint_name=_b("name"), queue=_b("queue"),
            state=_b("state", checkpoints.c.state.type), status="committed",
            owner_run_id=_b("run_id"), updated_at=_b("now", UTCDateTime()))
        return self._prepare(ins.on_conflict_do_update(
            index_elements=[checkpoints.c.task_id, checkpoints.c.checkpoint_name],
            set_=dict(state=ins.excluded.state, status=ins.excluded.status,
                      owner_run_id=ins.excluded.owner_run_id, updated_at=ins.excluded.updated_at)))

    # ------------------------------------------------------------------ completion

    @cached_property
    def complete_run(self) -> Prepared:
        """Fenced: only a still-running run completes."""
        return self._prepare(
            update(runs).where(runs.c.run_id == _b("run_id"), RUNNING_RUN).values(
                state="completed", completed_at=_b("now", UTCDateTime()),
                result=_b("result", runs.c.result.type)))

    @cached_property
    def complete_task(self) -> Prepared:
        """Complete the task; report whether other tasks await it."""
        return self._prepare(
            update(tasks).where(tasks.c.task_id == _b("task_id")).values(
                state="completed", result=_b("result", tasks.c.result.type),
                completed_at=_b("now", UTCDateTime()), last_attempt_run=_b("run_id"),
                cancel_at=None,
            ).returning(tasks.c.has_waiters))

    # ------------------------------------------------------------------ spawn

    @cached_property
    def insert_task(self) -> Prepared:
        """A new pending task (no idempotency key)."""
        return self._prepare(tasks.insert().values(
            {c: bindparam(f"b_{c}", type_=tasks.c[c].type) for c in _NEW_TASK_COLUMNS}))

    @cached_property
    def insert_task_and_run(self) -> Prepared | None:
        """One statement: a new task and its first run (a CTE feeds the run insert)."""
        if not self._strategy.dml_in_cte:
            return None
        new_task = tasks.insert().values(
            {c: bindparam(f"b_{c}", type_=tasks.c[c].type) for c in _NEW_TASK_COLUMNS},
        ).returning(tasks.c.task_id, tasks.c.queue, tasks.c.last_attempt_run,
                    tasks.c.enqueued_at).cte("absurd_new_task")
        first_run = select(new_task.c.last_attempt_run, new_task.c.queue, new_task.c.task_id,
                           literal(1), literal("pending"), new_task.c.enqueued_at,
                           new_task.c.enqueued_at)
        return self._prepare(runs.insert().from_select(
            ["run_id", "queue", "task_id", "attempt", "state", "available_at", "created_at"],
            first_run).add_cte(new_task))

    @cached_property
    def insert_run(self) -> Prepared:
        """A new run."""
        cols = ("run_id", "queue", "task_id", "attempt", "state", "available_at", "created_at")
        return self._prepare(runs.insert().values(
            {c: bindparam(f"b_{c}", type_=runs.c[c].type) for c in cols}))
