"""The pull loop: claim -> run -> complete / fail / suspend, with leases and graceful stop.

``execute`` runs one claimed task to its next stop. ``Worker`` claims in batches and runs
tasks on a thread pool; it sleeps at most ``poll_interval`` when idle and is woken at once
by work created in this process (spawns, emits, finished tasks).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from . import _validation as check
from .context import TaskContext, _current
from .errors import AbsurdError, CancelledTask, FailedTask, NotJSONSerializable, SuspendTask
from .types import ClaimedTask

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Worker", "execute", "UNKNOWN_TASK_DEFER_SECONDS"]

log = logging.getLogger("absurd_orm.worker")

#: Unknown task names are deferred (not failed) for 15 s plus 0-15 s of jitter, so a
#: rolling deploy can bring the worker that knows them.
UNKNOWN_TASK_DEFER_SECONDS = 15
UNKNOWN_TASK_DEFER_JITTER = 16

_STOPPED = (SuspendTask, CancelledTask, FailedTask)


def _failure(exc: BaseException) -> dict[str, Any]:
    # A value that is not JSON is a TypeError to the user, whatever our subclass is called.
    name = "TypeError" if isinstance(exc, NotJSONSerializable) else type(exc).__name__
    return {"name": name, "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc))}


def execute(engine: Engine, task: ClaimedTask, claim_timeout: float,
            claim_next: tuple[str, float, int] | None = None) -> list[ClaimedTask]:
    """Run one claimed task until it completes, fails or suspends.

    With ``claim_next=(worker_id, claim_timeout, limit)``, a completion also claims the
    worker's next runs in its transaction; they are returned.
    """
    repo = engine._repo
    wf = engine.registered(task.task_name)
    if wf is None:
        jitter = sum(map(ord, task.run_id)) % UNKNOWN_TASK_DEFER_JITTER
        until = repo.now() + timedelta(seconds=UNKNOWN_TASK_DEFER_SECONDS + jitter)
        log.warning("unknown task %r (run %s): deferred until %s", task.task_name, task.run_id, until)
        try:
            repo.defer_run(task.run_id, until)
        except _STOPPED:
            pass
        return []
    if wf.queue != task.queue_name:
        _fail(engine, task, {"name": "MisconfiguredTask",
                             "message": f"Misconfigured task (queue mismatch): {task.task_name!r} "
                                        f"is registered for queue {wf.queue!r}"})
        return []
    ctx = TaskContext(engine, task, claim_timeout)
    token = _current.set(ctx)
    try:
        wrap = engine.hooks.get("wrap_task_execution")
        if wrap is not None:
            result = wrap(ctx, lambda: wf.handler(task.params, ctx))
        else:
            result = wf.handler(task.params, ctx)
        if ctx._stopped is not None:
            return []  # the handler swallowed a stop; it must not complete
        check.json_value(result, f"result of task {task.task_name!r}", engine.max_payload_bytes)
    except _STOPPED:
        if ctx._infra_error is not None:
            raise ctx._infra_error from None  # the database failed, not the handler
        return []
    except Exception as exc:  # the handler failed: record it, retry per the strategy
        if ctx._infra_error is not None:
            raise ctx._infra_error from None
        if ctx._stopped is not None:
            return []
        _fail(engine, task, _failure(exc))
        engine._wake_workers()
        return []
    finally:
        _current.reset(token)
    # Outside the handler's try: a database error here is not the handler's failure.
    try:
        claimed = repo.complete_run(task.queue_name, task.task_id, task.run_id, result,
                                    claim_next)
    except _STOPPED:
        return []
    engine._wake_workers()
    return claimed


def _fail(engine: Engine, task: ClaimedTask, failure: dict[str, Any]) -> None:
    try:
        engine._repo.fail_run(task.run_id, failure, require_running=True)
    except _STOPPED:
        pass


class Worker:
    """A blocking worker loop over one queue (see ``Engine.start_worker``)."""

    def __init__(self, engine: Engine, *, worker_id: str | None, claim_timeout: float,
                 concurrency: int, batch_size: int | None, poll_interval: float,
                 queue_name: str) -> None:
        self.engine = engine
        self.worker_id = check.name(worker_id or f"{socket.gethostname()}:{os.getpid()}", "worker_id")
        self.claim_timeout = check.seconds(claim_timeout, "claim_timeout")
        self.concurrency = check.positive_int(concurrency, "concurrency")
        self.batch_size = check.positive_int(batch_size or concurrency, "batch_size")
        self.poll_interval = check.seconds(poll_interval, "poll_interval")
        self.queue_name = queue_name
        self._stop = threading.Event()
        # Set by SIGINT/SIGTERM. A signal handler runs on the main thread between any two
        # bytecodes, possibly while that thread holds an Event's internal lock (inside
        # Event.wait), so it must not take locks: it only sets this flag, which the loops
        # check; idle waits are bounded by poll_interval, so the stop is still prompt.
        self._signalled = False

    def _on_signal(self, *_: Any) -> None:
        self._signalled = True

    def _stopping(self) -> bool:
        return self._signalled or self._stop.is_set()

    def stop(self) -> None:
        """Stop claiming; in-flight tasks finish."""
        self._stop.set()
        self.engine._wake_workers()

    def run(self) -> None:
        """Loop until stopped."""
        restore = self._install_signal_handlers()
        try:
            self.engine._ready()  # an unusable schema ends the worker now, with its message
        except SQLAlchemyError:
            pass  # the database is unreachable for now: the claim loop keeps retrying
        except BaseException:
            for sig, handler in restore.items():
                signal.signal(sig, handler)
            raise
        self._waiter = self.engine.strategy.idle_waiter(self.engine.sa_engine, self.queue_name)
        log.info("worker %s started on queue %r (concurrency %d)", self.worker_id,
                 self.queue_name, self.concurrency)
        try:
            if self.concurrency == 1:
                self._run_serial()
            else:
                self._run_pool()
        finally:
            self._waiter.close()
            for sig, handler in restore.items():
                signal.signal(sig, handler)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        return previous

    def _claim(self, limit: int) -> list[ClaimedTask]:
        try:
            return self.engine.claim_tasks(limit, self.claim_timeout, self.worker_id,
                                           self.queue_name)
        except SQLAlchemyError as exc:
            # The database went away or refused us: keep the worker alive and retry.
            log.warning("claim failed (%s: %s); retrying after %.2fs", exc.__class__.__name__,
                        getattr(exc, "orig", None) or exc, max(self.poll_interval, 0.5))
            self._stop.wait(max(self.poll_interval, 0.5))
            return []
        except AbsurdError:
            raise  # a configuration problem (schema, dialect): retrying cannot help
        except Exception:  # never let one bad claim end the worker
            log.exception("claim failed unexpectedly; retrying after %.2fs",
                          max(self.poll_interval, 0.5))
            self._stop.wait(max(self.poll_interval, 0.5))
            return []

    def _idle(self) -> None:
        self._waiter.wait(self.poll_interval, self.engine._wakeup)

    def _run_chain(self, claimed: list[ClaimedTask]) -> None:
        """Run ``claimed`` in order, then whatever the last completion claimed next."""
        queue = list(claimed)
        while queue:
            task = queue.pop(0)
            if self._stopping():
                self._release([task, *queue])
                return
            # Claim a successor with the completion unless others are already waiting.
            ahead = (self.worker_id, self.claim_timeout, 1) if not queue else None
            try:
                queue.extend(execute(self.engine, task, self.claim_timeout, ahead))
            except SQLAlchemyError as exc:
                # The database failed, not the handler: hand the run back if the database
                # is reachable again, else its lease expires and a later claim retries it.
                log.warning("task %s (run %s) interrupted by a database error: %s: %s",
                            task.task_name, task.run_id, exc.__class__.__name__,
                            getattr(exc, "orig", None) or exc)
                self._release([task])
            except Exception:
                log.exception("task %s (run %s) crashed the worker thread",
                              task.task_name, task.run_id)

    def _run_serial(self) -> None:
        while not self._stopping():
            self.engine._wakeup.clear()
            claimed = self._claim(self.batch_size)
            if not claimed:
                self._idle()
                continue
            self._run_chain(claimed)

    def _release(self, unstarted: list[ClaimedTask]) -> None:
        for task in unstarted:
            try:
                self.engine._repo.release_run(task.run_id)
            except (SQLAlchemyError, *_STOPPED):
                pass  # its lease will expire instead

    def _run_pool(self) -> None:
        in_flight: set[Future[None]] = set()
        lock = threading.Lock()

        def done(fut: Future[None]) -> None:
            with lock:
                in_flight.discard(fut)
            self.engine._wake_workers()

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="absurd-worker") as pool:
            while not self._stopping():
                self.engine._wakeup.clear()
                with lock:
                    free = self.concurrency - len(in_flight)
                claimed = self._claim(min(self.batch_size, free)) if free > 0 else []
                for task in claimed:
                    fut = pool.submit(self._run_chain, [task])
                    with lock:
                        in_flight.add(fut)
                    fut.add_done_callback(done)
                if not claimed or free <= len(claimed):
                    self._idle()
            # leaving the with-block waits for in-flight tasks: a graceful stop
