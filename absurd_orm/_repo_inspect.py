"""Internal: the repository's read-only inspection queries.

Part of :class:`absurd_orm.repository.Repository` (a mixin), split out by aggregate.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ._records import run_info, snapshot, task_info
from .schema import checkpoints, runs, tasks
from .types import TaskInfo, TaskResultSnapshot

__all__ = ["Inspection"]


class Inspection:
    """Results, task details, listings and counts (mixed into Repository)."""

    # ------------------------------------------------------------------ inspection

    def task_result(self, queue: str, task_id: str) -> TaskResultSnapshot | None:
        """The task's state with its result or failure; None if unknown."""
        def txn(conn: Connection) -> TaskResultSnapshot | None:
            row = conn.execute(
                select(tasks.c.state, tasks.c.result, runs.c.failure)
                .select_from(tasks.outerjoin(runs, runs.c.run_id == tasks.c.last_attempt_run))
                .where(tasks.c.task_id == task_id, tasks.c.queue == queue)).first()
            return None if row is None else snapshot(row.state, row.result, row.failure)
        return self._read(txn)

    def get_task(self, queue: str, task_id: str) -> TaskInfo | None:
        """One task with its runs (attempt order) and checkpoints."""
        def txn(conn: Connection) -> TaskInfo | None:
            row = conn.execute(select(tasks).where(
                tasks.c.task_id == task_id, tasks.c.queue == queue)).first()
            if row is None:
                return None
            run_rows = [run_info(r) for r in conn.execute(
                select(runs).where(runs.c.task_id == task_id).order_by(runs.c.attempt, runs.c.run_id))]
            stored = {r.checkpoint_name: r.state for r in conn.execute(
                select(checkpoints.c.checkpoint_name, checkpoints.c.state)
                .where(checkpoints.c.task_id == task_id, checkpoints.c.status == "committed")
                .order_by(checkpoints.c.updated_at, checkpoints.c.checkpoint_name))}
            failure = next((r.failure for r in run_rows if r.run_id == row.last_attempt_run), None)
            return task_info(row, failure, run_rows, stored)
        return self._read(txn)

    def list_tasks(self, queue: str | None, *, state: str | None, task_name: str | None,
                   limit: int, before_task_id: str | None = None) -> list[TaskInfo]:
        """Tasks newest first (by id), without runs or checkpoints."""
        def txn(conn: Connection) -> list[TaskInfo]:
            stmt = (select(tasks, runs.c.failure)
                    .select_from(tasks.outerjoin(runs, runs.c.run_id == tasks.c.last_attempt_run))
                    .order_by(tasks.c.task_id.desc()).limit(limit))
            if queue is not None:
                stmt = stmt.where(tasks.c.queue == queue)
            if state is not None:
                stmt = stmt.where(tasks.c.state == state)
            if task_name is not None:
                stmt = stmt.where(tasks.c.task_name == task_name)
            if before_task_id is not None:
                stmt = stmt.where(tasks.c.task_id < before_task_id)
            return [task_info(r, r.failure, [], {}) for r in conn.execute(stmt)]
        return self._read(txn)

