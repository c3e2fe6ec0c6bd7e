"""The three ways to install absurd-orm's schema, the schema check, and model/migration parity.

1. ``alembic upgrade head`` from the repository root (own environment, ``absurd_alembic_version``);
2. ``Engine.migrate()`` / ``absurd-orm migrate`` (same environment, run from the package);
3. embedded in a host application's own Alembic history (``version_locations`` +
   ``alembic upgrade heads``), with a throwaway host project built in ``tmp_path``.

Every test that touches a database runs on a FRESH, empty database of each backend
(the ``fresh_url`` fixture), never on the shared migrated one of ``conftest.py``.
The wheel-based way in is in ``test_packaging.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

import absurd_orm
from absurd_orm import Engine, SchemaOutOfDate
from absurd_orm import migration
from absurd_orm.dialects import normalize_url
from absurd_orm.models import metadata
from absurd_orm.testing import PostgresServer

REPO = Path(__file__).resolve().parents[1]
ABSURD_TABLES = {t.name for t in metadata.sorted_tables}
TIMEOUT = 120  # seconds, for every subprocess


# --------------------------------------------------------------------------- helpers


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an EMPTY database of each backend (a new SQLite file / a new PG database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    if not isinstance(server, PostgresServer):
        pytest.skip("ABSURD_TEST_POSTGRES_URL names a single database; fresh databases "
                    "need the test session's own PostgresServer")
    name = f"absurd_mig_{uuid.uuid4().hex[:16]}"
    yield server.create_database(name)
    import psycopg

    with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sa_engine_for(url: str) -> sa.Engine:
    return sa.create_engine(normalize_url(url))


def table_names(url: str) -> set[str]:
    eng = sa_engine_for(url)
    try:
        return set(sa.inspect(eng).get_table_names())
    finally:
        eng.dispose()


def version_rows(url: str, table: str) -> list[str]:
    eng = sa_engine_for(url)
    try:
        with eng.connect() as conn:
            return sorted(conn.execute(sa.text(f"SELECT version_num FROM {table}")).scalars())
    finally:
        eng.dispose()


def execute(url: str, sql: str) -> None:
    eng = sa_engine_for(url)
    try:
        with eng.begin() as conn:
            conn.execute(sa.text(sql))
    finally:
        eng.dispose()


def run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; on unexpected failure show its output."""
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=TIMEOUT)
    if check and proc.returncode != 0:
        pytest.fail(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                    f"stderr:\n{proc.stderr}", pytrace=False)
    return proc


def alembic(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    """``alembic <args>`` in the repository root, the way a contributor runs it."""
    return run([sys.executable, "-m", "alembic", *args], cwd=REPO,
               env={"ABSURD_DATABASE_URL": url})


def absurd_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The ``absurd-orm`` console script next to this interpreter (else ``-m absurd_orm.cli``)."""
    script = Path(sys.executable).parent / "absurd-orm"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "absurd_orm.cli"]
    # cwd outside the repository, so nothing can come from the checkout's alembic.ini.
    return run([*cmd, *args], cwd=Path(sys.executable).parent, check=check)


def assert_engine_works(url: str) -> None:
    """A default Engine (schema check on) creates a queue, spawns and runs a task."""
    with Engine(url) as engine:

        @engine.register_task(name="double")
        def double(params, ctx):
            return ctx.step("x2", lambda: params["n"] * 2)

        engine.create_queue()
        spawned = engine.spawn("double", {"n": 21})
        assert engine.work_batch(batch_size=5) == 1
        snap = engine.fetch_task_result(spawned.task_id)
        assert snap is not None and snap.state == "completed" and snap.result == 42


# The throwaway host project ----------------------------------------------------------

HOST_ENV_PY = '''\
"""A host application's ordinary online/offline env.py, plus absurd_orm.metadata."""
import os

from alembic import context
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine

import absurd_orm

host_metadata = MetaData()
Table("host_items", host_metadata,
      Column("id", Integer, primary_key=True),
      Column("name", String(100), nullable=False))

# absurd_orm.metadata next to the host's, so autogenerate leaves absurd's tables alone.
target_metadata = [host_metadata, absurd_orm.metadata]
config = context.config
url = os.environ["HOST_DATABASE_URL"]

if context.is_offline_mode():
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata,
                              render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()
'''

HOST_REVISION = '''\
"""host items

Revision ID: host_0001_items
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "host_0001_items"
down_revision = None
branch_labels = ("host",)
depends_on = {depends_on!r}


def upgrade():
    op.create_table(
        "host_items",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
    )


def downgrade():
    op.drop_table("host_items")
'''


def write_host_project(root: Path, absurd_versions: str, depends_on: str | None = None) -> Path:
    """A minimal host project whose Alembic history embeds absurd-orm's revisions.

    ``depends_on`` (e.g. ``"absurd_0001_initial"``) orders the host revision after ours.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "migrations" / "env.py").write_text(HOST_ENV_PY)
    (root / "migrations" / "script.py.mako").write_text(
        (migration.script_location() / "script.py.mako").read_text())
    (root / "migrations" / "versions" / "host_0001_items.py").write_text(
        HOST_REVISION.replace("{depends_on!r}", repr(depends_on)))
    (root / "alembic.ini").write_text(textwrap.dedent(f"""\
        [alembic]
        script_location = %(here)s/migrations
        # space, not os: os splits on ':', which would break 'absurd_orm:_migrations/versions'
        path_separator = space
        version_locations = %(here)s/migrations/versions {absurd_versions}
        """))
    return root


