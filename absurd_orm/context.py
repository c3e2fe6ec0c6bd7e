"""TaskContext: what a handler uses to make its work durable.

A handler is replayed from the top after every suspension, retry or crash. Each step,
sleep, wait and spawn has a checkpoint name; when a checkpoint exists its stored value
is returned instead of running the work again. Names repeat safely: the k-th use of a
name within one execution maps to ``name#k``, so handlers must request names in the
same order on every replay.

Once a run is suspended, cancelled or has lost its lease, every further call on its
context raises again, so a handler that swallows the exception still stops.
"""

from __future__ import annotations

import contextvars
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar, overload

from sqlalchemy.exc import SQLAlchemyError

from . import _validation as check
from ._records import snapshot_from_json, snapshot_to_json
from .errors import (
    AbsurdError,
    CancelledTask,
    FailedTask,
    SuspendTask,
    TaskNotFound,
    TimeoutError,
    ValidationError,
)
from .types import ClaimedTask, SpawnResult, StepHandle, TaskResultSnapshot

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["TaskContext", "get_current_context"]

T = TypeVar("T")

_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "absurd_orm_current_context", default=None)

_TIMEOUT = "timeout"


def get_current_context() -> TaskContext | None:
    """The context of the task running in this thread, or None outside a task."""
    return _current.get()


