"""DBOS Transact for Python (``dbos``), its system database on SQLite or PostgreSQL.

* SQLite: a file in the work directory, switched to WAL before DBOS first opens it
  (DBOS sets no journal mode itself; without WAL a client and a worker process block
  each other). ``synchronous`` is SQLite's default, FULL; DBOS does not change it.
* PostgreSQL: database ``dbos_bench`` on the run's server.

Spawn = ``DBOSClient.enqueue`` from the driver. A worker is a launched DBOS process whose
queue ``bench`` is registered with ``worker_concurrency=N`` (and ``polling_interval_sec``
in W2; DBOS's default, 1 s, otherwise). Steps are ``@DBOS.step`` functions. W4 uses
``DBOS.recv`` in the workflow and ``DBOSClient.send`` from the driver; the workflow
publishes ``set_event("waiting")`` first so that the driver knows it is parked in recv.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from typing import Any

from .. import harness
from ..harness import QUEUE, REPO_ROOT, System

PG_DATABASE = "dbos_bench"
APP = "absurd-orm-bench"


def define_workflows() -> None:
    from dbos import DBOS

    @DBOS.step(name="s1")
    def s1(x: int) -> int:
        return x + 1

    @DBOS.step(name="s2")
    def s2(x: int) -> int:
        return x * 2

    @DBOS.step(name="s3")
    def s3(x: int) -> int:
        return x - 1

    @DBOS.workflow(name="steps3")
    def steps3(params: dict[str, Any]) -> dict[str, Any]:
        harness.mark_start()
        r = s3(s2(s1(params["i"])))
        return {"r": r, "t": harness.mark_end()}

    @DBOS.workflow(name="step1")
    def step1(params: dict[str, Any]) -> dict[str, Any]:
        r = s1(params["i"])
        return {"r": r, "t": harness.mark_end()}

    @DBOS.workflow(name="evt")
    def evt(params: dict[str, Any]) -> dict[str, Any]:
        DBOS.set_event("waiting", 1)
        payload = DBOS.recv(params["event"], timeout_seconds=300)
        return {"got": payload, "t": harness.mark_end()}


class DbosSystem(System):

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.backend = config.get("backend", "sqlite")
        if self.backend == "sqlite":
            self.name = "dbos-sqlite"
            self.path = self.workdir / "dbos.sqlite"
            self.url = f"sqlite:///{self.path}"
            self.status_table, self.events_table, self.ph = "workflow_status", "workflow_events", "?"
        else:
            self.name = "dbos-pg"
            self.database = config.get("database", PG_DATABASE)
            self.url = harness.pg_dsn_for(config, self.database)
            self.status_table, self.events_table, self.ph = (
                "dbos.workflow_status", "dbos.workflow_events", "%s")
        self.title = (f"DBOS {self._version()} + "
                      f"{'SQLite' if self.backend == 'sqlite' else 'PostgreSQL'}")
        self.client: Any = None
        self.obs: Any = None

    @staticmethod
    def _version() -> str:
        import importlib.metadata as md

        try:
            return md.version("dbos")
        except md.PackageNotFoundError:
            return "?"

    def settings(self) -> dict[str, Any]:
        import importlib.metadata as md

        out: dict[str, Any] = {
            "dbos": self._version(), "sqlalchemy": md.version("sqlalchemy"),
            "pool": "system database pool 20 per process (DBOS default)",
            "worker": "DBOS.launch + register_queue(worker_concurrency=N); executor threads",
            "spawn": "DBOSClient.enqueue", "default_poll_s": 1.0,
            "notification_polling_s": "1.0 (default; recv wake-up on SQLite)"
                                      if self.backend == "sqlite" else "LISTEN/NOTIFY",
            "bulk_spawn": "n/a (no bulk enqueue)",
        }
        if self.backend == "sqlite":
            self.fresh()
            conn = sqlite3.connect(str(self.path))
            try:
                sync = conn.execute("PRAGMA synchronous").fetchone()[0]
                jmode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            finally:
                conn.close()
            out.update(sqlite=sqlite3.sqlite_version, journal_mode=f"{jmode} (set by the bench)",
                       synchronous={0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync))
        else:
            out["psycopg"] = md.version("psycopg")
        return out

    def fresh(self) -> None:
        if self.backend == "sqlite":
            harness.sqlite_remove(self.path)
            conn = sqlite3.connect(str(self.path))
            try:
                if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                    raise RuntimeError("could not switch the DBOS SQLite file to WAL")
            finally:
                conn.close()
        else:
            harness.pg_recreate(self.config, self.database)
        # DBOS creates its system tables on launch: do that in a throwaway process
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        with open(self.workdir / "logs" / f"{self.name}-init.log", "ab") as logf:
            subprocess.run([sys.executable, "-m", "bench.worker", "--system", self.name,
                            "--config", json.dumps(self.config), "--init-only"],
                           check=True, cwd=str(REPO_ROOT), env=env, stdout=logf, stderr=logf,
                           timeout=300)

    def init_schema_in_process(self) -> None:
        from dbos import DBOS

        define_workflows()
        DBOS(config={"name": APP, "system_database_url": self.url, "log_level": "WARNING"})
        DBOS.launch()
        DBOS.destroy()

    def open(self) -> None:
        from dbos import DBOSClient

        self.client = DBOSClient(system_database_url=self.url)
        if self.backend == "sqlite":
            self.obs = sqlite3.connect(str(self.path), isolation_level=None)
        else:
            import psycopg

            self.obs = psycopg.connect(self.url, autocommit=True)

    def close(self) -> None:
        if self.client is not None:
            self.client.destroy()
            self.client = None
        if self.obs is not None:
            self.obs.close()
            self.obs = None

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return self.obs.execute(sql.replace("?", self.ph), args).fetchone()

    def spawn(self, task: str, params: dict[str, Any]) -> str:
        handle = self.client.enqueue({"queue_name": QUEUE, "workflow_name": task}, params)
        return handle.get_workflow_id()

    def bulk_spawn_unavailable(self) -> str | None:
        return "n/a: no bulk enqueue"

    def count_completed(self) -> int:
        return self._one(f"SELECT count(*) FROM {self.status_table} "
                         "WHERE queue_name = ? AND status = 'SUCCESS'", (QUEUE,))[0]

    def is_done(self, handle: str) -> bool:
        row = self._one(f"SELECT status FROM {self.status_table} WHERE workflow_uuid = ?",
                        (handle,))
        if row is not None and row[0] in ("ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"):
            raise RuntimeError(f"workflow {handle} ended {row[0]}")
        return row is not None and row[0] == "SUCCESS"

    def is_waiting(self, handle: str) -> bool:
        return self._one(f"SELECT 1 FROM {self.events_table} WHERE workflow_uuid = ? "
                         "AND key = 'waiting'", (handle,)) is not None

    def emit(self, handle: str, event: str) -> None:
        self.client.send(handle, {"ok": True}, topic=event)

    def storage_bytes(self) -> int | None:
        if self.backend == "sqlite":
            return harness.sqlite_size(self.path)
        return harness.pg_size(self.config, self.database)

    def default_poll(self) -> str:
        return "1.0 s (queue polling_interval_sec default)"

    def w5_unavailable(self) -> str | None:
        return "n/a: DBOS dispatches queues inside its runtime and has no claim call"

    def run_worker(self, concurrency: int, poll: float | None, index: int) -> None:
        from dbos import DBOS

        define_workflows()
        DBOS(config={"name": APP, "system_database_url": self.url,
                     "executor_id": f"bench-w{index}-{os.getpid()}", "log_level": "WARNING"})
        DBOS.launch()
        kwargs: dict[str, Any] = {"worker_concurrency": concurrency,
                                  "on_conflict": "always_update"}
        if poll is not None:
            kwargs["polling_interval_sec"] = poll
        DBOS.register_queue(QUEUE, **kwargs)
        while True:
            time.sleep(3600)
