"""Alembic environment: the database URL comes from the caller's config (``lethe migrate``),
else from ``LETHE_*`` settings (plain ``alembic upgrade head``)."""
from alembic import context

from app.db import make_db_engine
from app.settings import Settings
from app.tables import Base

config = context.config
MIGRATION_LOCK = 0x1E7E  # the advisory lock key that serialises migrations
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url") or Settings().db_url,
                      target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_db_engine(config.get_main_option("sqlalchemy.url") or Settings().db_url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Two `lethe migrate` at once (two deployments starting) take turns: the
                # second waits here, then finds the schema at head and does nothing.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
