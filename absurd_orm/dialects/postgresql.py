"""PostgreSQL: row locks, ``FOR UPDATE SKIP LOCKED`` claims, READ COMMITTED.

Concurrent claimers never wait for each other: the candidate runs are locked with
``SKIP LOCKED`` inside a CTE and updated by the same statement. The CTE matters: with
an inline ``IN (SELECT ... LIMIT n)`` the planner may run the subquery once per outer
row (a nested loop) and update more rows than asked for.

Internal: not part of the public API.
"""

from __future__ import annotations

import select
import threading
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

from sqlalchemy import Table, Update, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import Insert

from . import begin, register

# serialization_failure, deadlock_detected: the server rolled the transaction back.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})


@register("postgresql")
class PostgreSQLStrategy:
    """Claims with ``FOR UPDATE SKIP LOCKED`` in one statement."""

    name: ClassVar[str] = "postgresql"
    concurrent_claims: ClassVar[bool] = True
    dml_in_cte: ClassVar[bool] = True
    retry_delays: ClassVar[tuple[float, float]] = (0.002, 0.5)

    def __init__(self, durable_commits: bool = True) -> None:
        self.durable_commits = durable_commits
        self.write_options: dict[str, Any] = {}
        self.read_options: dict[str, Any] = {}

    def configure_engine(self, engine: Engine) -> None:
        """Nothing to install: PostgreSQL's defaults suit us."""

    @contextmanager
    def write_transaction(self, engine: Engine) -> Iterator[Connection]:
        """An ordinary READ COMMITTED transaction; rows are locked as they are touched."""
        with begin(engine) as conn:
            yield conn

    def insert(self, table: Table) -> Insert:
        """PostgreSQL's INSERT, which knows ``ON CONFLICT``."""
        return pg_insert(table)

    def claim_statement(self, candidates: Select[Any], update: Update) -> Update:
        """Lock candidates in a CTE with SKIP LOCKED, then update exactly those rows."""
        locked = candidates.with_for_update(skip_locked=True).cte("absurd_claim")
        run_id = update.table.c.run_id  # type: ignore[attr-defined]
        return update.where(run_id == locked.c.run_id)

    def lock_for_migration(self, conn: Connection) -> None:
        """Take a transaction-scoped advisory lock so concurrent migrators queue up."""
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('absurd_orm.migrate'))"))

    def prepare_connection(self, conn: Connection) -> None:
        """``synchronous_commit = off`` on our own connections when asked for."""
        if not self.durable_commits:
            with conn.connection.cursor() as cursor:
                cursor.execute("SET synchronous_commit = off")

    def is_stale(self, conn: Connection) -> bool:
        """An idle connection whose socket is readable heard from the server: a restart
        or shutdown closes it. One non-blocking select, no round trip."""
        raw = conn.connection.driver_connection
        if raw is None or raw.closed or raw.broken:
            return True
        readable, _, _ = select.select([raw.fileno()], [], [], 0)
        return bool(readable)

    def idle_waiter(self, engine: Engine, queue: str) -> NotifyWaiter:
        """LISTEN for the notifications the runs trigger sends when a run becomes pending."""
        return NotifyWaiter(engine, queue)

    def is_transient(self, exc: BaseException) -> bool:
        """Serialization failures and deadlocks: rolled back by the server, safe to retry."""
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        return getattr(orig, "sqlstate", None) in _TRANSIENT_SQLSTATES


#: Channel of the notification sent (by a trigger on absurd_runs) when a run becomes
#: pending; the payload is the queue name.
CHANNEL = "absurd_pending"


class NotifyWaiter:
    """Idle wait woken by PostgreSQL LISTEN/NOTIFY: new work reaches idle workers at once.

    A background thread holds one connection (outside the pool) in LISTEN mode and
    reconnects after errors, so a server restart only delays wake-ups until it is back.
    """

    def __init__(self, engine: Engine, queue: str) -> None:
        self._engine = engine
        self._queue = queue
        self._closed = threading.Event()
        #: Set once the listening connection is in LISTEN mode.
        self.ready = threading.Event()
        self._wakeups: list[threading.Event] = []
        self._thread = threading.Thread(target=self._listen, name="absurd-listen", daemon=True)
        self._conn: Any = None
        self._thread.start()

    def _listen(self) -> None:
        delay = 0.1
        while not self._closed.is_set():
            try:
                raw = self._engine.raw_connection()
                conn = raw.driver_connection
                raw.detach()  # LISTEN state must never go back to the pool
                conn.autocommit = True
                self._conn = conn
                conn.execute(f"LISTEN {CHANNEL}")
                self.ready.set()
                delay = 0.1
                while not self._closed.is_set():
                    for note in conn.notifies(timeout=0.5):
                        if note.payload == self._queue:
                            for event in list(self._wakeups):
                                event.set()
            except Exception:  # the server went away: retry with backoff
                if self._closed.wait(delay):
                    break
                delay = min(delay * 2, 5.0)
            finally:
                conn, self._conn = self._conn, None
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass

    def register(self, wakeup: threading.Event) -> None:
        """Set ``wakeup`` on every notification for our queue from now on."""
        if wakeup not in self._wakeups:
            self._wakeups.append(wakeup)

    def wait(self, timeout: float, wakeup: threading.Event) -> None:
        """Return when ``wakeup`` is set (by us on a notification, or in-process) or on timeout."""
        self.register(wakeup)
        wakeup.wait(timeout)

    def close(self) -> None:
        """Stop listening."""
        self._closed.set()
        self._thread.join(timeout=2)
