"""Schema management: run absurd-orm's Alembic revisions and check the schema is current.

The revisions live in the top-level ``migrations/`` directory of a checkout and inside
the package (``absurd_orm/_migrations``) once installed. They can run three ways:

* ``Engine.migrate()`` / ``absurd-orm migrate`` / :func:`upgrade`: our own environment,
  recording its version in ``absurd_alembic_version`` (a host's ``alembic_version`` is
  never touched);
* ``alembic upgrade head`` from a checkout (same environment, same table);
* embedded in a host's Alembic history: add :func:`versions_dir` to the host's
  ``version_locations`` and run ``alembic upgrade heads``.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, select, table, column
from sqlalchemy.engine import Connection, Engine

from .errors import SchemaOutOfDate

__all__ = [
    "SCHEMA_HEAD",
    "BRANCH_LABEL",
    "VERSION_TABLE",
    "script_location",
    "versions_dir",
    "alembic_config",
    "upgrade",
    "current_revisions",
    "check_schema",
]

#: The newest revision of the ``absurd`` branch (a test keeps it equal to Alembic's head).
SCHEMA_HEAD = "absurd_0001_initial"
#: All revisions of the ``absurd`` branch, oldest first.
REVISIONS = ("absurd_0001_initial",)
BRANCH_LABEL = "absurd"
#: The version table of absurd-orm's own Alembic environment.
VERSION_TABLE = "absurd_alembic_version"
HOST_VERSION_TABLE = "alembic_version"


def script_location() -> Path:
    """Directory of absurd-orm's Alembic environment (``env.py`` and ``versions/``)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError(f"absurd-orm's migrations are missing from this installation ({here})")


def versions_dir() -> Path:
    """Directory of the revisions: add it to a host's ``version_locations``."""
    return script_location() / "versions"


def alembic_config(connection: Connection | None = None):  # type: ignore[no-untyped-def]
    """An Alembic ``Config`` for absurd-orm's own environment (optionally bound)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Bring ``engine``'s database to ``revision`` (idempotent; concurrent calls queue up)."""
    from alembic import command

    from .dialects import strategy_for

    strategy = strategy_for(engine)
    strategy.configure_engine(engine)
    with strategy.write_transaction(engine) as conn:
        strategy.lock_for_migration(conn)
        command.upgrade(alembic_config(conn), revision)


def current_revisions(conn: Connection) -> tuple[set[str], set[str]]:
    """absurd revisions recorded in our version table and in a host's ``alembic_version``."""
    names = set(inspect(conn).get_table_names())
    found: list[set[str]] = []
    for name in (VERSION_TABLE, HOST_VERSION_TABLE):
        if name in names:
            rows = conn.execute(select(column("version_num")).select_from(table(name))).scalars()
            found.append({r for r in rows if r in REVISIONS})
        else:
            found.append(set())
    return found[0], found[1]


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaOutOfDate` unless the database is at :data:`SCHEMA_HEAD`."""
    with engine.connect() as conn:
        ours, host = current_revisions(conn)
    if SCHEMA_HEAD in ours or SCHEMA_HEAD in host:
        return
    url = engine.url.render_as_string(hide_password=True)
    state = f"at {sorted(ours | host)[-1]}" if ours or host else "not installed"
    raise SchemaOutOfDate(
        f"absurd-orm's schema is {state} in {url} (this version needs {SCHEMA_HEAD}). "
        f"Run `absurd-orm migrate --url '{url}'` or call Engine.migrate(); if your own Alembic "
        "history embeds absurd-orm's migrations, run `alembic upgrade heads`."
    )
