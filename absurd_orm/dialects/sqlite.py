"""SQLite: one writer at a time, taken explicitly.

SQLite serialises writers with a database-wide lock. A transaction that starts as a
reader and later writes can fail with SQLITE_BUSY at once, without waiting (two readers
upgrading would deadlock), so every transaction that may write starts with
``BEGIN IMMEDIATE``: it waits (``busy_timeout``) for the write lock up front and then
cannot fail for lock reasons. pysqlite's own transaction handling is switched off
(``isolation_level = None``) so that the ``begin`` event below controls BEGIN.

Row locks do not exist: SQLAlchemy drops ``FOR UPDATE`` on SQLite without a word, which
is correct here only because the immediate transaction already excludes other writers.

WAL lets readers proceed while one writer commits. Requires SQLite >= 3.35 (RETURNING).

Internal: not part of the public API.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

from sqlalchemy import Table, Update, event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import Insert

from ..errors import UnsupportedDialect
from . import begin, register

MIN_VERSION = (3, 35, 0)
BUSY_TIMEOUT_MS = 30_000
_CONFIGURED = "absurd_sqlite_configured"
_BEGIN_OPTION = "absurd_sqlite_begin"
_BUSY_OPTION = "absurd_sqlite_busy_ms"
_BUSY_SET = "absurd_sqlite_busy_set"


def _configure_connection(dbapi_connection: Any, synchronous: str) -> None:
    # Must be None before any BEGIN of ours: pysqlite would otherwise open its own
    # transactions behind SQLAlchemy's back.
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() not in ("wal", "memory"):
            cur.execute("PRAGMA journal_mode = WAL")
        cur.execute(f"PRAGMA synchronous = {synchronous}")
    finally:
        cur.close()


@register("sqlite")
class SQLiteStrategy:
    """Claims and writes under ``BEGIN IMMEDIATE``; WAL; busy timeout; foreign keys."""

    name: ClassVar[str] = "sqlite"
    concurrent_claims: ClassVar[bool] = False
    dml_in_cte: ClassVar[bool] = False
    #: First and longest pause between retries of a transaction refused as busy.
    retry_delays: ClassVar[tuple[float, float]] = (0.0001, 0.01)

    def __init__(self, durable_commits: bool = True) -> None:
        if sqlite3.sqlite_version_info < MIN_VERSION:
            raise UnsupportedDialect(
                f"SQLite {sqlite3.sqlite_version} is too old: absurd-orm needs >= "
                f"{'.'.join(map(str, MIN_VERSION))} (for RETURNING)"
            )
        # FULL: each commit is fsynced. NORMAL (WAL): a process crash loses nothing, an OS
        # crash or power loss may lose the last commits.
        self.synchronous = "FULL" if durable_commits else "NORMAL"
        # SQLite's own busy handler sleeps 1, 2, 5, 10... ms between tries, far longer
        # than a write transaction here lasts; the repository's connections fail fast
        # instead and retry after a short, jittered, growing pause (retry_delays).
        self.write_options = {_BEGIN_OPTION: "IMMEDIATE", _BUSY_OPTION: 0}
        self.read_options: dict[str, Any] = {}

    def configure_engine(self, engine: Engine) -> None:
        """Install the connect/begin listeners once per engine."""
        if engine.dialect.name != "sqlite":
            raise UnsupportedDialect(f"SQLite strategy given a {engine.dialect.name} engine")
        if getattr(engine, "_absurd_sqlite", None) is not None:
            return
        database = engine.url.database or ""
        if database in ("", ":memory:") or "mode=memory" in str(engine.url.query):
            raise UnsupportedDialect(
                "in-memory SQLite is not supported: every connection would see its own empty "
                "database; use a file, e.g. sqlite:///absurd.db")
        engine._absurd_sqlite = self  # type: ignore[attr-defined]
        synchronous = self.synchronous

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            _configure_connection(dbapi_connection, synchronous)
            record.info[_CONFIGURED] = True

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            record = conn.connection._connection_record  # type: ignore[attr-defined]
            info = record.info if record is not None else conn.connection.info
            if not info.get(_CONFIGURED):
                # A connection pooled before we were installed (a host's engine).
                _configure_connection(conn.connection.dbapi_connection, synchronous)
                info[_CONFIGURED] = True
            options = conn.get_execution_options()
            busy = options.get(_BUSY_OPTION, BUSY_TIMEOUT_MS)
            if info.get(_BUSY_SET, BUSY_TIMEOUT_MS) != busy:
                conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(busy)}")
                info[_BUSY_SET] = busy
            conn.exec_driver_sql(f"BEGIN {options.get(_BEGIN_OPTION, 'DEFERRED')}")

    @contextmanager
    def write_transaction(self, engine: Engine) -> Iterator[Connection]:
        """A transaction holding SQLite's write lock from its first statement."""
        with begin(engine, **{_BEGIN_OPTION: "IMMEDIATE"}) as conn:
            yield conn

    def insert(self, table: Table) -> Insert:
        """SQLite's INSERT, which knows ``ON CONFLICT``."""
        return sqlite_insert(table)

    def claim_statement(self, candidates: Select[Any], update: Update) -> Update:
        """``UPDATE ... WHERE id IN (SELECT ... LIMIT n)``: the write lock excludes rivals."""
        run_id = update.table.c.run_id  # type: ignore[attr-defined]
        return update.where(run_id.in_(candidates.scalar_subquery()))

    def lock_for_migration(self, conn: Connection) -> None:
        """Nothing to do: migrations run in an immediate (write-locked) transaction."""

    def prepare_connection(self, conn: Connection) -> None:
        """Nothing per connection: the pragmas are set when SQLite connects."""

    def is_stale(self, conn: Connection) -> bool:
        """A SQLite connection is a file handle: it cannot be dropped by a server."""
        return False

    def idle_waiter(self, engine: Engine, queue: str) -> DataVersionWaiter:
        """Watch ``PRAGMA data_version``: it changes whenever another connection commits."""
        return DataVersionWaiter(engine)

    def is_transient(self, exc: BaseException) -> bool:
        """SQLITE_BUSY / SQLITE_LOCKED: nothing was written, try again."""
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        if not isinstance(orig, sqlite3.OperationalError):
            return False
        code = getattr(orig, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
        text = str(orig).lower()
        return "database is locked" in text or "database is busy" in text


class DataVersionWaiter:
    """Idle wait that notices commits from other processes within about a millisecond.

    ``PRAGMA data_version`` reads the WAL index in shared memory: no I/O, no lock, so
    checking it every millisecond while idle costs a few microseconds each time.
    """

    SLICE = 0.001

    def __init__(self, engine: Engine) -> None:
        self._conn = engine.raw_connection()
        # Compared across waits, so a commit landing between two waits is not missed.
        self._last = self._version()

    def _version(self) -> int:
        return self._conn.driver_connection.execute("PRAGMA data_version").fetchone()[0]

    def _changed(self) -> bool:
        version = self._version()
        if version == self._last:
            return False
        self._last = version
        return True

    def wait(self, timeout: float, wakeup: threading.Event) -> None:
        """Return on ``wakeup``, on a commit by another connection, or after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self._changed():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or wakeup.wait(min(self.SLICE, remaining)):
                return

    def close(self) -> None:
        """Return the connection to the pool."""
        self._conn.close()