def check_host_database(url: str) -> None:
    """Both trees applied, in the host's alembic_version only."""
    names = table_names(url)
    assert ABSURD_TABLES <= names
    assert "host_items" in names
    assert "absurd_alembic_version" not in names
    assert version_rows(url, "alembic_version") == ["absurd_0001_initial", "host_0001_items"]


# --------------------------------------------------------------------------- 1. alembic CLI


def test_alembic_upgrade_head_from_repository_root(fresh_url: str) -> None:
    alembic("upgrade", "head", url=fresh_url)
    names = table_names(fresh_url)
    assert ABSURD_TABLES <= names
    assert "alembic_version" not in names  # a host's version table is never created
    assert version_rows(fresh_url, "absurd_alembic_version") == [migration.SCHEMA_HEAD]

    alembic("upgrade", "head", url=fresh_url)  # already at head: a no-op
    assert version_rows(fresh_url, "absurd_alembic_version") == [migration.SCHEMA_HEAD]
    assert "absurd_0001_initial (head)" in alembic("current", url=fresh_url).stdout

    alembic("downgrade", "base", url=fresh_url)
    names = table_names(fresh_url)
    assert not (ABSURD_TABLES & names)
    assert version_rows(fresh_url, "absurd_alembic_version") == []

    alembic("upgrade", "head", url=fresh_url)
    assert ABSURD_TABLES <= table_names(fresh_url)
    assert version_rows(fresh_url, "absurd_alembic_version") == [migration.SCHEMA_HEAD]
    assert_engine_works(fresh_url)


def test_alembic_offline_sql_needs_no_database(tmp_path: Path) -> None:
    """``alembic upgrade head --sql`` prints the DDL; the database is never touched."""
    for url, marker in [(f"sqlite:///{tmp_path / 'never.db'}", "CREATE TABLE absurd_queues"),
                        ("postgresql://nobody@127.0.0.1:1/none", "absurd_notify_pending")]:
        out = alembic("upgrade", "head", "--sql", url=url).stdout
        assert marker in out
        assert "CREATE TABLE absurd_alembic_version" in out
        assert "INSERT INTO absurd_alembic_version" in out
        assert "absurd_0001_initial" in out
    assert not (tmp_path / "never.db").exists()


# --------------------------------------------------------------------------- 2. Engine / CLI


def test_engine_migrate_is_idempotent(fresh_url: str) -> None:
    with Engine(fresh_url, check_schema=False) as engine:
        engine.migrate()
        engine.migrate()
    assert ABSURD_TABLES <= table_names(fresh_url)
    assert version_rows(fresh_url, "absurd_alembic_version") == [migration.SCHEMA_HEAD]
    assert "alembic_version" not in table_names(fresh_url)
    assert_engine_works(fresh_url)


