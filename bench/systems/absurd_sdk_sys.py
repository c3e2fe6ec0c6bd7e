"""Absurd's own Python SDK (``absurd-sdk``) on the run's PostgreSQL.

The Absurd schema is the one bundled in the ``absurdctl`` package
(``absurdctl.BUNDLED_SCHEMA_SQL``), loaded into a fresh database before every
repetition. The SDK's sync client holds one autocommit psycopg connection; its
``start_worker(concurrency=N)`` runs tasks on a thread pool sharing that connection.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import harness
from ..harness import QUEUE, System

PG_DATABASE = "absurd_sdk_bench"
LOAD_BATCH = 10_000


def register_tasks(app: Any) -> None:
    @app.register_task("steps3")
    def steps3(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        harness.mark_start()
        a = ctx.step("s1", lambda: params["i"] + 1)
        b = ctx.step("s2", lambda: a * 2)
        c = ctx.step("s3", lambda: b - 1)
        return {"r": c, "t": harness.mark_end()}

    @app.register_task("step1")
    def step1(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        r = ctx.step("s1", lambda: params["i"])
        return {"r": r, "t": harness.mark_end()}

    @app.register_task("evt")
    def evt(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        payload = ctx.await_event(params["event"])
        return {"got": payload, "t": harness.mark_end()}

    @app.register_task("noop")
    def noop(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"ok": True, "t": harness.mark_end()}


def schema_sql() -> str:
    import absurdctl

    return absurdctl.BUNDLED_SCHEMA_SQL


class AbsurdSdkSystem(System):
    name = "absurd-sdk-pg"
    backend = "postgresql"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.database = config.get("database", PG_DATABASE)
        self.dsn = harness.pg_dsn_for(config, self.database)
        self.title = f"Absurd SDK {self._version('absurd-sdk')} + PostgreSQL"
        self.app: Any = None
        self.obs: Any = None

    @staticmethod
    def _version(dist: str) -> str:
        import importlib.metadata as md

        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "?"

    def settings(self) -> dict[str, Any]:
        return {"absurd-sdk": self._version("absurd-sdk"),
                "schema": f"absurdctl {self._version('absurdctl')} bundled schema",
                "psycopg": self._version("psycopg"),
                "pool": "one psycopg connection per client (autocommit); worker threads share it",
                "worker": "Absurd.start_worker(concurrency=N): thread pool on that connection",
                "spawn": "Absurd.spawn (absurd.spawn_task, one statement)",
                "default_poll_s": 0.25, "bulk_spawn": "n/a (no bulk spawn in the SDK)"}

    def fresh(self) -> None:
        import psycopg
        from absurd_sdk import Absurd

        harness.pg_recreate(self.config, self.database)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(schema_sql())
        app = Absurd(self.dsn, queue_name=QUEUE)
        try:
            app.create_queue(QUEUE)
        finally:
            app.close()

    def open(self) -> None:
        import psycopg
        from absurd_sdk import Absurd

        self.app = Absurd(self.dsn, queue_name=QUEUE)
        register_tasks(self.app)
        self.obs = psycopg.connect(self.dsn, autocommit=True)

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
            self.app = None
        if self.obs is not None:
            self.obs.close()
            self.obs = None

    def spawn(self, task: str, params: dict[str, Any]) -> str:
        return str(self.app.spawn(task, params)["task_id"])

    def bulk_spawn_unavailable(self) -> str | None:
        return "n/a: the SDK has no bulk spawn"

    def count_completed(self) -> int:
        return self.obs.execute(
            f"SELECT count(*) FROM absurd.t_{QUEUE} WHERE state = 'completed'").fetchone()[0]

    def is_done(self, handle: str) -> bool:
        row = self.obs.execute(f"SELECT state FROM absurd.t_{QUEUE} WHERE task_id = %s",
                               (handle,)).fetchone()
        if row is not None and row[0] in ("failed", "cancelled"):
            raise RuntimeError(f"task {handle} ended {row[0]}")
        return row is not None and row[0] == "completed"

    def is_waiting(self, handle: str) -> bool:
        return self.obs.execute(
            f"SELECT 1 FROM absurd.r_{QUEUE} WHERE task_id = %s AND state = 'sleeping'",
            (handle,)).fetchone() is not None

    def emit(self, handle: str, event: str) -> None:
        self.app.emit_event(event, {"ok": True})

    def storage_bytes(self) -> int | None:
        return harness.pg_size(self.config, self.database)

    def default_poll(self) -> str:
        return "0.25 s (start_worker default)"

    # ------------------------------------------------------------------ W5

    def w5_unavailable(self) -> str | None:
        return None

    def w5_load(self, rows: int) -> None:
        """Completed tasks + runs written with COPY (test data), then VACUUM ANALYZE."""
        import psycopg
        from psycopg.types.json import Jsonb

        base = datetime.now(timezone.utc) - timedelta(days=2)
        base_ms = int(base.timestamp() * 1000)
        with psycopg.connect(self.dsn, autocommit=False) as conn:
            for start in range(0, rows, LOAD_BATCH):
                trows, rrows = [], []
                for i in range(start, min(rows, start + LOAD_BATCH)):
                    at = base + timedelta(milliseconds=i)
                    tid = harness.uuid7_at(base_ms + i)
                    rid = harness.uuid7_at(base_ms + i)
                    trows.append((tid, "noop", Jsonb(harness.params_for(i)), 5, at, at,
                                  "completed", 1, rid, Jsonb({"ok": True})))
                    rrows.append((rid, tid, 1, "completed", "loader", at, at, at,
                                  Jsonb({"ok": True}), at))
                with conn.cursor() as cur:
                    with cur.copy(f"COPY absurd.t_{QUEUE} (task_id, task_name, params, "
                                  "max_attempts, enqueue_at, first_started_at, state, attempts, "
                                  "last_attempt_run, completed_payload) FROM STDIN") as cp:
                        for r in trows:
                            cp.write_row(r)
                    with cur.copy(f"COPY absurd.r_{QUEUE} (run_id, task_id, attempt, state, "
                                  "claimed_by, available_at, started_at, completed_at, result, "
                                  "created_at) FROM STDIN") as cp:
                        for r in rrows:
                            cp.write_row(r)
                conn.commit()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"VACUUM ANALYZE absurd.t_{QUEUE}")
            conn.execute(f"VACUUM ANALYZE absurd.r_{QUEUE}")

    def w5_claim_all(self) -> int:
        n = 0
        while self.app.claim_tasks(batch_size=1, claim_timeout=3600, worker_id="w5-claimer"):
            n += 1
        return n

    def w5_work_all(self) -> int:
        # work_batch returns nothing: the no-op body counts its runs (in this process)
        start = harness.tasks_ended()
        while True:
            before = harness.tasks_ended()
            self.app.work_batch(worker_id="w5-worker", batch_size=1)
            if harness.tasks_ended() == before:
                return before - start

    # ------------------------------------------------------------------ worker side

    def run_worker(self, concurrency: int, poll: float | None, index: int) -> None:
        from absurd_sdk import Absurd

        app = Absurd(self.dsn, queue_name=QUEUE)
        register_tasks(app)
        kwargs: dict[str, Any] = {"worker_id": f"bench-{index}-{os.getpid()}",
                                  "concurrency": concurrency}
        if poll is not None:
            kwargs["poll_interval"] = poll
        app.start_worker(**kwargs)
        while True:
            time.sleep(3600)
