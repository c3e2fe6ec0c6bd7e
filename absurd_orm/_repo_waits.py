"""Internal: the repository's wait transitions (events and child tasks).

Part of :class:`absurd_orm.repository.Repository` (a mixin), split out by aggregate; the
repository module states the invariants and the lock order these methods follow.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ._records import snapshot, snapshot_to_json
from .errors import QueueNotFound, TaskNotFound
from .schema import events, runs, tasks, waits
from .types import TERMINAL_STATES, TaskResultSnapshot

__all__ = ["WaitTransitions"]


class WaitTransitions:
    """Suspending on a wait, emitting events, waking waiters (mixed into Repository)."""

    def _suspend_on_wait(self, conn: Connection, queue: str, task_id: str, run_id: str, step: str,
                         now: datetime, timeout_at: datetime | None, *, event_name: str | None = None,
                         awaited_task_id: str | None = None) -> None:
        self._move_run(conn, run_id, state="sleeping", available_at=timeout_at,
                       claimed_by=None, claim_expires_at=None, wake_event=event_name,
                       wake_step=step, event_payload=None)
        conn.execute(update(tasks).where(tasks.c.task_id == task_id).values(state="sleeping"))
        stmt = self._insert(waits).values(
            run_id=run_id, step_name=step, queue=queue, task_id=task_id, event_name=event_name,
            awaited_task_id=awaited_task_id, timeout_at=timeout_at, created_at=now)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[waits.c.run_id, waits.c.step_name],
            set_=dict(event_name=stmt.excluded.event_name,
                      awaited_task_id=stmt.excluded.awaited_task_id,
                      timeout_at=stmt.excluded.timeout_at, created_at=stmt.excluded.created_at)))

    # ------------------------------------------------------------------ events

    def await_event(self, queue: str, task_id: str, run_id: str, step: str, event_name: str,
                    timeout: float | None) -> tuple[bool, Any]:
        """Return ``(True, payload)`` if emitted (stored as checkpoint), else suspend: ``(False, None)``."""
        def txn(conn: Connection) -> tuple[bool, Any]:
            now = self.now()
            # Lock order: the event row first. Emit locks it too, so either the emit sees
            # our wait or we see the emitted payload: no lost wake-up.
            conn.execute(self._insert(events).values(
                queue=queue, event_name=event_name, payload=None, emitted_at=None, created_at=now,
            ).on_conflict_do_nothing(index_elements=[events.c.queue, events.c.event_name]))
            ev = conn.execute(select(events.c.payload, events.c.emitted_at).where(
                events.c.queue == queue, events.c.event_name == event_name
            ).with_for_update(read=True)).one()
            if ev.emitted_at is not None:
                self._fence(conn, run_id, now, None)
                self._put_checkpoint(conn, task_id, step, ev.payload, run_id, now, queue=queue)
                return True, ev.payload
            timeout_at = now + timedelta(seconds=timeout) if timeout is not None else None
            self._suspend_on_wait(conn, queue, task_id, run_id, step, now, timeout_at,
                                  event_name=event_name)
            return False, None
        return self._write(txn)

    def emit_event(self, queue: str, event_name: str, payload: Any) -> bool:
        """Emit; the first emit per (queue, name) wins and wakes every live waiter."""
        return self._write(self._emit, queue, event_name, payload)

    def _emit(self, conn: Connection, queue: str, event_name: str, payload: Any) -> bool:
        now = self.now()
        stmt = self._insert(events).values(
            queue=queue, event_name=event_name, payload=payload, emitted_at=now, created_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=[events.c.queue, events.c.event_name],
            set_=dict(payload=stmt.excluded.payload, emitted_at=stmt.excluded.emitted_at),
            where=events.c.emitted_at.is_(None),
        ).returning(events.c.event_name)
        try:
            won = conn.execute(stmt).first() is not None
        except IntegrityError as exc:
            if "foreign key" in str(exc.orig).lower():
                raise QueueNotFound(f'Queue "{queue}" does not exist') from None
            raise
        if not won:
            return False
        found = conn.execute(
            select(waits.c.run_id, waits.c.step_name, waits.c.task_id, waits.c.timeout_at)
            .where(waits.c.queue == queue, waits.c.event_name == event_name)
            .order_by(waits.c.run_id)).all()
        if not found:
            return True
        # Waits whose timeout passed are left to resume as timeouts (Absurd's rule).
        live = [w for w in found if w.timeout_at is None or w.timeout_at > now]
        conn.execute(delete(waits).where(
            waits.c.queue == queue, waits.c.event_name == event_name,
            or_(waits.c.timeout_at.is_(None), waits.c.timeout_at > now)))
        for w in live:
            self._wake(conn, queue, w.task_id, w.run_id, w.step_name, payload, now,
                       event_payload=payload)
        return True

    def _wake(self, conn: Connection, queue: str, task_id: str, run_id: str, step: str,
              value: Any, now: datetime, event_payload: Any = None) -> None:
        woke = conn.execute(update(runs).where(runs.c.run_id == run_id, runs.c.state == "sleeping").values(
            state="pending", available_at=now, wake_event=None, wake_step=None,
            event_payload=event_payload, claimed_by=None, claim_expires_at=None)).rowcount
        if woke:
            self._put_checkpoint(conn, task_id, step, value, run_id, now, queue=queue)
            conn.execute(update(tasks).where(tasks.c.task_id == task_id).values(state="pending"))

    # ------------------------------------------------------------------ child tasks

    def await_task(self, queue: str, task_id: str, run_id: str, step: str, child_id: str,
                   child_queue: str, timeout: float | None) -> TaskResultSnapshot | None:
        """The child's snapshot if terminal (stored as checkpoint); else suspend and return None."""
        def txn(conn: Connection) -> TaskResultSnapshot | None:
            now = self.now()
            # Flagging the child also locks its row: its completion either sees our
            # wait, or has committed and we see its terminal state.
            child = conn.execute(
                update(tasks).where(tasks.c.task_id == child_id, tasks.c.queue == child_queue)
                .values(has_waiters=True)
                .returning(tasks.c.state, tasks.c.result, tasks.c.last_attempt_run)).first()
            if child is None:
                raise TaskNotFound(f'Task "{child_id}" not found in queue "{child_queue}"')
            if child.state in TERMINAL_STATES:
                snap = snapshot(child.state, child.result, self._failure_of(conn, child))
                self._fence(conn, run_id, now, None)
                self._put_checkpoint(conn, task_id, step, snapshot_to_json(snap), run_id, now,
                                     queue=queue)
                return snap
            timeout_at = now + timedelta(seconds=timeout) if timeout is not None else None
            self._suspend_on_wait(conn, queue, task_id, run_id, step, now, timeout_at,
                                  awaited_task_id=child_id)
            return None
        return self._write(txn)

    @staticmethod
    def _failure_of(conn: Connection, task_row: Any) -> Any:
        if task_row.state != "failed" or task_row.last_attempt_run is None:
            return None
        return conn.scalar(select(runs.c.failure).where(runs.c.run_id == task_row.last_attempt_run))

    def _notify_task_finished(self, conn: Connection, task_id: str, snap: TaskResultSnapshot,
                              now: datetime) -> None:
        """Wake the parents waiting for ``task_id`` (it just became terminal)."""
        found = conn.execute(
            select(waits.c.run_id, waits.c.step_name, waits.c.task_id, waits.c.queue,
                   waits.c.timeout_at)
            .where(waits.c.awaited_task_id == task_id).order_by(waits.c.run_id)).all()
        if not found:
            return
        value = snapshot_to_json(snap)
        live = [w for w in found if w.timeout_at is None or w.timeout_at > now]
        for w in live:
            conn.execute(delete(waits).where(waits.c.run_id == w.run_id,
                                             waits.c.step_name == w.step_name))
            self._wake(conn, w.queue, w.task_id, w.run_id, w.step_name, value, now)