def test_engine_migrate_leaves_a_hosts_alembic_version_alone(fresh_url: str) -> None:
    execute(fresh_url, "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
    execute(fresh_url, "INSERT INTO alembic_version (version_num) VALUES ('host_rev_1')")
    with Engine(fresh_url, check_schema=False) as engine:
        engine.migrate()
    assert version_rows(fresh_url, "alembic_version") == ["host_rev_1"]
    assert version_rows(fresh_url, "absurd_alembic_version") == [migration.SCHEMA_HEAD]


def test_concurrent_migrations_queue_up(fresh_url: str) -> None:
    """Two Engine.migrate() at once on an empty database: both succeed, one row recorded."""
    start = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            with Engine(fresh_url, check_schema=False) as engine:
                start.wait()
                engine.migrate()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert version_rows(fresh_url, "absurd_alembic_version") == [migration.SCHEMA_HEAD]


def test_cli_migrate_and_check(fresh_url: str) -> None:
    before = absurd_cli("check", "--url", fresh_url, check=False)
    assert before.returncode == 1, before.stderr
    assert "absurd-orm migrate" in before.stderr
    assert "not installed" in before.stderr

    absurd_cli("migrate", "--url", fresh_url)
    absurd_cli("migrate", "--url", fresh_url)  # idempotent
    assert version_rows(fresh_url, "absurd_alembic_version") == [migration.SCHEMA_HEAD]

    after = absurd_cli("check", "--url", fresh_url, check=False)
    assert after.returncode == 0, after.stderr
    assert "current" in after.stdout


# --------------------------------------------------------------------------- 3. models == schema


def test_models_match_migrated_schema(fresh_url: str) -> None:
    with Engine(fresh_url, check_schema=False) as engine:
        engine.migrate()
    eng = sa_engine_for(fresh_url)
    try:
        with eng.connect() as conn:
            # version_table tells the comparison which table is Alembic's bookkeeping,
            # exactly as our env.py does; nothing else is filtered.
            ctx = MigrationContext.configure(conn, opts={
                "version_table": migration.VERSION_TABLE, "compare_type": True})
            diff = compare_metadata(ctx, metadata)
    finally:
        eng.dispose()
    assert diff == []


def test_compare_detects_a_schema_that_differs(fresh_url: str) -> None:
    """The comparison above is not vacuous: a dropped index shows up."""
    with Engine(fresh_url, check_schema=False) as engine:
        engine.migrate()
    execute(fresh_url, "DROP INDEX ix_absurd_runs_task_id")
    eng = sa_engine_for(fresh_url)
    try:
        with eng.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": migration.VERSION_TABLE})
            diff = compare_metadata(ctx, metadata)
    finally:
        eng.dispose()
    assert [(d[0], d[1].name) for d in diff] == [("add_index", "ix_absurd_runs_task_id")]


# --------------------------------------------------------------------------- 4. SchemaOutOfDate


def _assert_out_of_date(engine: Engine) -> SchemaOutOfDate:
    with pytest.raises(SchemaOutOfDate) as info:
        engine.list_queues()
    with pytest.raises(SchemaOutOfDate):
        engine.spawn("anything", {}, queue="default")
    message = str(info.value)
    assert "absurd-orm migrate" in message
    assert "Engine.migrate()" in message
    assert "alembic upgrade heads" in message
    return info.value


def test_unmigrated_database_raises_schema_out_of_date(fresh_url: str) -> None:
    with Engine(fresh_url) as engine:
        exc = _assert_out_of_date(engine)
        assert "not installed" in str(exc)
        engine.migrate()
        engine.create_queue()
        engine.spawn("anything", {}, queue="default")
        assert engine.list_queues() == ["default"]


def test_schema_out_of_date_hides_the_password(fresh_url: str) -> None:
    if not fresh_url.startswith("postgresql"):
        pytest.skip("SQLite URLs carry no password")
    # The throwaway server trusts loopback connections, so any password is accepted.
    url = sa.make_url(fresh_url).set(password="s3cret-pw")
    with Engine(url) as engine:
        with pytest.raises(SchemaOutOfDate) as info:
            engine.list_queues()
    assert "s3cret-pw" not in str(info.value)
    assert "***" in str(info.value)


def test_unknown_recorded_revision_raises(fresh_url: str) -> None:
    """A schema newer than the package (a revision it does not know): upgrade the package."""
    with Engine(fresh_url, check_schema=False) as engine:
        engine.migrate()
    execute(fresh_url, "UPDATE absurd_schema_version SET revision = 'absurd_9999_future'")
    with Engine(fresh_url) as engine:
        with pytest.raises(SchemaOutOfDate) as info:
            engine.list_queues()
    assert "absurd_9999_future" in str(info.value)
    assert "upgrade the absurd-orm package" in str(info.value)


def test_deleted_version_row_raises(fresh_url: str) -> None:
    with Engine(fresh_url, check_schema=False) as engine:
        engine.migrate()
    execute(fresh_url, "DELETE FROM absurd_schema_version")
    with Engine(fresh_url) as engine:
        _assert_out_of_date(engine)


def test_older_schema_than_package_raises(fresh_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package whose head is newer than the database's (simulated: one more revision)."""
    with Engine(fresh_url, check_schema=False) as engine:
        engine.migrate()
    monkeypatch.setattr(migration, "SCHEMA_HEAD", "absurd_0002_future")
    monkeypatch.setattr(migration, "REVISIONS", (*migration.REVISIONS, "absurd_0002_future"))
    with Engine(fresh_url) as engine:
        exc = _assert_out_of_date(engine)
        assert "at absurd_0001_initial" in str(exc)
        assert "absurd_0002_future" in str(exc)
    monkeypatch.undo()
    assert_engine_works(fresh_url)


def test_check_can_be_turned_off(fresh_url: str) -> None:
    """check_schema=False skips the check: the database error surfaces instead."""
    with Engine(fresh_url, check_schema=False) as engine:
        with pytest.raises(sa.exc.DBAPIError):
            engine.list_queues()


def test_revision_chain() -> None:
    script = ScriptDirectory(str(migration.script_location()))
    assert script.get_heads() == [migration.SCHEMA_HEAD]
    assert script.get_bases() == [migration.REVISIONS[0]]
    revisions = list(reversed(list(script.walk_revisions())))  # oldest first
    assert tuple(r.revision for r in revisions) == migration.REVISIONS
    assert all(len(r.revision) <= 32 for r in revisions)  # fits alembic's VARCHAR(32)
    assert migration.BRANCH_LABEL == "absurd"
    assert "absurd" in revisions[0].branch_labels
    assert script.get_revision("absurd@head").revision == migration.SCHEMA_HEAD
    for rev in revisions:  # revisions never import the models (they must not change)
        assert "absurd_orm" not in Path(rev.path).read_text(), rev.path
    # In a checkout, the package finds the top-level migrations/ directory.
    assert migration.script_location() == REPO / "migrations"
    assert migration.versions_dir() == REPO / "migrations" / "versions"


# --------------------------------------------------------------------------- 5. host embedding


def test_embedded_in_a_host_history(fresh_url: str, tmp_path: Path) -> None:
    host = write_host_project(tmp_path / "host", str(migration.versions_dir()))
    env = {"HOST_DATABASE_URL": fresh_url}
    python_alembic = [sys.executable, "-m", "alembic"]

    heads = run([*python_alembic, "heads"], cwd=host, env=env).stdout
    assert "absurd_0001_initial (absurd) (head)" in heads
    assert "host_0001_items (host) (head)" in heads

    run([*python_alembic, "upgrade", "heads"], cwd=host, env=env)
    check_host_database(fresh_url)
    run([*python_alembic, "upgrade", "heads"], cwd=host, env=env)  # no-op
    check_host_database(fresh_url)
    # With absurd_orm.metadata in target_metadata, autogenerate proposes nothing.
    checked = run([*python_alembic, "check"], cwd=host, env=env)
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr

    assert_engine_works(fresh_url)  # the schema check reads absurd_schema_version


def test_embedded_with_depends_on(fresh_url: str, tmp_path: Path) -> None:
    host = write_host_project(tmp_path / "host", str(migration.versions_dir()),
                              depends_on="absurd_0001_initial")
    env = {"HOST_DATABASE_URL": fresh_url}
    python_alembic = [sys.executable, "-m", "alembic"]
    run([*python_alembic, "upgrade", "heads"], cwd=host, env=env)
    names = table_names(fresh_url)
    assert ABSURD_TABLES <= names and "host_items" in names
    # Alembic's own bookkeeping: the dependency is implied by the host head.
    assert version_rows(fresh_url, "alembic_version") == ["host_0001_items"]
    current = run([*python_alembic, "current"], cwd=host, env=env).stdout
    assert "absurd_0001_initial (effective head)" in current
    assert_engine_works(fresh_url)


def test_embedded_upgrade_of_absurd_branch_only(fresh_url: str, tmp_path: Path) -> None:
    host = write_host_project(tmp_path / "host", str(migration.versions_dir()))
    env = {"HOST_DATABASE_URL": fresh_url}
    run([sys.executable, "-m", "alembic", "upgrade", "absurd@head"], cwd=host, env=env)
    assert "host_items" not in table_names(fresh_url)
    assert version_rows(fresh_url, "alembic_version") == ["absurd_0001_initial"]
    assert_engine_works(fresh_url)
