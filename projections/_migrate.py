"""Numbered SQL migrations, applied in order into one schema."""

from importlib import resources
from typing import TYPE_CHECKING

from jobstream.events import READ_MODEL_SCHEMA

if TYPE_CHECKING:
    import asyncpg

DEFAULT_SCHEMA = READ_MODEL_SCHEMA


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("jobstream.projections") / "sql" / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


def quote_ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"schema name {name!r}: use letters, digits and underscores")
    return '"' + name + '"'


async def migrate(conn: "asyncpg.Connection", schema: str = DEFAULT_SCHEMA) -> list[str]:
    """Create `schema` and apply the migrations it lacks; return the names applied."""
    applied: list[str] = []
    ident = quote_ident(schema)
    async with conn.transaction():
        # One migrator at a time per database: processes start together in `jobstream up`.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('jobstream.migrate'))")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {ident}.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row["version"]
            for row in await conn.fetch(f"SELECT version FROM {ident}.schema_migrations")
        }
        await conn.execute(f"SET LOCAL search_path TO {ident}")
        for version, name, sql in _migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(name)
    return applied
