"""The projector's named queries, from `projections/sql/`."""

from collections.abc import Mapping

from jobstream.events import load_queries as load_package_queries


def load_queries(filename: str = "projector.sql") -> Mapping[str, str]:
    """The named queries of `projections/sql/<filename>`, read once per process."""
    return load_package_queries("jobstream.projections", f"sql/{filename}")
