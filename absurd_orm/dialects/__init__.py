"""Dialect strategies: the only place where databases are told apart.

A strategy owns what truly differs between databases: engine set-up, how a write
transaction begins (SQLite takes its single write lock up front), the claim statement,
the dialect's ``INSERT`` construct (for ``ON CONFLICT``), which errors are safe to retry,
and capability flags. Everything else is portable SQLAlchemy Core in the repository.

Adding a database means adding one module here that registers a strategy.

Internal: not part of the public API.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Iterator, Protocol, runtime_checkable

from sqlalchemy import Table, Update
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import Insert

from ..errors import UnsupportedDialect

__all__ = ["DialectStrategy", "IdleWaiter", "register", "strategy_for", "supported_dialects", "normalize_url"]


@runtime_checkable
class DialectStrategy(Protocol):
    """What a database must provide to host absurd-orm."""

    name: ClassVar[str]
    #: Several connections may claim at once without blocking each other (row locks).
    concurrent_claims: ClassVar[bool]
    #: INSERT/UPDATE may run inside a CTE, so a fenced write can be one statement.
    dml_in_cte: ClassVar[bool]
    #: First and longest pause (seconds) between retries of a transient failure.
    retry_delays: ClassVar[tuple[float, float]]
    #: Execution options of connections used for writing / for reading only.
    write_options: dict[str, Any]
    read_options: dict[str, Any]

    def configure_engine(self, engine: Engine) -> None:
        """Install per-connection settings on ``engine`` (idempotent)."""

    def write_transaction(self, engine: Engine) -> Any:
        """Context manager yielding a Connection inside a transaction that may write."""

    def insert(self, table: Table) -> Insert:
        """The dialect's INSERT construct (with ``on_conflict_do_*``)."""

    def claim_statement(self, candidates: Select[Any], update: Update) -> Update:
        """Restrict ``update`` to the rows of ``candidates`` without double-claiming."""

    def is_transient(self, exc: BaseException) -> bool:
        """True when ``exc`` rolled the transaction back and retrying it is safe."""

    def lock_for_migration(self, conn: Connection) -> None:
        """Serialise concurrent migrations inside ``conn``'s transaction."""

    def prepare_connection(self, conn: Connection) -> None:
        """Settings for a connection the repository keeps (not the host's others)."""

    def is_stale(self, conn: Connection) -> bool:
        """Cheap check before reusing a kept connection: has the server dropped it?"""

    def idle_waiter(self, engine: Engine, queue: str) -> IdleWaiter:
        """How an idle worker on ``queue`` learns, from other processes, that work arrived."""


class IdleWaiter(Protocol):
    """Blocks an idle worker until work may have arrived (or the timeout passes)."""

    def wait(self, timeout: float, wakeup: threading.Event) -> None:
        """Return after ``timeout`` seconds, when ``wakeup`` is set, or on outside news."""

    def close(self) -> None:
        """Release what the waiter holds."""


_REGISTRY: dict[str, Callable[[], DialectStrategy]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: register a strategy for SQLAlchemy dialect ``name``."""

    def deco(cls: type) -> type:
        _REGISTRY[name] = cls
        return cls

    return deco


def supported_dialects() -> list[str]:
    """Names of the dialects with a strategy module in this package."""
    for info in pkgutil.iter_modules(__path__):
        _load(info.name)
    return sorted(_REGISTRY)


def strategy_for(engine: Engine, *, durable_commits: bool = True) -> DialectStrategy:
    """Return the strategy for ``engine``'s dialect or raise :class:`UnsupportedDialect`.

    ``durable_commits=False`` lets commits return before they reach the disk: a process
    crash loses nothing, an OS crash or power loss may lose the last commits.
    """
    _load(engine.dialect.name)
    factory = _REGISTRY.get(engine.dialect.name)
    if factory is None:
        raise UnsupportedDialect(
            f"absurd-orm does not support the {engine.dialect.name!r} dialect; "
            f"supported: {', '.join(supported_dialects())}"
        )
    return factory(durable_commits=durable_commits)


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; a PostgreSQL URL without a driver uses psycopg (version 3)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _load(name: str) -> None:
    # A dialect's module is named after it and imported on first use, so importing
    # absurd_orm never requires a driver and a new dialect is just a new module.
    if name not in _REGISTRY and name.isidentifier():
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise


@contextmanager
def begin(engine: Engine, **options: Any) -> Iterator[Connection]:
    """Check out a connection, apply execution ``options`` and run one transaction."""
    with engine.connect() as conn:
        if options:
            conn.execution_options(**options)
        with conn.begin():
            yield conn
