"""Every read and write of absurd-orm's tables: one method per state transition.

Internal: lower level than :class:`absurd_orm.Engine` and less stable.

State machine (runs; tasks follow their live run)::

    spawn ──> pending ──claim──> running ──complete──> completed
                 ^                 │  │ └──fail──> failed ──retry (new run)──> pending/sleeping
                 │                 │  └──sleep / await──> sleeping ──timer / emit / child──> (claim)
                 └──emit / child───┴──────────────────────────┘
    any live state ──cancel──> cancelled

Invariants kept here:

* A task has at most one live (pending, running, sleeping) run. Terminal states never
  change again, except ``failed -> pending`` through ``retry_task``.
* Fencing: checkpoints, suspensions and completions are written only by a run that is
  still ``running``. A run whose lease expired is failed by the next claim on its queue;
  from then on every write of its old worker is refused with :class:`FailedTask`.
* ``tasks.cancel_at`` is non-NULL only for live tasks with a cancellation policy.
* Every method receives "now" from the engine clock; SQL never reads the server clock.

Lock order (PostgreSQL row locks; SQLite takes its single write lock at BEGIN):
event row -> awaited (child) task -> runs -> their task -> waits/checkpoints -> waiting
parents' runs -> their tasks. Within one task: runs before the task row. Every
multi-row transition follows it, so concurrent transitions cannot deadlock.

Each public method runs one short transaction (``_write`` / ``_read``); the ``_``-prefixed
``conn``-taking methods compose inside a caller's transaction. Transactions that the
database rolled back for lock reasons (SQLite busy, PostgreSQL serialization failure or
deadlock) are retried with bounded backoff; nothing else is.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Sequence, TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from . import _ids
from ._statements import LIVE_RUN as _LIVE_RUN
from ._statements import LIVE_STATES
from ._statements import RUNNING_RUN as _RUNNING_RUN
from ._statements import Statements
from ._group import GroupCommit
from ._repo_inspect import Inspection
from ._repo_waits import WaitTransitions
from ._records import cancellation_dict, snapshot
from .clock import Clock
from .dialects import DialectStrategy
from .errors import (
    CancelledTask,
    FailedTask,
    InvalidTaskState,
    QueueNotFound,
    TaskNotFound,
)
from .schema import checkpoints, events, queues, runs, tasks, waits
from .retry import retry_delay
from .types import (
    TERMINAL_STATES,
    ClaimedTask,
    RetryTaskResult,
    SpawnResult,
)

T = TypeVar("T")


CLAIM_TIMEOUT_FAILURE = "$ClaimTimeout"


class Repository(WaitTransitions, Inspection):
    """Transitions of the durable-execution state machine over one SQLAlchemy engine."""

    #: How long a transaction refused for lock reasons is retried before giving up.
    transient_budget = 30.0

    def __init__(self, engine: Engine, strategy: DialectStrategy, clock: Clock) -> None:
        self.engine = engine
        self.strategy = strategy
        self.clock = clock
        self._insert = strategy.insert
        self.sql = Statements(engine.dialect, strategy)
        # Connections kept checked out between transactions: a pool checkout and return
        # per transaction costs as much as the statements of a checkpoint write.
        self._idle: dict[str, list[tuple[Connection, float]]] = {
            "write": [], "read": [], "auto": []}
        self._options = {"write": strategy.write_options, "read": strategy.read_options,
                         "auto": {"isolation_level": "AUTOCOMMIT"}}
        self._closed = False
        self._group = GroupCommit(self._write, self._write, (CancelledTask, FailedTask))

    def close(self) -> None:
        """Return every kept connection to the pool."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop()[0].close()

    #: A connection idle for longer than this is checked before reuse (the server may
    #: have restarted meanwhile); busy workers reuse theirs within milliseconds.
    ping_after_idle = 1.0

    def _checkout(self, kind: str) -> Connection:
        idle = self._idle[kind]
        while True:
            try:
                conn, since = idle.pop()
            except IndexError:
                conn = self.engine.connect()
                conn.execution_options(**self._options[kind])
                self.strategy.prepare_connection(conn)
                return conn
            if time.monotonic() - since < self.ping_after_idle and not self.strategy.is_stale(conn):
                return conn
            try:
                conn.exec_driver_sql("SELECT 1").close()
                if conn.in_transaction():
                    conn.rollback()
                return conn
            except DBAPIError:
                conn.invalidate()
                conn.close()

    # ------------------------------------------------------------------ transactions

    def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._retrying("write", fn, args, kwargs)

    def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._retrying("read", fn, args, kwargs)

    def _retrying(self, kind: str, fn: Callable[..., T], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> T:
        delay, longest = self.strategy.retry_delays
        deadline = time.monotonic() + self.transient_budget
        idle = self._idle[kind]
        while True:
            conn = self._checkout(kind)
            try:
                if kind == "auto":  # one atomic statement: no BEGIN/COMMIT round trips
                    result = fn(conn, *args, **kwargs)
                else:
                    with conn.begin():
                        result = fn(conn, *args, **kwargs)
            except DBAPIError as exc:
                transient = self.strategy.is_transient(exc)
                if transient and not conn.invalidated:
                    idle.append((conn, time.monotonic()))
                else:
                    conn.close()  # possibly broken: never reuse it
                if not transient or time.monotonic() > deadline:
                    raise
            except BaseException:
                idle.append((conn, time.monotonic()))
                raise
            else:
                if self._closed:
                    conn.close()
                else:
                    idle.append((conn, time.monotonic()))
                return result
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, longest)

    def now(self) -> datetime:
        """The engine clock's current time."""
        return self.clock()

    # ------------------------------------------------------------------ queues

    def create_queue(self, queue: str) -> None:
        """Create ``queue`` if it does not exist."""
        def txn(conn: Connection) -> None:
            stmt = self._insert(queues).values(queue_name=queue, created_at=self.now())
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[queues.c.queue_name]))
        self._write(txn)

    def drop_queue(self, queue: str) -> None:
        """Delete ``queue`` and every row that belongs to it."""
        def txn(conn: Connection) -> None:
            for table in (waits, checkpoints, events, runs, tasks):
                conn.execute(delete(table).where(table.c.queue == queue))
            conn.execute(delete(queues).where(queues.c.queue_name == queue))
        self._write(txn)

    def list_queues(self) -> list[str]:
        """All queue names, sorted."""
        return self._read(lambda conn: list(conn.scalars(
            select(queues.c.queue_name).order_by(queues.c.queue_name))))

    def spawn(self, queue: str, task_name: str, params: Any, **options: Any) -> SpawnResult:
        """Create a task and its first run (or return the task its idempotency key names)."""
        if self.sql.insert_task_and_run is not None and options.get("idempotency_key") is None:
            # One atomic statement: no BEGIN/COMMIT round trips needed.
            return self._retrying("auto", self._spawn, (queue, task_name, params), options)
        return self._write(self._spawn, queue, task_name, params, **options)

    def _spawn(self, conn: Connection, queue: str, task_name: str, params: Any, *,
               headers: Any = None, retry_strategy: Any = None, max_attempts: int | None = None,
               cancellation: Mapping[str, float] | None = None,
               idempotency_key: str | None = None) -> SpawnResult:
        now = self.now()
        task_id = _ids.uuid7(now)
        run_id = _ids.uuid7(now)
        cancellation = cancellation or {}
        max_delay = cancellation.get("max_delay")
        values = dict(
            task_id=task_id, queue=queue, task_name=task_name, params=params,
            headers=headers, retry_strategy=retry_strategy, max_attempts=max_attempts,
            max_delay=max_delay, max_duration=cancellation.get("max_duration"),
            cancel_at=now + timedelta(seconds=max_delay) if max_delay else None,
            idempotency_key=idempotency_key, state="pending", attempts=1,
            last_attempt_run=run_id, enqueued_at=now,
        )
        single = self.sql.insert_task_and_run
        try:
            if idempotency_key is None and single is not None:
                single.rowcount(conn, {f"b_{k}": v for k, v in values.items()})
                return SpawnResult(task_id, run_id, 1, True)
            if idempotency_key is None:
                self.sql.insert_task.rowcount(conn, {f"b_{k}": v for k, v in values.items()})
            else:
                stmt = (self._insert(tasks).values(**values)
                        .on_conflict_do_nothing(
                            index_elements=[tasks.c.queue, tasks.c.idempotency_key],
                            index_where=tasks.c.idempotency_key.is_not(None))
                        .returning(tasks.c.task_id))
                if conn.execute(stmt).first() is None:
                    row = conn.execute(
                        select(tasks.c.task_id, tasks.c.last_attempt_run, tasks.c.attempts).where(
                            tasks.c.queue == queue, tasks.c.idempotency_key == idempotency_key)
                    ).one()
                    return SpawnResult(row.task_id, row.last_attempt_run, row.attempts, False)
        except IntegrityError as exc:
            if "foreign key" in str(exc.orig).lower():
                raise QueueNotFound(
                    f'Queue "{queue}" does not exist (create it with create_queue)') from None
            raise
        self.sql.insert_run.rowcount(conn, dict(
            b_run_id=run_id, b_queue=queue, b_task_id=task_id, b_attempt=1, b_state="pending",
            b_available_at=now, b_created_at=now))
        return SpawnResult(task_id, run_id, 1, True)

    def spawn_many(self, queue: str, task_name: str, params_list: Sequence[Any],
                   **options: Any) -> list[SpawnResult]:
        """Create many tasks with the same options in one transaction (all or nothing)."""
        def txn(conn: Connection) -> list[SpawnResult]:
            now = self.now()
            cancellation = options.get("cancellation") or {}
            max_delay = cancellation.get("max_delay")
            common = dict(
                b_queue=queue, b_task_name=task_name, b_headers=options.get("headers"),
                b_retry_strategy=options.get("retry_strategy"),
                b_max_attempts=options.get("max_attempts"), b_max_delay=max_delay,
                b_max_duration=cancellation.get("max_duration"),
                b_cancel_at=now + timedelta(seconds=max_delay) if max_delay else None,
                b_idempotency_key=None, b_state="pending", b_attempts=1, b_enqueued_at=now)
            run_common = dict(b_queue=queue, b_attempt=1, b_state="pending",
                              b_available_at=now, b_created_at=now)
            task_rows, run_rows, out = [], [], []
            ids = iter(_ids.uuid7_batch(now, 2 * len(params_list)))
            for params, task_id, run_id in zip(params_list, ids, ids):
                task_rows.append({"b_task_id": task_id, "b_params": params,
                                  "b_last_attempt_run": run_id})
                run_rows.append({"b_run_id": run_id, "b_task_id": task_id})
                out.append(SpawnResult(task_id, run_id, 1, True))
            if not out:
                return out
            try:
                self.sql.insert_task.many(conn, task_rows, common)
            except IntegrityError as exc:
                if "foreign key" in str(exc.orig).lower():
                    raise QueueNotFound(
                        f'Queue "{queue}" does not exist (create it with create_queue)') from None
                raise
            self.sql.insert_run.many(conn, run_rows, run_common)
            return out
        return self._write(txn)

    # ------------------------------------------------------------------ claim

    def claim(self, queue: str, worker_id: str, claim_timeout: float, limit: int) -> list[ClaimedTask]:
        """Apply due cancellations, fail expired leases, then claim up to ``limit`` runs."""
        return self._write(self._claim, queue, worker_id, claim_timeout, limit)

    def _claim(self, conn: Connection, queue: str, worker_id: str, claim_timeout: float,
               limit: int) -> list[ClaimedTask]:
        now = self.now()
        sql = self.sql
        if sql.sweep_due.first(conn, {"b_queue": queue, "b_now": now}).due:
            self._apply_cancellation_policies(conn, queue, now)
            self._expire_leases(conn, queue, now, limit)
        lease_until = now + timedelta(seconds=claim_timeout) if claim_timeout > 0 else None
        claimed = sql.claim_runs.all(conn, {"b_queue": queue, "b_now": now, "b_limit": limit,
                                            "b_worker": worker_id, "b_lease": lease_until})
        if not claimed:
            return []
        claimed.sort(key=lambda r: r.run_id)
        out = []
        for r in claimed:
            t = sql.claim_task.first(conn, {"b_task_id": r.task_id, "b_attempt": r.attempt,
                                            "b_now": now, "b_run_id": r.run_id})
            # A first attempt's first claim is the task's first start: no checkpoint can
            # exist yet, and a max_duration policy starts counting now.
            first_start = r.attempt == 1 and r.claim_count == 1
            if first_start and (t.max_duration or t.max_delay):
                # max_delay no longer applies once started; max_duration starts counting.
                cancel_at = now + timedelta(seconds=t.max_duration) if t.max_duration else None
                conn.execute(update(tasks).where(tasks.c.task_id == r.task_id).values(
                    cancel_at=cancel_at))
            stored: dict[str, tuple[str, Any]] = {}
            if not first_start:
                if r.wake_step is not None:
                    self._resolve_expired_wait(conn, r.run_id, now)
                stored = {c.checkpoint_name: (c.status, c.state)
                          for c in sql.task_checkpoints.all(conn, {"b_task_id": r.task_id})}
            out.append(ClaimedTask(
                run_id=r.run_id, task_id=r.task_id, task_name=t.task_name, attempt=r.attempt,
                params=t.params, headers=t.headers, retry_strategy=t.retry_strategy,
                max_attempts=t.max_attempts, wake_event=r.wake_event,
                event_payload=r.event_payload, queue_name=queue,
                claim_expires_at=lease_until, wake_step=r.wake_step, checkpoints=stored))
        return out

    def _apply_cancellation_policies(self, conn: Connection, queue: str, now: datetime) -> None:
        due = conn.scalars(
            select(tasks.c.task_id)
            .where(tasks.c.queue == queue, tasks.c.cancel_at.is_not(None), tasks.c.cancel_at <= now)
            .order_by(tasks.c.task_id).limit(1000)).all()
        for task_id in due:
            self._cancel(conn, queue, task_id, now)

    def _expire_leases(self, conn: Connection, queue: str, now: datetime, limit: int) -> None:
        expired = conn.execute(
            select(runs.c.run_id, runs.c.claimed_by, runs.c.claim_expires_at, runs.c.attempt)
            .where(runs.c.queue == queue, _RUNNING_RUN, runs.c.claim_expires_at <= now)
            .order_by(runs.c.claim_expires_at, runs.c.run_id)
            .limit(limit)
            .with_for_update(skip_locked=True)).all()
        for r in expired:
            reason = {"name": CLAIM_TIMEOUT_FAILURE,
                      "message": "worker did not finish task within claim interval",
                      "workerId": r.claimed_by, "claimExpiredAt": r.claim_expires_at.isoformat(),
                      "attempt": r.attempt}
            self._fail_run(conn, r.run_id, {k: v for k, v in reason.items() if v is not None}, now)

    def _resolve_expired_wait(self, conn: Connection, run_id: str, now: datetime) -> None:
        """A run resumed while still registered on a wait: its timeout elapsed.

        The timeout is stored as a checkpoint (status ``timeout``) so that every replay
        of that step raises ``TimeoutError`` the same way.
        """
        pending = conn.execute(
            select(waits.c.step_name, waits.c.task_id, waits.c.queue)
            .where(waits.c.run_id == run_id)).all()
        for w in pending:
            self._put_timeout(conn, w.task_id, w.step_name, run_id, now, queue=w.queue)
        if pending:
            conn.execute(delete(waits).where(waits.c.run_id == run_id))
        conn.execute(update(runs).where(runs.c.run_id == run_id).values(wake_step=None))

    # ------------------------------------------------------------------ fencing + checkpoints

    def _move_run(self, conn: Connection, run_id: str, **values: Any) -> None:
        """Change a run that is still ``running`` (fenced: else raise, writing nothing)."""
        result = conn.execute(update(runs).where(runs.c.run_id == run_id, _RUNNING_RUN).values(**values))
        if result.rowcount != 1:
            self._raise_not_running(conn, run_id)

    @staticmethod
    def _raise_not_running(conn: Connection, run_id: str) -> None:
        row = conn.execute(select(runs.c.state, runs.c.queue).where(runs.c.run_id == run_id)).first()
        if row is None:
            raise FailedTask(f'Run "{run_id}" not found')
        if row.state == "cancelled":
            raise CancelledTask("Task has been cancelled")
        if row.state == "failed":
            raise FailedTask(f'Run "{run_id}" has already failed in queue "{row.queue}"')
        raise FailedTask(f'Run "{run_id}" is not currently running in queue "{row.queue}" '
                         f"(state {row.state})")

    def _put_checkpoint(self, conn: Connection, task_id: str, name: str, value: Any, run_id: str,
                        now: datetime, *, queue: str) -> None:
        self.sql.put_checkpoint.rowcount(conn, {
            "b_task_id": task_id, "b_name": name, "b_queue": queue, "b_state": value,
            "b_run_id": run_id, "b_now": now})

    def _put_timeout(self, conn: Connection, task_id: str, name: str, run_id: str,
                     now: datetime, *, queue: str) -> None:
        """Mark a wait as timed out (replays raise TimeoutError); never over a real result."""
        conn.execute(self._insert(checkpoints).values(
            task_id=task_id, checkpoint_name=name, queue=queue, state=None, status="timeout",
            owner_run_id=run_id, updated_at=now,
        ).on_conflict_do_nothing(index_elements=[checkpoints.c.task_id, checkpoints.c.checkpoint_name]))

    def set_checkpoint(self, queue: str, task_id: str, run_id: str, name: str, value: Any,
                       extend_by: float) -> None:
        """Store a step result, fenced on the run, extending its lease."""
        fenced = self.sql.put_checkpoint_fenced
        if fenced is not None:
            def single(conn: Connection) -> None:
                now = self.now()
                if fenced.rowcount(conn, {
                        "b_task_id": task_id, "b_name": name, "b_queue": queue, "b_state": value,
                        "b_run_id": run_id, "b_now": now,
                        "b_lease": now + timedelta(seconds=extend_by)}) != 1:
                    self._raise_not_running(conn, run_id)
            self._group.submit(single, alone=lambda fn: self._retrying("auto", fn, (), {}))
            return

        def txn(conn: Connection) -> None:
            now = self.now()
            self._fence(conn, run_id, now, extend_by)
            self._put_checkpoint(conn, task_id, name, value, run_id, now, queue=queue)
        self._group.submit(txn)

    def _fence(self, conn: Connection, run_id: str, now: datetime,
                    extend_by: float | None) -> None:
        """The fencing check: refuse unless the run is still running (locking it on
        PostgreSQL), extending its lease if asked. A run that lost its lease was failed by
        another worker's claim, so its writes stop here."""
        if extend_by is not None:
            ok = self.sql.extend_lease.rowcount(conn, {
                "b_run_id": run_id, "b_lease": now + timedelta(seconds=extend_by)}) == 1
        else:
            row = self.sql.run_state_locked.first(conn, {"b_run_id": run_id})
            ok = row is not None and row.state == "running"
        if not ok:
            self._raise_not_running(conn, run_id)

    def extend_lease(self, run_id: str, seconds: float) -> None:
        """Heartbeat: push the lease of a running run to now + ``seconds``."""
        def txn(conn: Connection) -> None:
            self._fence(conn, run_id, self.now(), seconds)
        self._write(txn)

    # ------------------------------------------------------------------ suspend

    def sleep(self, queue: str, task_id: str, run_id: str, step: str, wake_at: datetime,
              store_checkpoint: bool) -> None:
        """Suspend the run until ``wake_at`` (storing the wake time as checkpoint ``step``)."""
        def txn(conn: Connection) -> None:
            now = self.now()
            self._move_run(conn, run_id, state="sleeping", available_at=wake_at,
                           claimed_by=None, claim_expires_at=None, wake_event=None, wake_step=None)
            if store_checkpoint:
                self._put_checkpoint(conn, task_id, step, wake_at.isoformat(), run_id, now,
                                     queue=queue)
            conn.execute(update(tasks).where(tasks.c.task_id == task_id).values(state="sleeping"))
        self._write(txn)

    # ------------------------------------------------------------------ complete / fail

    def complete_run(self, queue: str, task_id: str, run_id: str, result: Any,
                     claim_next: tuple[str, float, int] | None = None) -> list[ClaimedTask]:
        """Mark the run and its task completed (fenced).

        With ``claim_next=(worker_id, claim_timeout, limit)`` the same transaction also
        claims the worker's next runs (one commit instead of two per task).
        """
        def txn(conn: Connection) -> list[ClaimedTask]:
            now = self.now()
            if self.sql.complete_run.rowcount(conn, {"b_run_id": run_id, "b_now": now,
                                                     "b_result": result}) != 1:
                self._raise_not_running(conn, run_id)
            row = self.sql.complete_task.first(conn, {"b_task_id": task_id, "b_result": result,
                                                      "b_now": now, "b_run_id": run_id})
            if row.has_waiters:
                self._notify_task_finished(conn, task_id, snapshot("completed", result, None), now)
            if claim_next is None:
                return []
            worker_id, claim_timeout, limit = claim_next
            return self._claim(conn, queue, worker_id, claim_timeout, limit)
        return self._group.submit(txn)

    def fail_run(self, run_id: str, failure: Mapping[str, Any], retry_at: datetime | None = None,
                 *, require_running: bool = True) -> str:
        """Fail the run; schedule the next attempt, or fail/cancel the task. Returns the task state."""
        return self._write(self._fail_run, run_id, failure, None, retry_at,
                           require_running=require_running)

    def _fail_run(self, conn: Connection, run_id: str, failure: Mapping[str, Any],
                  now: datetime | None, retry_at: datetime | None = None, *,
                  require_running: bool = False) -> str:
        now = now or self.now()
        run = conn.execute(select(runs.c.state, runs.c.task_id, runs.c.attempt, runs.c.queue)
                           .where(runs.c.run_id == run_id).with_for_update()).first()
        if run is None:
            raise FailedTask(f'Run "{run_id}" cannot be failed: not found')
        if run.state == "cancelled":
            raise CancelledTask("Task has been cancelled")
        if run.state == "failed":
            raise FailedTask(f'Run "{run_id}" has already failed in queue "{run.queue}"')
        allowed = ("running",) if require_running else ("running", "sleeping")
        if run.state not in allowed:
            raise FailedTask(f'Run "{run_id}" cannot be failed in queue "{run.queue}" (state {run.state})')
        task = conn.execute(
            select(tasks.c.retry_strategy, tasks.c.max_attempts, tasks.c.first_started_at,
                   tasks.c.max_duration, tasks.c.attempts, tasks.c.cancelled_at)
            .where(tasks.c.task_id == run.task_id).with_for_update()).one()
        conn.execute(update(runs).where(runs.c.run_id == run_id).values(
            state="failed", failed_at=now, failure=dict(failure), wake_event=None, wake_step=None))
        conn.execute(delete(waits).where(waits.c.run_id == run_id))

        next_attempt = run.attempt + 1
        if task.max_attempts is None or next_attempt <= task.max_attempts:
            due = retry_at or now + timedelta(seconds=retry_delay(task.retry_strategy, run.attempt))
            due = max(due, now)
            if (task.max_duration is not None and task.first_started_at is not None
                    and (due - task.first_started_at).total_seconds() >= task.max_duration):
                self._finish_task(conn, run.task_id, "cancelled", now, last_run=run_id,
                                  cancelled_at=task.cancelled_at or now)
                return "cancelled"
            new_run = _ids.uuid7(now)
            state = "sleeping" if due > now else "pending"
            conn.execute(runs.insert(), dict(
                run_id=new_run, queue=run.queue, task_id=run.task_id, attempt=next_attempt,
                state=state, available_at=due, created_at=now))
            conn.execute(update(tasks).where(tasks.c.task_id == run.task_id).values(
                state=state, attempts=max(task.attempts, next_attempt), last_attempt_run=new_run))
            return state
        self._finish_task(conn, run.task_id, "failed", now, last_run=run_id,
                          attempts=max(task.attempts, run.attempt), failure=dict(failure))
        return "failed"

    def _finish_task(self, conn: Connection, task_id: str, state: str, now: datetime, *,
                     last_run: str, failure: Any = None, **values: Any) -> None:
        waited = conn.execute(update(tasks).where(tasks.c.task_id == task_id).values(
            state=state, last_attempt_run=last_run, cancel_at=None, **values,
        ).returning(tasks.c.has_waiters)).scalar_one()
        if waited:
            self._notify_task_finished(conn, task_id, snapshot(state, None, failure), now)

    def defer_run(self, run_id: str, until: datetime) -> None:
        """Put a claimed run back to sleep without using an attempt (unknown task name)."""
        def txn(conn: Connection) -> None:
            task_id = conn.scalar(select(runs.c.task_id).where(runs.c.run_id == run_id))
            self._move_run(conn, run_id, state="sleeping", available_at=until,
                           claimed_by=None, claim_expires_at=None)
            conn.execute(update(tasks).where(tasks.c.task_id == task_id).values(state="sleeping"))
        self._write(txn)

    def release_run(self, run_id: str) -> None:
        """Hand a claimed but unstarted run back (graceful stop): claimable again at once."""
        def txn(conn: Connection) -> None:
            now = self.now()
            task_id = conn.scalar(select(runs.c.task_id).where(runs.c.run_id == run_id))
            self._move_run(conn, run_id, state="pending", available_at=now,
                           claimed_by=None, claim_expires_at=None)
            conn.execute(update(tasks).where(tasks.c.task_id == task_id).values(state="pending"))
        self._write(txn)

    # ------------------------------------------------------------------ cancel / retry

    def cancel_task(self, queue: str, task_id: str) -> None:
        """Cancel a live task (no-op when terminal)."""
        def txn(conn: Connection) -> None:
            self._cancel(conn, queue, task_id, self.now())
        self._write(txn)

    def _cancel(self, conn: Connection, queue: str, task_id: str, now: datetime) -> None:
        # Runs before the task row: the lock order complete_run and fail_run follow.
        live_runs = conn.scalars(select(runs.c.run_id).where(runs.c.task_id == task_id, _LIVE_RUN)
                                 .order_by(runs.c.run_id).with_for_update()).all()
        task = conn.execute(select(tasks.c.state, tasks.c.cancelled_at).where(
            tasks.c.task_id == task_id, tasks.c.queue == queue).with_for_update()).first()
        if task is None:
            raise TaskNotFound(f'Task "{task_id}" not found in queue "{queue}"')
        if task.state in TERMINAL_STATES:
            return
        if live_runs:
            conn.execute(update(runs).where(runs.c.run_id.in_(live_runs)).values(
                state="cancelled", claimed_by=None, claim_expires_at=None))
        conn.execute(delete(waits).where(waits.c.task_id == task_id))
        waited = conn.execute(update(tasks).where(tasks.c.task_id == task_id).values(
            state="cancelled", cancelled_at=task.cancelled_at or now, cancel_at=None,
        ).returning(tasks.c.has_waiters)).scalar_one()
        if waited:
            self._notify_task_finished(conn, task_id, snapshot("cancelled", None, None), now)

    def retry_task(self, queue: str, task_id: str, max_attempts: int | None,
                   spawn_new: bool) -> RetryTaskResult:
        """Retry a failed task in place (new run, checkpoints kept) or as a new task."""
        def txn(conn: Connection) -> RetryTaskResult:
            now = self.now()
            task = conn.execute(select(tasks).where(
                tasks.c.task_id == task_id, tasks.c.queue == queue).with_for_update()).first()
            if task is None:
                raise TaskNotFound(f'Task "{task_id}" not found in queue "{queue}"')
            if task.state != "failed":
                raise InvalidTaskState(
                    f'Task "{task_id}" is not currently failed in queue "{queue}" (state {task.state})')
            if spawn_new:
                res = self._spawn(
                    conn, queue, task.task_name, task.params, headers=task.headers,
                    retry_strategy=task.retry_strategy,
                    max_attempts=max_attempts if max_attempts is not None else task.max_attempts,
                    cancellation=cancellation_dict(task.max_delay, task.max_duration))
                return RetryTaskResult(res.task_id, res.run_id, res.attempt, True)
            wanted = max_attempts if max_attempts is not None else (
                (task.max_attempts if task.max_attempts is not None else task.attempts) + 1)
            if wanted <= task.attempts:
                raise InvalidTaskState(
                    f"max_attempts ({wanted}) must be greater than current attempts ({task.attempts})")
            attempt = task.attempts + 1
            new_run = _ids.uuid7(now)
            conn.execute(runs.insert(), dict(
                run_id=new_run, queue=queue, task_id=task_id, attempt=attempt, state="pending",
                available_at=now, created_at=now))
            # first_started_at is kept, so an exceeded max_duration still cancels the task.
            cancel_at = (task.first_started_at + timedelta(seconds=task.max_duration)
                         if task.max_duration and task.first_started_at else None)
            conn.execute(update(tasks).where(tasks.c.task_id == task_id).values(
                state="pending", attempts=attempt, max_attempts=wanted, last_attempt_run=new_run,
                cancelled_at=None, cancel_at=cancel_at))
            return RetryTaskResult(task_id, new_run, attempt, False)
        return self._write(txn)

    def spawn_child(self, queue: str, task_id: str, run_id: str, step: str, child_queue: str,
                    task_name: str, params: Any, options: Mapping[str, Any]) -> SpawnResult:
        """Spawn a child and store its ids as checkpoint ``step``, atomically (fenced)."""
        def txn(conn: Connection) -> SpawnResult:
            now = self.now()
            self._fence(conn, run_id, now, None)
            res = self._spawn(conn, child_queue, task_name, params, **options)
            self._put_checkpoint(conn, task_id, step, {
                "task_id": res.task_id, "run_id": res.run_id, "attempt": res.attempt,
                "created": res.created, "queue": child_queue}, run_id, now, queue=queue)
            return res
        return self._write(txn)


__all__ = ["Repository", "LIVE_STATES", "CLAIM_TIMEOUT_FAILURE"]
