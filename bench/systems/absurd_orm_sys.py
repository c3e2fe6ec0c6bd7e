"""absurd-orm, on SQLite (a file in the work directory) or on the run's PostgreSQL.

Driven through the public API only (``Engine``, ``migrate``, ``create_queue``,
``register_task``, ``spawn``, ``start_worker``, ``fetch_task_result``, ``get_task``,
``emit_event``, ``claim_tasks``, ``work_batch``). The driver counts completed tasks with
one read-only ``SELECT count(*)`` on its own connection. W5's preloaded history is test
data written with SQLAlchemy Core into the tables of ``absurd_orm.models``.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from .. import harness
from ..harness import QUEUE, System

PG_DATABASE = "absurd_orm_bench"
LOAD_BATCH = 10_000


def register_tasks(engine: Any) -> None:
    """The benchmark's task handlers (the same bodies for every system)."""

    @engine.register_task(name="steps3")
    def steps3(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        harness.mark_start()
        a = ctx.step("s1", lambda: params["i"] + 1)
        b = ctx.step("s2", lambda: a * 2)
        c = ctx.step("s3", lambda: b - 1)
        return {"r": c, "t": harness.mark_end()}

    @engine.register_task(name="step1")
    def step1(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        r = ctx.step("s1", lambda: params["i"])
        return {"r": r, "t": harness.mark_end()}

    @engine.register_task(name="evt")
    def evt(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        payload = ctx.await_event(params["event"])
        return {"got": payload, "t": harness.mark_end()}

    @engine.register_task(name="noop")
    def noop(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"ok": True, "t": harness.mark_end()}


class AbsurdOrmSystem(System):
    ours = True

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.backend = config.get("backend", "sqlite")
        # durable=False: Engine(durable_commits=False), commits not flushed to disk
        self.durable = bool(config.get("durable", True))
        suffix = "" if self.durable else "-nosync"
        if self.backend == "sqlite":
            self.name = "absurd-orm-sqlite" + suffix
            self.path = self.workdir / "absurd-orm.sqlite"
            self.url = f"sqlite:///{self.path}"
        else:
            self.name = "absurd-orm-pg" + suffix
            self.database = config.get("database", PG_DATABASE)
            self.dsn = harness.pg_dsn_for(config, self.database)
            self.url = self.dsn.replace("postgresql://", "postgresql+psycopg://", 1)
        self.title = (f"absurd-orm {self._version()} + "
                      f"{'SQLite' if self.backend == 'sqlite' else 'PostgreSQL'}"
                      + ("" if self.durable else " (durable_commits=False)"))
        self.engine: Any = None
        self.obs: Any = None

    def _options(self) -> dict[str, Any]:
        return {} if self.durable else {"durable_commits": False}

    @staticmethod
    def _version() -> str:
        import importlib.metadata as md

        try:
            return md.version("absurd-orm")
        except md.PackageNotFoundError:
            return "?"

    # ------------------------------------------------------------------ driver side

    def settings(self) -> dict[str, Any]:
        import importlib.metadata as md

        from absurd_orm import Engine

        self.fresh()
        eng = Engine(self.url, queue_name=QUEUE, **self._options())
        try:
            sa_engine = eng.sa_engine
            out: dict[str, Any] = {
                "absurd-orm": self._version(), "sqlalchemy": md.version("sqlalchemy"),
                "driver": sa_engine.dialect.driver,
                "pool": f"{type(sa_engine.pool).__name__} size "
                        f"{getattr(sa_engine.pool, 'size', lambda: '?')()} per process "
                        f"(+ overflow {getattr(sa_engine.pool, '_max_overflow', '?')})",
                "worker": "Engine.start_worker(concurrency=N): one claiming loop + N-thread pool",
                "spawn": "Engine.spawn (one transaction per call)",
                "default_poll_s": 0.25,
                "durable_commits": self.durable,
                "bulk_spawn": "Engine.spawn_many" if hasattr(Engine, "spawn_many")
                              else "n/a (Engine has no spawn_many)",
            }
            if self.backend == "sqlite":
                with sa_engine.connect() as conn:
                    sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
                    jmode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                out.update(sqlite=sqlite3.sqlite_version, journal_mode=jmode,
                           synchronous={0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync))
            else:
                out["psycopg"] = md.version("psycopg")
        finally:
            eng.close()
        return out

    def fresh(self) -> None:
        from absurd_orm import Engine

        if self.backend == "sqlite":
            harness.sqlite_remove(self.path)
        else:
            harness.pg_recreate(self.config, self.database)
        eng = Engine(self.url, queue_name=QUEUE, check_schema=False, **self._options())
        try:
            eng.migrate()
            eng.create_queue()
        finally:
            eng.close()

    def open(self) -> None:
        from absurd_orm import Engine

        self.engine = Engine(self.url, queue_name=QUEUE, **self._options())
        register_tasks(self.engine)
        if self.backend == "sqlite":
            self.obs = sqlite3.connect(str(self.path), isolation_level=None,
                                       check_same_thread=False)
        else:
            import psycopg

            self.obs = psycopg.connect(self.dsn, autocommit=True)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.obs is not None:
            self.obs.close()
            self.obs = None

    def spawn(self, task: str, params: dict[str, Any]) -> str:
        return self.engine.spawn(task, params).task_id

    def bulk_spawn_unavailable(self) -> str | None:
        from absurd_orm import Engine

        return None if hasattr(Engine, "spawn_many") else "n/a: Engine has no spawn_many"

    def spawn_many(self, task: str, params: Sequence[dict[str, Any]]) -> None:
        self.engine.spawn_many(task, list(params))

    def count_completed(self) -> int:
        ph = "?" if self.backend == "sqlite" else "%s"
        return self.obs.execute(
            f"SELECT count(*) FROM absurd_tasks WHERE queue = {ph} AND state = 'completed'",
            (QUEUE,)).fetchone()[0]

    def is_done(self, handle: str) -> bool:
        snap = self.engine.fetch_task_result(handle)
        if snap is not None and snap.state in ("failed", "cancelled"):
            raise RuntimeError(f"task {handle} ended {snap.state}: {snap.failure}")
        return snap is not None and snap.state == "completed"

    def is_waiting(self, handle: str) -> bool:
        info = self.engine.get_task(handle)
        return info is not None and info.state == "sleeping"

    def emit(self, handle: str, event: str) -> None:
        self.engine.emit_event(event, {"ok": True})

    def storage_bytes(self) -> int | None:
        if self.backend == "sqlite":
            return harness.sqlite_size(self.path)
        return harness.pg_size(self.config, self.database)

    def default_poll(self) -> str:
        return "0.25 s (start_worker default)"

    # ------------------------------------------------------------------ W5

    def w5_unavailable(self) -> str | None:
        return None

    def w5_load(self, rows: int) -> None:
        """Insert ``rows`` completed tasks (one completed run each), 10k rows per batch."""
        import sqlalchemy as sa

        from absurd_orm.models import runs, tasks

        eng = sa.create_engine(self.url)
        base = datetime.now(timezone.utc) - timedelta(days=2)
        base_ms = int(base.timestamp() * 1000)
        try:
            for start in range(0, rows, LOAD_BATCH):
                trows, rrows = [], []
                for i in range(start, min(rows, start + LOAD_BATCH)):
                    at = base + timedelta(milliseconds=i)
                    tid = harness.uuid7_at(base_ms + i)
                    rid = harness.uuid7_at(base_ms + i)
                    trows.append(dict(
                        task_id=tid, queue=QUEUE, task_name="noop", params=harness.params_for(i),
                        headers=None, retry_strategy=None, max_attempts=5, max_delay=None,
                        max_duration=None, cancel_at=None, idempotency_key=None,
                        state="completed", attempts=1, last_attempt_run=rid,
                        result={"ok": True}, enqueued_at=at, first_started_at=at,
                        completed_at=at, cancelled_at=None))
                    rrows.append(dict(
                        run_id=rid, queue=QUEUE, task_id=tid, attempt=1, state="completed",
                        claimed_by="loader", claim_expires_at=None, available_at=at,
                        wake_event=None, wake_step=None, event_payload=None, started_at=at,
                        completed_at=at, failed_at=None, result={"ok": True}, failure=None,
                        created_at=at))
                with eng.begin() as conn:
                    conn.execute(tasks.insert(), trows)
                    conn.execute(runs.insert(), rrows)
            with eng.connect() as conn:
                if self.backend == "postgresql":
                    # what autovacuum would soon do after a bulk load
                    conn.execution_options(isolation_level="AUTOCOMMIT")
                    conn.exec_driver_sql("VACUUM ANALYZE absurd_tasks")
                    conn.exec_driver_sql("VACUUM ANALYZE absurd_runs")
                else:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            eng.dispose()

    def w5_claim_all(self) -> int:
        n = 0
        while self.engine.claim_tasks(batch_size=1, claim_timeout=3600, worker_id="w5-claimer"):
            n += 1
        return n

    def w5_work_all(self) -> int:
        n = 0
        while self.engine.work_batch(worker_id="w5-worker", batch_size=1):
            n += 1
        return n

    # ------------------------------------------------------------------ worker side

    def run_worker(self, concurrency: int, poll: float | None, index: int) -> None:
        import os

        from absurd_orm import Engine

        engine = Engine(self.url, queue_name=QUEUE, **self._options())
        register_tasks(engine)
        kwargs: dict[str, Any] = {"worker_id": f"bench-{index}-{os.getpid()}",
                                  "concurrency": concurrency}
        if poll is not None:
            kwargs["poll_interval"] = poll
        engine.start_worker(**kwargs)
        while True:  # stopped by a signal: wait for the driver's stop
            time.sleep(3600)
