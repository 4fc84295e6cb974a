"""Named SQL blocks (`-- name: <name>`) from the `.sql` files beside this module, read once."""

import functools
import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

_NAME_LINE = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@functools.cache
def queries(filename: str) -> Mapping[str, str]:
    text = (resources.files("cli.bench") / filename).read_text(encoding="utf-8")
    matches = list(_NAME_LINE.finditer(text))
    blocks: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        blocks[match.group("name")] = text[match.end() : end].strip().rstrip(";").strip()
    return MappingProxyType(blocks)


def read_model_query(name: str) -> str:
    """A query on jobstream's read models (`read_model.sql`)."""
    return queries("read_model.sql")[name]


def baseline_query(name: str) -> str:
    """A statement of the two original Postgres designs (`baselines.sql`)."""
    return queries("baselines.sql")[name]
