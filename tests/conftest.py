"""Shared fixtures: every behaviour test runs on SQLite and on a real PostgreSQL.

PostgreSQL is started by the test session itself (``absurd_orm.testing.PostgresServer``)
unless ``ABSURD_TEST_POSTGRES_URL`` points at one. When it cannot start, its tests are
skipped locally with the reason, and the run fails when ``CI`` is set.

Isolation is by deleting rows after each test: claims need committed data that other
connections can see, so rolled-back transactions cannot isolate tests.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from absurd_orm import Engine, ManualClock
from absurd_orm.schema import metadata
from absurd_orm.testing import PostgresServer, PostgresUnavailable

BACKENDS = ["sqlite", "postgresql"]
START = datetime(2030, 1, 1, tzinfo=timezone.utc)
IN_CI = bool(os.environ.get("CI"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str | PostgresServer | None]:
    """A running PostgreSQL (ours, or the one ABSURD_TEST_POSTGRES_URL names)."""
    given = os.environ.get("ABSURD_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI and could not start: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop("immediate")


def _pg_url(server: str | PostgresServer, database: str) -> str:
    if isinstance(server, PostgresServer):
        return server.create_database(database)
    return server


@pytest.fixture(scope="session")
def backend_urls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Lazily filled: backend name -> URL of a migrated database."""
    return {}


def _migrated_url(backend: str, request: pytest.FixtureRequest, urls: dict[str, str],
                  tmp: pytest.TempPathFactory) -> str:
    if backend not in urls:
        if backend == "sqlite":
            url = f"sqlite:///{tmp.mktemp('sqlite') / 'absurd.db'}"
        else:
            url = _pg_url(request.getfixturevalue("postgres_server"), "absurd_test")
        engine = Engine(url, check_schema=False)
        engine.migrate()
        engine.close()
        urls[backend] = url
    return urls[backend]


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: ``sqlite`` or ``postgresql``."""
    return request.param


@pytest.fixture(scope="session")
def sa_engine(backend: str, request: pytest.FixtureRequest, backend_urls: dict[str, str],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """A SQLAlchemy engine on a migrated database of the current backend."""
    url = _migrated_url(backend, request, backend_urls, tmp_path_factory)
    from absurd_orm.dialects import normalize_url

    eng = sa.create_engine(normalize_url(url))
    yield eng
    eng.dispose()


@pytest.fixture
def db_url(sa_engine: sa.Engine) -> str:
    """URL of the current backend's migrated database."""
    return sa_engine.url.render_as_string(hide_password=False)


def wipe(eng: sa.Engine) -> None:
    """Delete every row of absurd-orm's tables (but the schema version marker)."""
    with eng.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            if table.name != "absurd_schema_version":
                conn.execute(table.delete())


@pytest.fixture
def clock() -> ManualClock:
    """A frozen clock the test moves by hand."""
    return ManualClock(START)


@pytest.fixture
def engine(sa_engine: sa.Engine, clock: ManualClock) -> Iterator[Engine]:
    """An absurd-orm Engine on the current backend with a manual clock and queue 'default'."""
    eng = Engine(sa_engine, clock=clock)
    eng.create_queue("default")
    try:
        yield eng
    finally:
        eng.close()
        wipe(sa_engine)


@pytest.fixture
def tmp_sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh, un-migrated SQLite file."""
    return f"sqlite:///{tmp_path / 'fresh.db'}"
