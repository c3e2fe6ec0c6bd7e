"""Storage trouble: missing schema, a read-only database, a full disk.

Expected: a clear error, the worker keeps running (retrying) or exits cleanly, no row
is corrupted or half-written, and once the storage is fixed the work completes once.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytest
import sqlalchemy as sa

from absurd_orm import Engine, SchemaOutOfDate
from absurd_orm.testing import PostgresServer

from .conftest import (
    Workers,
    assert_exactly_once,
    completed_count,
    run_rows,
    sa_engine_for,
    task_states,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def unmigrated_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    server = request.getfixturevalue("postgres_server")
    if not isinstance(server, PostgresServer):
        pytest.skip("needs a server we can create databases on")
    return server.create_database("absurd_fault_empty")


def test_missing_schema_is_a_clear_error(unmigrated_url: str, tmp_path: Path) -> None:
    with Engine(unmigrated_url) as eng:
        with pytest.raises(SchemaOutOfDate, match="migrate"):
            eng.spawn("steps", {"n": 1}, queue="default")
    w = Workers(tmp_path, unmigrated_url, tmp_path / "steps.log")
    try:
        proc = w.start("w", concurrency=2)
        assert proc.wait(timeout=60) == 1  # exits cleanly, with the command to run
        out = w.output("w")
        assert "absurd-orm migrate" in out and "Traceback" not in out, out[-2000:]
    finally:
        w.reap()
    eng = sa_engine_for(unmigrated_url)
    try:  # nothing was created behind the user's back
        assert [t for t in sa.inspect(eng).get_table_names() if t.startswith("absurd")] == []
    finally:
        eng.dispose()


def _make_read_only(backend: str, db_url: str, tmp: Path) -> tuple[dict[str, str], Callable[[], None]]:
    """Make the database read-only for the worker; return (its extra environment, undo)."""
    if backend == "postgresql":
        db = sa_engine_for(db_url)
        name = db.url.database
        admin = sa.create_engine(db.url.set(database="postgres"), isolation_level="AUTOCOMMIT",
                                 poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')

        def undo() -> None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
            admin.dispose()
            db.dispose()
        return {}, undo
    # SQLite opened read-only (root would ignore file modes): every write is refused
    # with SQLITE_READONLY, exactly as for a file the worker may not write.
    path = Path(sa.engine.make_url(db_url).database)
    return {"ABSURD_DATABASE_URL": f"sqlite:///file:{path}?mode=ro&uri=true"}, lambda: None

def _read_only_scenario(backend: str, sa_engine: sa.Engine,
                        tmp_path_factory: pytest.TempPathFactory) -> str:
    """Workers on a read-only database keep running and change nothing; returns their log."""
    if backend == "sqlite":
        # a private copy in a directory an unprivileged user can reach
        tmp = Path(tempfile.mkdtemp(prefix="absurd-ro-"))
        os.chmod(tmp, 0o755)
        url = f"sqlite:///{tmp / 'ro.db'}"
        with Engine(url, check_schema=False) as e:
            e.migrate()
            e.create_queue("default")
    else:
        tmp = tmp_path_factory.mktemp("ro")
        url = sa_engine.url.render_as_string(hide_password=False)
    w = Workers(tmp, url, tmp / "steps.log")
    db = sa_engine_for(url)
    try:
        real = Engine(url)
        ids = [real.spawn("steps", {"n": 2}, queue="default").task_id for _ in range(5)]
        real.close()
        before = run_rows(db)
        (tmp / "steps.log").touch()
        env, undo = _make_read_only(backend, url, tmp)
        try:
            w.start("ro", concurrency=2, extra_env=env, poll_interval=0.1)
            # The worker reports the problem (and does not die of it).
            wait_for(lambda: "claim failed" in w.output("ro") or w.procs["ro"].poll() is not None,
                     60, "the read-only worker to report its failed claim")
            out = w.output("ro")
            assert w.procs["ro"].poll() is None, out[-2000:]  # it keeps running
            assert "claim failed" in out, out[-2000:]
            assert w.stop("ro") == 0
            assert run_rows(db) == before and task_states(db) == {"pending": 5}
        finally:
            undo()
        # Writable again: the same tasks complete, once.
        w.start("rw", concurrency=2)
        wait_for(lambda: completed_count(db) == 5, 60, "the tasks to complete once writable")
        assert w.stop("rw") == 0
        assert_exactly_once(db, w.log, ids, {t: ["s0", "s1"] for t in ids})
        return out
    finally:
        w.reap()
        db.dispose()
        if backend == "sqlite":
            shutil.rmtree(tmp, ignore_errors=True)


def test_read_only_database(backend: str, engine: Engine, sa_engine: sa.Engine,
                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """Workers on a read-only database keep running, change nothing, and recover."""
    _read_only_scenario(backend, sa_engine, tmp_path_factory)


def test_read_only_database_error_is_clear(backend: str, engine: Engine, sa_engine: sa.Engine,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    """The worker's log says the database is read-only, not just an exception class name."""
    out = _read_only_scenario(backend, sa_engine, tmp_path_factory).lower()
    assert "readonly" in out or "read-only" in out, out[-2000:]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_disk_full(engine: Engine, db_url: str, workers: Workers) -> None:
    """The worker process may not grow any file (RLIMIT_FSIZE): writes fail with SQLITE_FULL."""
    db = sa_engine_for(db_url)
    real = Engine(db_url)
    try:
        blob = "x" * 50_000
        ids = [real.spawn("steps", {"n": 3, "pad": blob}, queue="default").task_id
               for _ in range(40)]
        path = Path(sa.engine.make_url(db_url).database)
        sizes = [os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists()]
        limit = max(sizes) + 200_000

        def no_room() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        workers.log.touch()
        full = workers.start("full", concurrency=2, claim_timeout=2, preexec=no_room)
        wait_for(lambda: "claim failed" in workers.output("full")
                 or "lost its database" in workers.output("full") or full.poll() is not None,
                 120, "the worker to hit the size limit")
        assert full.poll() is None, workers.output("full")[-3000:]  # still running
        assert workers.stop("full") == 0
        with db.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        # Space again: everything completes, checkpointed steps are not repeated.
        workers.start("roomy", concurrency=2, claim_timeout=2)
        wait_for(lambda: completed_count(db) == 40, 120, "every task to complete")
        assert workers.stop("roomy") == 0
        assert_exactly_once(db, workers.log, ids, {t: ["s0", "s1", "s2"] for t in ids})
    finally:
        real.close()
        db.dispose()
