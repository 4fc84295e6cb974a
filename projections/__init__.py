"""Projectors that turn the event log into PostgreSQL read models and NDJSON files."""

from projections._migrate import DEFAULT_SCHEMA, migrate, quote_ident

__all__ = ["DEFAULT_SCHEMA", "migrate", "quote_ident"]
