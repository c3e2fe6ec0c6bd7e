"""PostgreSQL goes away under load (``pg_ctl restart``, kill -9 of the postmaster).

A private server per module, so restarting it does not disturb the shared one. Four
worker processes run 500 tasks while the server restarts; a spawner keeps spawning
through the outage (retrying with the same idempotency key, as an application would).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from absurd_orm import Engine
from absurd_orm.models import runs, tasks
from absurd_orm.testing import PostgresServer, PostgresUnavailable

from .conftest import (
    Workers,
    assert_exactly_once,
    completed_count,
    postmaster_pid,
    sa_engine_for,
    wait_for,
)

pytestmark = pytest.mark.slow

N_TASKS = 500
UP_FRONT = 250


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A private PostgreSQL server that the tests of this module restart and kill."""
    # synchronous_commit stays on: with it off the server may drop acknowledged commits
    # in a crash by design, and these tests crash it. (fsync may stay off: the kernel
    # survives a server kill, so written WAL does too.)
    server = PostgresServer(settings={"synchronous_commit": "on"})
    try:
        server.start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and could not start: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop("immediate")


def _fresh_db(pg: PostgresServer, name: str) -> str:
    url = pg.create_database(name)
    with Engine(url, check_schema=False) as eng:
        eng.migrate()
        eng.create_queue("default")
    return url


def _accepting(pg: PostgresServer) -> bool:
    return pg._run(str(pg.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(pg.port),
                   check=False).returncode == 0


def _kill9_and_restart(pg: PostgresServer, during_outage) -> None:
    """SIGKILL the postmaster; call ``during_outage()`` while it is down; start it again."""
    pid = postmaster_pid(pg.datadir)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _accepting(pg), 30, "the killed server to stop accepting connections")
    during_outage()
    # Orphaned backends notice the postmaster's death and exit; until they have, the
    # shared memory block is in use and a new postmaster refuses to start.
    deadline = time.monotonic() + 60
    while True:
        try:
            pg.restart("immediate")
            break
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    pg.wait_ready(60)


