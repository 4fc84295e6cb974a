"""The bench's named SQL blocks (`-- name: <name>`), in the `.sql` files beside this module."""

from jobstream.events import load_queries


def read_model_query(name: str) -> str:
    """A query on jobstream's read models (`read_model.sql`)."""
    return load_queries("jobstream.bench", "read_model.sql")[name]


def baseline_query(name: str) -> str:
    """A statement of the two original Postgres designs (`baselines.sql`)."""
    return load_queries("jobstream.bench", "baselines.sql")[name]
