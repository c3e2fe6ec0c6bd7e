"""Internal: group commit of concurrent writes from one process.

Writers that arrive while a transaction is committing queue up; the next leader runs all
queued writes in one transaction and commits once, so one fsync serves many tasks. Every
writer still returns only after its own write is committed: a step is durable before its
result is returned. A leader never waits for company: a lone writer commits at once.

A write that refuses (fencing: :class:`FailedTask`, :class:`CancelledTask`) raises before
writing anything, so it fails alone without disturbing the batch. A database error rolls
the whole batch back; each write is then retried on its own, so errors reach only the
writers that caused them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from sqlalchemy.engine import Connection

__all__ = ["GroupCommit"]


class _Item:
    __slots__ = ("fn", "alone", "done", "lead", "result", "error")

    def __init__(self, fn: Callable[[Connection], Any], alone: Any) -> None:
        self.fn = fn
        self.alone = alone
        self.done = threading.Event()
        self.lead = False
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommit:
    """Runs ``fn(conn)`` writes, batching those that arrive while a commit is in flight."""

    def __init__(self, run_batch: Callable[[Callable[[Connection], Any]], Any],
                 run_alone: Callable[[Callable[[Connection], Any]], Any],
                 refusals: tuple[type[BaseException], ...]) -> None:
        self._run_batch = run_batch
        self._run_alone = run_alone
        self._refusals = refusals
        self._lock = threading.Lock()
        self._queue: list[_Item] = []
        self._busy = False

    def submit(self, fn: Callable[[Connection], Any],
               alone: Callable[[Callable[[Connection], Any]], Any] | None = None) -> Any:
        """Run ``fn`` in a (possibly shared) write transaction; return its result.

        ``alone`` runs ``fn`` when it has no company (e.g. a single autocommit statement).
        """
        item = _Item(fn, alone or self._run_alone)
        with self._lock:
            self._queue.append(item)
            lead = not self._busy
            self._busy = True
        if not lead:
            item.done.wait()
            if not item.lead:
                return self._outcome(item)
        self._lead()
        return self._outcome(item)

    @staticmethod
    def _outcome(item: _Item) -> Any:
        if item.error is not None:
            raise item.error
        return item.result

    def _lead(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._busy = False
            for item in batch:
                item.done.set()

    def _commit(self, batch: list[_Item]) -> None:
        if len(batch) == 1:
            item = batch[0]
            try:
                item.result = item.alone(item.fn)
            except BaseException as exc:  # noqa: BLE001 - handed to its writer
                item.error = exc
            return
        refusals = self._refusals

        def together(conn: Connection) -> None:
            for item in batch:
                item.error = None
                try:
                    item.result = item.fn(conn)
                except refusals as exc:
                    item.error = exc

        try:
            self._run_batch(together)
        except BaseException:  # noqa: BLE001 - retried one by one below
            for item in batch:
                item.error = None
                try:
                    item.result = item.alone(item.fn)
                except BaseException as exc:  # noqa: BLE001
                    item.error = exc