class Spawner(threading.Thread):
    """Spawns keys one by one, retrying each (same idempotency key) until it is written."""

    def __init__(self, url: str, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.keys = keys
        self.errors: list[BaseException] = []
        self.created: dict[str, str] = {}
        self.crashed: BaseException | None = None
        self.pace = threading.Event()

    def run(self) -> None:
        try:
            with Engine(self.url) as eng:
                for key in self.keys:
                    deadline = time.monotonic() + 120
                    while True:
                        try:
                            res = eng.spawn("steps", {"n": 2}, queue="default", max_attempts=20,
                                            idempotency_key=key)
                            self.created[key] = res.task_id
                            break
                        except Exception as exc:  # noqa: BLE001 - inspected by the test
                            self.errors.append(exc)
                            if time.monotonic() > deadline:
                                raise
                            self.pace.wait(0.05)
                    self.pace.wait(0.015)  # spread the spawns over the run
        except BaseException as exc:  # noqa: BLE001
            self.crashed = exc


def _is_clear_connection_error(exc: BaseException) -> bool:
    """A DBAPI error saying the database connection is gone (what the caller can act on)."""
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    text = str(exc).lower()
    return any(w in text for w in ("connection", "server closed", "terminating", "shutting down",
                                   "starting up", "recovery mode"))


@pytest.mark.parametrize("fault", ["pg_ctl_restart", "kill9"])
def test_workers_survive_server_restart(pg: PostgresServer, tmp_path: Path, fault: str) -> None:
    url = _fresh_db(pg, f"restart_{fault}")
    w = Workers(tmp_path, url, tmp_path / "steps.log")
    db = sa_engine_for(url)
    spawner = Spawner(url, [f"k{i:03d}" for i in range(UP_FRONT, N_TASKS - 1)])
    outage_errors: list[BaseException] = []
    try:
        with Engine(url) as eng:
            ids = {f"k{i:03d}": eng.spawn("steps", {"n": 2}, queue="default", max_attempts=20,
                                           idempotency_key=f"k{i:03d}").task_id
                   for i in range(UP_FRONT)}
        for i in range(4):
            w.start(f"w{i}", concurrency=2, claim_timeout=3, poll_interval=0.1)
        spawner.start()
        wait_for(lambda: completed_count(db) >= 100, 120, "100 completed tasks before the fault")

        if fault == "pg_ctl_restart":
            pg.restart("fast")
            pg.wait_ready(60)
            wait_for(lambda: completed_count(db) >= 200, 120, "progress after the restart")
            pg.restart("immediate")  # again, without a clean shutdown checkpoint
            pg.wait_ready(60)
        else:
            outage = Engine(url)

            def spawn_while_down() -> None:
                with pytest.raises(Exception) as info:
                    outage.spawn("steps", {"n": 2}, queue="default", max_attempts=20,
                                 idempotency_key=f"k{N_TASKS - 1:03d}")
                outage_errors.append(info.value)

            try:
                _kill9_and_restart(pg, spawn_while_down)
                # Once the server is back, the same spawn (same key) goes through exactly once.
                res = outage.spawn("steps", {"n": 2}, queue="default", max_attempts=20,
                                   idempotency_key=f"k{N_TASKS - 1:03d}")
                assert res.created
                ids[f"k{N_TASKS - 1:03d}"] = res.task_id
            finally:
                outage.close()

        spawner.join(timeout=180)
        assert not spawner.is_alive(), "the spawner did not finish"
        assert spawner.crashed is None, repr(spawner.crashed)
        if fault == "pg_ctl_restart":  # the last key is spawned here instead
            with Engine(url) as eng:
                ids[f"k{N_TASKS - 1:03d}"] = eng.spawn(
                    "steps", {"n": 2}, queue="default", max_attempts=20,
                    idempotency_key=f"k{N_TASKS - 1:03d}").task_id
        ids.update(spawner.created)
        try:
            wait_for(lambda: completed_count(db) == N_TASKS, 240, "all 500 tasks to complete",
                     interval=0.2)
        except BaseException:
            tails = {name: w.output(name)[-1500:] for name in w.procs}
            alive = {name: p.poll() is None for name, p in w.procs.items()}
            raise AssertionError(f"stuck at {completed_count(db)} completed; workers alive "
                                 f"{alive}; their output: {tails}") from None

        # The workers survived the outage, and stop cleanly.
        assert {n: p.poll() for n, p in w.procs.items()} == {f"w{i}": None for i in range(4)}
        assert w.stop_all() == {f"w{i}": 0 for i in range(4)}

        # Spawns that failed said why, in terms of the connection.
        unclear = [repr(e)[:300] for e in spawner.errors + outage_errors
                   if not _is_clear_connection_error(e)]
        assert unclear == []
        if fault == "kill9":
            assert len(outage_errors) == 1

        # Nothing half-written: 500 tasks, one per key, each with its runs; no orphan runs.
        with db.connect() as conn:
            keys = conn.execute(sa.select(tasks.c.idempotency_key, tasks.c.task_id)).all()
            orphans = conn.scalar(sa.select(sa.func.count()).select_from(runs).where(
                runs.c.task_id.not_in(sa.select(tasks.c.task_id))))
            runless = conn.scalar(sa.select(sa.func.count()).select_from(tasks).where(
                tasks.c.task_id.not_in(sa.select(runs.c.task_id))))
        assert sorted(k for k, _ in keys) == [f"k{i:03d}" for i in range(N_TASKS)]
        assert dict(keys) == ids
        assert orphans == 0 and runless == 0
        assert_exactly_once(db, w.log, list(ids.values()),
                            {t: ["s0", "s1"] for t in ids.values()})
    finally:
        spawner.pace.set()
        w.reap()
        db.dispose()


def test_engine_used_before_a_restart_works_after_it(pg: PostgresServer) -> None:
    """A spawn issued after the server is back must not fail on a connection the engine kept."""
    url = _fresh_db(pg, "reuse_after_restart")
    with Engine(url) as eng:
        eng.spawn("steps", {"n": 1}, queue="default")
        assert eng.fetch_task_result(eng.spawn("steps", {"n": 1}, queue="default").task_id)
        pg.restart("fast")
        pg.wait_ready(60)
        spawned = eng.spawn("steps", {"n": 1}, queue="default")  # server is up: must work
        assert eng.fetch_task_result(spawned.task_id).state == "pending"
        assert len(eng.list_tasks(limit=10)) == 3
