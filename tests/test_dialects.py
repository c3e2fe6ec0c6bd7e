"""What differs per database: lock behaviour shown with a second real connection."""

from __future__ import annotations

import sqlite3
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import create_mock_engine

from absurd_orm import Engine, UnsupportedDialect
from absurd_orm.dialects import normalize_url, strategy_for, supported_dialects
from absurd_orm.models import runs


def _spawn(engine: Engine, n: int) -> list[str]:
    @engine.register_task(name="noop")
    def noop(params, ctx):
        return None

    return [engine.spawn("noop", {"i": i}).run_id for i in range(n)]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgres_second_claimer_skips_locked_runs(engine: Engine) -> None:
    """While one transaction holds a claim, another claims the *other* run at once."""
    spawned = _spawn(engine, 2)
    repo, strategy = engine._repo, engine.strategy
    with strategy.write_transaction(engine.sa_engine) as first:
        mine = repo._claim(first, "default", "w1", 60, 1)
        assert [c.run_id for c in mine] == [spawned[0]]
        with strategy.write_transaction(engine.sa_engine) as second:
            # Would raise instead of waiting if the claim blocked on the locked row.
            second.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
            theirs = repo._claim(second, "default", "w2", 60, 5)
            assert [c.run_id for c in theirs] == [spawned[1]]
    assert engine.claim_tasks(5) == []


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgres_claim_limit_is_exact_under_concurrency(engine: Engine) -> None:
    """Concurrent batch claims never hand one run to two claimers nor exceed the limit."""
    spawned = set(_spawn(engine, 60))
    got: list[list[str]] = []
    lock = threading.Lock()

    def claimer(i: int) -> None:
        while True:
            batch = engine.claim_tasks(batch_size=4, worker_id=f"w{i}")
            if not batch:
                return
            assert len(batch) <= 4
            with lock:
                got.append([c.run_id for c in batch])

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    flat = [r for batch in got for r in batch]
    assert len(flat) == len(set(flat)) == 60
    assert set(flat) == spawned


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sqlite_second_writer_waits_for_the_write_lock(engine: Engine, db_url: str) -> None:
    """A claim holds SQLite's write lock from BEGIN: another writer waits; readers do not."""
    spawned = _spawn(engine, 2)
    repo, strategy = engine._repo, engine.strategy
    path = sa.engine.make_url(db_url).database
    with strategy.write_transaction(engine.sa_engine) as first:
        mine = repo._claim(first, "default", "w1", 60, 1)
        assert [c.run_id for c in mine] == [spawned[0]]
        other = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            # WAL: a reader still sees the last committed state (both runs pending).
            states = other.execute("SELECT state FROM absurd_runs ORDER BY run_id").fetchall()
            assert states == [("pending",), ("pending",)]
        finally:
            other.close()
    assert [c.run_id for c in engine.claim_tasks(5)] == [spawned[1]]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sqlite_connections_are_configured(engine: Engine) -> None:
    """WAL, a busy timeout and foreign keys are on for the engine's connections."""
    with engine.sa_engine.connect() as conn, conn.begin():
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_claim_query_uses_the_partial_index(engine: Engine, backend: str) -> None:
    """The claim scan reads the partial index on claimable runs, not the whole table."""
    from sqlalchemy import literal_column, select

    _spawn(engine, 3)
    now = engine.clock()
    stmt = (select(runs.c.run_id)
            .where(runs.c.queue == "default",
                   runs.c.state.in_([literal_column("'pending'"), literal_column("'sleeping'")]),
                   runs.c.available_at <= now)
            .order_by(runs.c.available_at, runs.c.run_id).limit(5))
    with engine.sa_engine.connect() as conn:
        compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
        if backend == "sqlite":
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
    assert "ix_absurd_runs_claim" in plan


def test_unknown_dialect_is_refused_with_the_supported_list() -> None:
    mock = create_mock_engine("mysql+pymysql://", lambda *a, **k: None)
    with pytest.raises(UnsupportedDialect) as info:
        strategy_for(mock)  # type: ignore[arg-type]
    for name in supported_dialects():
        assert name in str(info.value)
    assert "mysql" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_plain_postgres_urls_get_the_psycopg_driver() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


def test_transient_errors_are_recognised(engine: Engine, backend: str) -> None:
    """Only lock conflicts count as safe to retry; other errors surface."""
    strategy = engine.strategy
    assert not strategy.is_transient(ValueError("nope"))
    if backend == "sqlite":
        assert strategy.is_transient(sqlite3.OperationalError("database is locked"))
        assert not strategy.is_transient(sqlite3.OperationalError("no such table: x"))
    else:
        import psycopg.errors as pgerr

        assert strategy.is_transient(pgerr.SerializationFailure("x"))
        assert strategy.is_transient(pgerr.DeadlockDetected("x"))
        assert not strategy.is_transient(pgerr.UniqueViolation("x"))


def test_durable_commits_can_be_relaxed(backend: str, db_url: str, tmp_path) -> None:
    """durable_commits=False: SQLite synchronous=NORMAL, PostgreSQL synchronous_commit=off,
    on the engine's own connections; tasks still run to completion."""
    url = f"sqlite:///{tmp_path / 'relaxed.db'}" if backend == "sqlite" else db_url
    with Engine(url, durable_commits=False, check_schema=False) as eng:
        eng.migrate()
        eng.create_queue("relaxed")

        @eng.register_task(name="twice", queue="relaxed")
        def twice(params, ctx):
            return ctx.step("x2", lambda: params["n"] * 2)

        spawned = eng.spawn("twice", {"n": 21})
        assert eng.work_batch(queue_name="relaxed") == 1
        assert eng.fetch_task_result(spawned.task_id, queue_name="relaxed").result == 42
        setting = ("PRAGMA synchronous" if backend == "sqlite" else "SHOW synchronous_commit")
        conn, _ = eng._repo._idle["write"][0] if eng._repo._idle["write"] else eng._repo._idle["auto"][0]
        value = conn.exec_driver_sql(setting).scalar()
        if conn.in_transaction():
            conn.rollback()
        assert value in (1, "off")
        eng.drop_queue("relaxed")
