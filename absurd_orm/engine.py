"""Engine: registration, spawning, events, results, cancel/retry, inspection, workers.

>>> from absurd_orm import Engine
>>> engine = Engine("sqlite:///app.db")
>>> engine.migrate(); engine.create_queue()
>>> @engine.register_task(name="greet")
... def greet(params, ctx):
...     return ctx.step("hello", lambda: f"hello {params['name']}")
>>> engine.spawn("greet", {"name": "ada"})
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from sqlalchemy import URL, create_engine
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.exc import NoSuchModuleError

from . import _validation as check
from .clock import Clock, system_clock
from .dialects import normalize_url, strategy_for, supported_dialects
from .errors import TaskNotFound, TimeoutError, UnsupportedDialect, ValidationError
from .migration import check_schema, upgrade
from .repository import Repository
from .types import ClaimedTask, RetryTaskResult, SpawnResult, TaskInfo, TaskResultSnapshot
from .workflow import Workflow

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["Engine", "DEFAULT_URL"]

#: The embedded default when neither a URL nor ``ABSURD_DATABASE_URL`` is given.
DEFAULT_URL = "sqlite:///absurd.db"

_SPAWN_OPTIONS = frozenset({"max_attempts", "retry_strategy", "headers", "queue",
                            "cancellation", "idempotency_key"})


class Engine:
    """The entry point: a durable-execution engine over one database.

    Args:
        url_or_engine: a SQLAlchemy URL, or an existing ``sqlalchemy.Engine`` (shared, not
            disposed by us). ``None``: ``ABSURD_DATABASE_URL``, else ``sqlite:///absurd.db``.
        queue_name: the default queue for every operation.
        default_max_attempts: attempts for tasks that set none (``None`` = unlimited).
        hooks: ``{"before_spawn": f, "wrap_task_execution": f}``.
        clock: zero-argument callable returning an aware datetime; the only "now".
        max_payload_bytes: refuse params, payloads and results whose JSON is larger.
        check_schema: raise ``SchemaOutOfDate`` on first use unless the schema is current.
        durable_commits: ``False`` lets commits return before they reach the disk (SQLite
            ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``): a process crash
            loses nothing; an OS crash or power loss may lose the last commits.
    """

    def __init__(self, url_or_engine: str | URL | SAEngine | None = None, *,
                 queue_name: str = "default", default_max_attempts: int | None = 5,
                 hooks: Mapping[str, Callable[..., Any]] | None = None,
                 clock: Clock | None = None, max_payload_bytes: int | None = None,
                 check_schema: bool = True, durable_commits: bool = True) -> None:
        self.queue_name = check.queue_name(queue_name)
        if default_max_attempts is not None:
            check.positive_int(default_max_attempts, "default_max_attempts")
        self.default_max_attempts = default_max_attempts
        self.hooks: dict[str, Callable[..., Any]] = dict(hooks or {})
        unknown = set(self.hooks) - {"before_spawn", "wrap_task_execution"}
        if unknown:
            raise ValidationError(f"unknown hooks: {sorted(unknown)}")
        if max_payload_bytes is not None:
            check.positive_int(max_payload_bytes, "max_payload_bytes")
        self.max_payload_bytes = max_payload_bytes
        if isinstance(url_or_engine, SAEngine):
            self.sa_engine, self._owns_engine = url_or_engine, False
        else:
            url = normalize_url(url_or_engine or os.environ.get("ABSURD_DATABASE_URL") or DEFAULT_URL)
            try:
                self.sa_engine = create_engine(url, pool_pre_ping=True)
            except (ImportError, NoSuchModuleError) as exc:
                raise UnsupportedDialect(
                    f"cannot use {url.drivername!r}: {exc}. Supported: "
                    f"{', '.join(supported_dialects())} (PostgreSQL needs "
                    "`pip install \"absurd-orm[postgres]\"`)") from exc
            self._owns_engine = True
        self.strategy = strategy_for(self.sa_engine, durable_commits=durable_commits)
        self.strategy.configure_engine(self.sa_engine)
        self.clock: Clock = clock or system_clock
        self._repo = Repository(self.sa_engine, self.strategy, self.clock)
        self._registry: dict[str, Workflow] = {}
        self._schema_ok = not check_schema
        self._schema_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._workers: set[Worker] = set()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop any worker and release the connections we own."""
        self.stop_worker()
        self._repo.close()
        if self._owns_engine:
            self.sa_engine.dispose()

    def migrate(self) -> None:
        """Bring the schema to the current head (idempotent)."""
        upgrade(self.sa_engine)
        self._schema_ok = True

    def _ready(self) -> Repository:
        if not self._schema_ok:
            with self._schema_lock:
                if not self._schema_ok:
                    check_schema(self.sa_engine)
                    self._schema_ok = True
        return self._repo

    def _wake_workers(self) -> None:
        self._wakeup.set()

    # ------------------------------------------------------------------ queues

    def create_queue(self, queue_name: str | None = None) -> None:
        """Create a queue (the engine's by default); no-op if it exists."""
        self._ready().create_queue(self._queue(queue_name))

    def drop_queue(self, queue_name: str | None = None) -> None:
        """Remove a queue and every task, run, checkpoint, event and wait in it."""
        self._ready().drop_queue(self._queue(queue_name))

    def list_queues(self) -> list[str]:
        """Names of all queues, sorted."""
        return self._ready().list_queues()

    @staticmethod
    def _task_id(task_id: Any) -> str | None:
        """The canonical form of a task id, or None when it cannot be one."""
        try:
            return str(uuid.UUID(str(task_id)))
        except ValueError:
            return None

    def _queue(self, queue_name: str | None) -> str:
        return self.queue_name if queue_name is None else check.queue_name(queue_name)

    # ------------------------------------------------------------------ registration

    def register_task(self, name: str | None = None, queue: str | None = None,
                      default_max_attempts: int | None = None,
                      default_cancellation: Mapping[str, float] | None = None,
                      ) -> Callable[[Callable[..., Any]], Workflow]:
        """Decorator registering ``handler(params, ctx)`` as a task; returns a :class:`Workflow`."""
        if default_max_attempts is not None:
            check.positive_int(default_max_attempts, "default_max_attempts")
        cancellation = check.cancellation(default_cancellation)
        task_queue = self._queue(queue)

        def deco(handler: Callable[..., Any]) -> Workflow:
            task_name = check.name(name or handler.__name__, "task name")
            wf = Workflow(self, task_name, task_queue, handler, default_max_attempts, cancellation)
            self._registry[task_name] = wf
            return wf

        return deco

    workflow = register_task

    def registered(self, task_name: str) -> Workflow | None:
        """The workflow registered under ``task_name``, if any."""
        return self._registry.get(task_name)

    # ------------------------------------------------------------------ spawning

    def spawn(self, task_name: str, params: Any = None, *, max_attempts: int | None = None,
              retry_strategy: Mapping[str, Any] | None = None,
              headers: Mapping[str, Any] | None = None, queue: str | None = None,
              cancellation: Mapping[str, float] | None = None,
              idempotency_key: str | None = None) -> SpawnResult:
        """Enqueue a task; with ``idempotency_key`` a repeat returns the first (``created=False``)."""
        options = {k: v for k, v in dict(
            max_attempts=max_attempts, retry_strategy=retry_strategy, headers=headers,
            queue=queue, cancellation=cancellation, idempotency_key=idempotency_key,
        ).items() if v is not None}
        target, name, params, prepared = self._prepare_spawn(task_name, params, options)
        result = self._ready().spawn(target, name, params, **prepared)
        self._wake_workers()
        return result

    def spawn_many(self, task_name: str, params_list: Iterable[Any], *,
                   max_attempts: int | None = None,
                   retry_strategy: Mapping[str, Any] | None = None,
                   headers: Mapping[str, Any] | None = None, queue: str | None = None,
                   cancellation: Mapping[str, float] | None = None) -> list[SpawnResult]:
        """Enqueue one task per params in a single transaction: all are created or none."""
        options = {k: v for k, v in dict(
            max_attempts=max_attempts, retry_strategy=retry_strategy, headers=headers,
            queue=queue, cancellation=cancellation).items() if v is not None}
        items = list(params_list)
        target, name, _, prepared = self._prepare_spawn(task_name, None, options)
        for i, params in enumerate(items):
            check.json_value(params, f"params[{i}]", self.max_payload_bytes)
        prepared.pop("idempotency_key")
        results = self._ready().spawn_many(target, name, items, **prepared)
        self._wake_workers()
        return results

    def _prepare_spawn(self, task_name: str, params: Any,
                       options: Mapping[str, Any]) -> tuple[str, str, Any, dict[str, Any]]:
        """Apply hooks, resolve the queue and defaults, validate: nothing is written here."""
        check.name(task_name, "task name")
        unknown = set(options) - _SPAWN_OPTIONS
        if unknown:
            raise ValidationError(f"unknown spawn options: {sorted(unknown)}")
        hook = self.hooks.get("before_spawn")
        if hook is not None:
            options = hook(task_name, params, dict(options))
            if not isinstance(options, Mapping):
                raise ValidationError("the before_spawn hook must return the options dict")
        wf = self._registry.get(task_name)
        requested = options.get("queue")
        if wf is not None:
            if requested is not None and requested != wf.queue:
                raise ValidationError(f'Task "{task_name}" is registered for queue "{wf.queue}" '
                                 f'but spawn requested queue "{requested}".')
            target = wf.queue
        elif requested is None:
            raise ValidationError(f'Task "{task_name}" is not registered. '
                             "Provide queue when spawning unregistered tasks.")
        else:
            target = check.queue_name(requested)
        max_attempts = options.get("max_attempts")
        if max_attempts is None and wf is not None:
            max_attempts = wf.default_max_attempts
        if max_attempts is None:
            max_attempts = self.default_max_attempts
        if max_attempts is not None:
            check.positive_int(max_attempts, "max_attempts")
        cancellation = options.get("cancellation")
        cancellation = check.cancellation(cancellation) if cancellation is not None else (
            wf.default_cancellation if wf is not None else None)
        key = options.get("idempotency_key")
        if key is not None:
            check.name(key, "idempotency_key")
        check.json_value(params, "params", self.max_payload_bytes)
        prepared = dict(headers=check.headers(options.get("headers")),
                        retry_strategy=check.retry_strategy(options.get("retry_strategy")),
                        max_attempts=max_attempts, cancellation=cancellation,
                        idempotency_key=key)
        return target, task_name, params, prepared

    # ------------------------------------------------------------------ events

    def emit_event(self, event_name: str, payload: Any = None, queue_name: str | None = None) -> None:
        """Emit an event; the first emit per name wins and wakes every waiter."""
        check.name(event_name, "event_name")
        check.json_value(payload, "event payload", self.max_payload_bytes)
        if self._ready().emit_event(self._queue(queue_name), event_name, payload):
            self._wake_workers()

    # ------------------------------------------------------------------ results, cancel, retry

    def fetch_task_result(self, task_id: str, queue_name: str | None = None) -> TaskResultSnapshot | None:
        """The task's current state and, once terminal, its result or failure."""
        queue, tid = self._queue(queue_name), self._task_id(task_id)
        return None if tid is None else self._ready().task_result(queue, tid)

    def await_task_result(self, task_id: str, *, timeout: float | None = None,
                          queue_name: str | None = None) -> TaskResultSnapshot:
        """Block until the task is terminal (polling with backoff) and return its snapshot."""
        if timeout is not None:
            timeout = check.seconds(timeout, "timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.05
        while True:
            snap = self.fetch_task_result(task_id, queue_name)
            if snap is None:
                raise TaskNotFound(f'Task "{task_id}" not found')
            if snap.is_terminal:
                return snap
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f'Timed out waiting for task "{task_id}"')
                delay = min(delay, remaining)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def cancel_task(self, task_id: str, queue_name: str | None = None) -> None:
        """Cancel a pending, running or sleeping task; terminal tasks are left as they are."""
        queue, tid = self._queue(queue_name), self._task_id(task_id)
        if tid is None:
            raise TaskNotFound(f'Task "{task_id}" not found in queue "{queue}"')
        self._ready().cancel_task(queue, tid)

    def retry_task(self, task_id: str, *, max_attempts: int | None = None,
                   spawn_new: bool = False, queue_name: str | None = None) -> RetryTaskResult:
        """Retry a failed task in place (checkpoints kept) or as a brand-new task."""
        if max_attempts is not None:
            check.positive_int(max_attempts, "max_attempts")
        queue, tid = self._queue(queue_name), self._task_id(task_id)
        if tid is None:
            raise TaskNotFound(f'Task "{task_id}" not found in queue "{queue}"')
        result = self._ready().retry_task(queue, tid, max_attempts, spawn_new)
        self._wake_workers()
        return result

    # ------------------------------------------------------------------ inspection

    def get_task(self, task_id: str, queue_name: str | None = None) -> TaskInfo | None:
        """A task with its runs (attempt order) and checkpoints, or None."""
        queue, tid = self._queue(queue_name), self._task_id(task_id)
        return None if tid is None else self._ready().get_task(queue, tid)

    def list_tasks(self, queue_name: str | None = None, *, state: str | None = None,
                   task_name: str | None = None, limit: int = 50,
                   before_task_id: str | None = None) -> list[TaskInfo]:
        """Tasks newest first; page with ``before_task_id`` (runs and checkpoints left out)."""
        check.positive_int(limit, "limit")
        if before_task_id is not None:
            before_task_id = self._task_id(before_task_id)
            if before_task_id is None:
                raise ValidationError("before_task_id is not a task id")
        return self._ready().list_tasks(self._queue(queue_name), state=state,
                                        task_name=task_name, limit=limit,
                                        before_task_id=before_task_id)

    # ------------------------------------------------------------------ workers

    def claim_tasks(self, batch_size: int = 1, claim_timeout: float = 120,
                    worker_id: str = "worker", queue_name: str | None = None) -> list[ClaimedTask]:
        """Claim up to ``batch_size`` due runs (oldest first) with a lease of ``claim_timeout`` s."""
        check.positive_int(batch_size, "batch_size")
        claim_timeout = check.seconds(claim_timeout, "claim_timeout")
        check.name(worker_id or "worker", "worker_id")
        return self._ready().claim(self._queue(queue_name), worker_id or "worker",
                                   claim_timeout, batch_size)

    def work_batch(self, worker_id: str = "worker", claim_timeout: float = 120,
                   batch_size: int = 1, queue_name: str | None = None) -> int:
        """Claim once and run each claimed task to its next stop; return how many ran."""
        from .worker import execute

        claimed = self.claim_tasks(batch_size, claim_timeout, worker_id, queue_name)
        for task in claimed:
            execute(self, task, claim_timeout)
        return len(claimed)

    def start_worker(self, worker_id: str | None = None, claim_timeout: float = 120,
                     concurrency: int = 1, batch_size: int | None = None,
                     poll_interval: float = 0.25, queue_name: str | None = None) -> None:
        """Run a worker until ``stop_worker()`` or SIGINT/SIGTERM (in-flight tasks finish)."""
        from .worker import Worker

        worker = Worker(self, worker_id=worker_id, claim_timeout=claim_timeout,
                        concurrency=concurrency, batch_size=batch_size,
                        poll_interval=poll_interval, queue_name=self._queue(queue_name))
        self._workers.add(worker)
        try:
            worker.run()
        finally:
            self._workers.discard(worker)

    def stop_worker(self) -> None:
        """Ask every running worker of this engine to stop after its in-flight tasks."""
        for worker in list(self._workers):
            worker.stop()
