"""Schema management: run absurd-orm's Alembic revisions and check the schema is current.

The revisions live in the top-level ``migrations/`` directory of a checkout and inside
the package (``absurd_orm/_migrations``) once installed. They can run three ways:

* ``Engine.migrate()`` / ``absurd-orm migrate`` / :func:`upgrade`: our own environment,
  recording its version in ``absurd_alembic_version`` (a host's ``alembic_version`` is
  never touched);
* ``alembic upgrade head`` from a checkout (same environment, same table);
* embedded in a host's Alembic history: add :func:`versions_dir` to the host's
  ``version_locations`` and run ``alembic upgrade heads``.

Whichever way ran them, every revision records itself in the one-row table
``absurd_schema_version``; :func:`check_schema` reads it. New revisions must append
themselves to :data:`REVISIONS` and move :data:`SCHEMA_HEAD`.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import column, inspect, select, table
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
    "current_revision",
    "check_schema",
]

#: The newest revision of the ``absurd`` branch (a test keeps it equal to Alembic's head).
SCHEMA_HEAD = "absurd_0001_initial"
#: All revisions of the ``absurd`` branch, oldest first.
REVISIONS = ("absurd_0001_initial",)
BRANCH_LABEL = "absurd"
#: The version table of absurd-orm's own Alembic environment.
VERSION_TABLE = "absurd_alembic_version"
#: The one-row table each revision updates with its own id (see check_schema).
SCHEMA_TABLE = "absurd_schema_version"


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


def current_revision(conn: Connection) -> str | None:
    """The absurd-orm revision recorded in the database, or None when not installed."""
    if SCHEMA_TABLE not in inspect(conn).get_table_names():
        return None
    rows = conn.execute(select(column("revision")).select_from(table(SCHEMA_TABLE))).scalars().all()
    return rows[0] if len(rows) == 1 else None


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaOutOfDate` unless the database is at :data:`SCHEMA_HEAD`."""
    with engine.connect() as conn:
        found = current_revision(conn)
    if found == SCHEMA_HEAD:
        return
    url = engine.url.render_as_string(hide_password=True)
    if found is not None and found not in REVISIONS:
        raise SchemaOutOfDate(
            f"absurd-orm's schema in {url} is at {found}, which this version of absurd-orm "
            f"does not know (it needs {SCHEMA_HEAD}): upgrade the absurd-orm package.")
    state = f"at {found}" if found else "not installed"
    raise SchemaOutOfDate(
        f"absurd-orm's schema is {state} in {url} (this version needs {SCHEMA_HEAD}). "
        f"Run `absurd-orm migrate --url '{url}'` or call Engine.migrate(); if your own Alembic "
        "history embeds absurd-orm's migrations, run `alembic upgrade heads`."
    )