class TaskContext:
    """Durable operations available to a running task (created by the worker only)."""

    def __init__(self, engine: Engine, task: ClaimedTask, claim_timeout: float) -> None:
        self._engine = engine
        self._repo = engine._repo
        self._task = task
        self._claim_timeout = claim_timeout
        self._stored: dict[str, tuple[str, Any]] = dict(task.checkpoints)
        self._seen: dict[str, int] = {}
        self._stopped: AbsurdError | None = None
        self._infra_error: SQLAlchemyError | None = None

    # ------------------------------------------------------------------ identity

    @property
    def task_id(self) -> str:
        """Id of the task (the same across attempts)."""
        return self._task.task_id

    @property
    def run_id(self) -> str:
        """Id of this run (one per attempt)."""
        return self._task.run_id

    @property
    def attempt(self) -> int:
        """1-based attempt number of this run."""
        return self._task.attempt

    @property
    def queue_name(self) -> str:
        """The queue the task lives on."""
        return self._task.queue_name

    @property
    def task_name(self) -> str:
        """The registered name of the task."""
        return self._task.task_name

    @property
    def headers(self) -> Mapping[str, Any]:
        """Read-only task headers (``{}`` when none)."""
        return MappingProxyType(dict(self._task.headers or {}))

    # ------------------------------------------------------------------ internals

    def _checkpoint_name(self, name: str) -> str:
        check.step_name(name)
        n = self._seen.get(name, 0) + 1
        self._seen[name] = n
        return name if n == 1 else f"{name}#{n}"

    def _guard(self) -> None:
        if self._stopped is not None:
            raise type(self._stopped)(*self._stopped.args)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a repository call; a refusal or a database failure stops this run.

        A database failure is not the handler's fault: the run is not failed (that would
        use an attempt); the worker lets it go and its lease brings it back.
        """
        self._guard()
        try:
            return fn(*args, **kwargs)
        except (CancelledTask, FailedTask) as exc:
            self._stopped = exc
            raise
        except SQLAlchemyError as exc:
            self._stopped = FailedTask(f"database error while storing task state: {exc}")
            self._infra_error = exc
            raise

    def _suspend(self) -> SuspendTask:
        self._stopped = SuspendTask("task suspended")
        return self._stopped

    # ------------------------------------------------------------------ steps

    def begin_step(self, name: str) -> StepHandle:
        """Allocate the step's checkpoint name and report whether a result is stored."""
        self._guard()
        checkpoint = self._checkpoint_name(name)
        stored = self._stored.get(checkpoint)
        if stored is not None:
            return StepHandle(name, checkpoint, True, stored[1])
        return StepHandle(name, checkpoint, False)

    def complete_step(self, handle: StepHandle, value: T) -> T:
        """Store ``value`` as the step's result (unless already stored) and return it."""
        if handle.done:
            return handle.state
        check.json_value(value, f"result of step {handle.name!r}", self._engine.max_payload_bytes)
        self._call(self._repo.set_checkpoint, self.queue_name, self.task_id, self.run_id,
                   handle.checkpoint_name, value, self._claim_timeout)
        self._stored[handle.checkpoint_name] = ("committed", value)
        return value

    def step(self, name: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` once and store its JSON result; replays return the stored result.

        >>> total = ctx.step("charge", lambda: charge_card(order))
        """
        handle = self.begin_step(name)
        if handle.done:
            return handle.state
        return self.complete_step(handle, fn())

    @overload
    def run_step(self, fn: Callable[[], T]) -> T: ...

    @overload
    def run_step(self, name: str | None = None) -> Callable[[Callable[[], T]], T]: ...

    def run_step(self, fn: Any = None) -> Any:
        """Decorator form of :meth:`step`: the function runs at once and the name binds its result."""
        if callable(fn):
            return self.step(fn.__name__, fn)

        def deco(inner: Callable[[], T]) -> T:
            return self.step(fn or inner.__name__, inner)

        return deco

    # ------------------------------------------------------------------ sleeping

    def sleep_for(self, step_name: str, seconds: float) -> None:
        """Suspend durably for ``seconds`` (the first wake time stored wins on replay)."""
        self._guard()
        duration = check.seconds(seconds, "sleep duration")
        self.sleep_until(step_name, self._repo.now() + timedelta(seconds=duration))

    def sleep_until(self, step_name: str, when: datetime | float) -> None:
        """Suspend durably until ``when`` (aware datetime or UNIX seconds)."""
        self._guard()
        wake_at = check.when(when, "wake time")
        checkpoint = self._checkpoint_name(step_name)
        stored = self._stored.get(checkpoint)
        now = self._repo.now()
        if stored is not None:
            wake_at = datetime.fromisoformat(stored[1])
            if wake_at <= now:
                return
            self._call(self._repo.sleep, self.queue_name, self.task_id, self.run_id,
                       checkpoint, wake_at, False)
            raise self._suspend()
        if wake_at <= now:
            self._call(self._repo.set_checkpoint, self.queue_name, self.task_id, self.run_id,
                       checkpoint, wake_at.isoformat(), self._claim_timeout)
            self._stored[checkpoint] = ("committed", wake_at.isoformat())
            return
        self._call(self._repo.sleep, self.queue_name, self.task_id, self.run_id, checkpoint,
                   wake_at, True)
        raise self._suspend()

    # ------------------------------------------------------------------ waiting

    def await_event(self, event_name: str, step_name: str | None = None,
                    timeout: float | None = None) -> Any:
        """Wait (suspended, no worker held) for ``event_name``; return its payload.

        Raises ``absurd_orm.TimeoutError`` when ``timeout`` seconds pass first; replays
        raise it again at the same step.
        """
        self._guard()
        check.name(event_name, "event_name")
        if timeout is not None:
            timeout = check.seconds(timeout, "timeout")
        checkpoint = self._checkpoint_name(
            step_name or check.default_step_name("$awaitEvent:", event_name))
        stored = self._stored.get(checkpoint)
        if stored is not None:
            if stored[0] == _TIMEOUT:
                raise TimeoutError(f'Timed out waiting for event "{event_name}"')
            return stored[1]
        emitted, payload = self._call(self._repo.await_event, self.queue_name, self.task_id,
                                      self.run_id, checkpoint, event_name, timeout)
        if emitted:
            self._stored[checkpoint] = ("committed", payload)
            return payload
        raise self._suspend()

    def await_task_result(self, task_id: str, queue_name: str | None = None,
                          timeout: float | None = None,
                          step_name: str | None = None) -> TaskResultSnapshot:
        """Wait (suspended, no worker held) until another task is terminal; return its snapshot.

        The awaited task may live on any queue, this one included.
        """
        self._guard()
        child = self._engine._task_id(task_id)
        if child is None:
            raise TaskNotFound(f'Task "{task_id}" not found')
        if child == self.task_id:
            raise ValidationError("a task cannot await its own result")
        task_id = child
        queue = check.queue_name(queue_name) if queue_name is not None else self.queue_name
        if timeout is not None:
            timeout = check.seconds(timeout, "timeout")
        checkpoint = self._checkpoint_name(
            step_name or check.default_step_name("$awaitTaskResult:", task_id))
        stored = self._stored.get(checkpoint)
        if stored is not None:
            if stored[0] == _TIMEOUT:
                raise TimeoutError(f'Timed out waiting for task "{task_id}"')
            return snapshot_from_json(stored[1])
        snap = self._call(self._repo.await_task, self.queue_name, self.task_id, self.run_id,
                          checkpoint, task_id, queue, timeout)
        if snap is not None:
            self._stored[checkpoint] = ("committed", snapshot_to_json(snap))
            return snap
        raise self._suspend()

    # ------------------------------------------------------------------ other tasks, events

    def spawn(self, task_name: str, params: Any = None, *, step_name: str | None = None,
              **options: Any) -> SpawnResult:
        """Spawn a child task exactly once: a replay returns the same child."""
        self._guard()
        check.name(task_name, "task name")
        checkpoint = self._checkpoint_name(
            step_name or check.default_step_name("$spawn:", task_name))
        stored = self._stored.get(checkpoint)
        if stored is not None:
            v = stored[1]
            return SpawnResult(v["task_id"], v["run_id"], v["attempt"], v["created"])
        queue, name, params, prepared = self._engine._prepare_spawn(task_name, params, options)
        result = self._call(self._repo.spawn_child, self.queue_name, self.task_id, self.run_id,
                            checkpoint, queue, name, params, prepared)
        self._stored[checkpoint] = ("committed", {
            "task_id": result.task_id, "run_id": result.run_id, "attempt": result.attempt,
            "created": result.created})
        self._engine._wake_workers()
        return result

    def emit_event(self, event_name: str, payload: Any = None) -> None:
        """Emit an event on this task's queue (first emit wins, so replays are harmless)."""
        self._guard()
        self._engine.emit_event(event_name, payload, queue_name=self.queue_name)

    def heartbeat(self, seconds: float | None = None) -> None:
        """Extend this run's lease to now + ``seconds`` (default: the claim timeout)."""
        extend = self._claim_timeout if seconds is None else check.seconds(
            seconds, "heartbeat seconds", allow_zero=False)
        self._call(self._repo.extend_lease, self.run_id, extend)
