"""absurd-orm's own Alembic environment.

Versions are recorded in ``absurd_alembic_version`` so that a host application's
``alembic_version`` is never touched. The database comes from, in order: a connection
passed in ``config.attributes["connection"]`` (``Engine.migrate()``), the
``ABSURD_DATABASE_URL`` environment variable, or ``sqlalchemy.url`` in the ini file.
"""

from __future__ import annotations

import os

from alembic import context

from absurd_orm.dialects import normalize_url, strategy_for
from absurd_orm.migration import VERSION_TABLE
from absurd_orm.schema import metadata

config = context.config


def _url() -> str:
    url = os.environ.get("ABSURD_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set ABSURD_DATABASE_URL (or sqlalchemy.url) to the database to migrate")
    return url


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
        compare_type=True,
        **kwargs,
    )


def run_offline() -> None:
    _configure(url=str(normalize_url(_url())), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    from sqlalchemy import create_engine

    engine = create_engine(normalize_url(_url()))
    strategy = strategy_for(engine)
    strategy.configure_engine(engine)
    try:
        with strategy.write_transaction(engine) as conn:
            strategy.lock_for_migration(conn)
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
