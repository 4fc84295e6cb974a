"""The one loader of named SQL blocks: in a `.sql` file, `-- name: list_jobs` starts a block
that runs to the next name line. Blocks keep their comments; asyncpg sends them as they are."""

import functools
import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

from jobstream.events._errors import JobstreamError

_NAME_LINE = re.compile(r"^--\s*name:\s*(?P<name>\S+)\s*$")
_VALID_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class QueryFileError(JobstreamError):
    """A named-query file that cannot be trusted: a duplicate, a bad name or an empty block."""

    def __init__(self, source: str, line: int, problem: str) -> None:
        super().__init__(f"{source}:{line}: {problem}")
        self.source = source
        self.line = line


def parse_queries(text: str, *, source: str = "<sql>") -> Mapping[str, str]:
    """Split `text` into its named blocks; SQL before the first name line is a preamble, ignored."""
    blocks: dict[str, list[str]] = {}
    starts: dict[str, int] = {}
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _NAME_LINE.match(line.strip())
        if match is None:
            if current is not None:
                current.append(line)
            continue
        name = match["name"]
        if not _VALID_NAME.match(name):
            raise QueryFileError(source, number, f"query name {name!r}: use [a-z0-9_]")
        if name in blocks:
            raise QueryFileError(source, number, f"query {name!r} is defined twice")
        current = blocks[name] = []
        starts[name] = number
    queries = {name: "\n".join(lines).strip() for name, lines in blocks.items()}
    for name, sql in queries.items():
        if not _has_statement(sql):
            raise QueryFileError(source, starts[name], f"query {name!r} is empty")
    return MappingProxyType(queries)


def _has_statement(sql: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in sql.splitlines())


@functools.cache
def load_queries(package: str, resource: str) -> Mapping[str, str]:
    """Read and parse a `.sql` file shipped inside `package`, once per process."""
    text = (resources.files(package) / resource).read_text(encoding="utf-8")
    return parse_queries(text, source=f"{package}/{resource}")
