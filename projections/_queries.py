"""Named SQL query blocks (`-- name: <name>`) from the `.sql` files of this package."""

import functools
import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

_NAME_LINE = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split `text` into blocks, each starting at a `-- name: <name>` line.

    Text before the first name line is a file comment and is dropped. A block keeps its
    own comments; a trailing `;` and blank lines are stripped.
    """
    queries: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip().rstrip(";").strip()
        name = match.group("name")
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        if not body:
            raise ValueError(f"query {name!r} is empty")
        queries[name] = body
    return queries


@functools.cache
def load_queries(filename: str = "projector.sql") -> Mapping[str, str]:
    """The named queries of `projections/sql/<filename>`, read once per process."""
    text = (resources.files("projections") / "sql" / filename).read_text(encoding="utf-8")
    return MappingProxyType(parse_queries(text))
