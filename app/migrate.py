"""Apply the Alembic migrations in ``migrations/``: the only way Lethe's schema changes."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


APP_ROLE = "lethe_app"  # created by migration 0006 (PostgreSQL)


def set_app_password(url: str, password: str) -> bool:
    """Give the application's role (``lethe_app``) a password, so the API and the
    workers can log in as it; False on SQLite, which has no roles."""
    from app.db import make_db_engine

    engine = make_db_engine(url)
    try:
        if engine.dialect.name != "postgresql":
            return False
        from psycopg import sql

        # ALTER ROLE takes no bind parameters: the driver quotes the password as a literal
        # (any character, ':' and '%' included, goes through unchanged).
        statement = sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(sql.Identifier(APP_ROLE),
                                                                          sql.Literal(password))
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            raw.execute(statement)
            raw.commit()
        return True
    finally:
        engine.dispose()
