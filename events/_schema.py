"""The published contract: a JSON Schema (draft 2020-12) document of the events and the task
message, for integrators.

msgspec writes schemas for OpenAPI: a tagged union carries the OpenAPI-only `discriminator`
keyword, which strict validators (ajv) refuse, and a field with a default is optional even
where every writer sends it. This module turns that output into standard JSON Schema.
"""

from typing import Any, get_args

import msgspec

from jobstream.events._catalogue import Event, TaskMessage

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:jobstream:events"
# Present in every event on the wire: the tag, and the id and time that default when built.
ALWAYS_WRITTEN = ("type", "id", "at")

_DESCRIPTION = (
    "One jobstream event, as published on the `evt.>` subjects of the JOBSTREAM_EVENTS stream: "
    "exactly one of the event definitions, chosen by its `type`. Fields not listed here may be "
    "added in later versions; ignore them. `$defs/TaskMessage` is the work-queue message on "
    "`task.<queue>.<job_id>` (JOBSTREAM_TASKS), not an event."
)

Schema = dict[str, Any]


def event_json_schema() -> Schema:
    """The document: it validates one event; `$defs` holds each event and the task message."""
    (event, _), defs = msgspec.json.schema_components(
        [Event, TaskMessage], ref_template="#/$defs/{name}"
    )
    for member in get_args(Event):
        name = member.__name__
        defs[name] = _as_written(defs[name], tag=str(member.__struct_config__.tag))
    return {
        "$schema": DRAFT,
        "$id": SCHEMA_ID,
        "title": "jobstream event",
        "description": _DESCRIPTION,
        **_standard(event),
        "$defs": _standard(defs),
    }


def _as_written(definition: Schema, *, tag: str) -> Schema:
    """An event's definition with its tag as a `const` and the always-written fields required."""
    properties = {**definition["properties"], "type": {"const": tag}}
    optional = [name for name in definition.get("required", []) if name not in ALWAYS_WRITTEN]
    return {**definition, "properties": properties, "required": [*ALWAYS_WRITTEN, *optional]}


def _standard(node: Any) -> Any:
    """`node` without OpenAPI's `discriminator`: its tagged `anyOf` becomes a `oneOf`, exact
    because each member's tag is a distinct constant."""
    if isinstance(node, list):
        return [_standard(item) for item in node]
    if not isinstance(node, dict):
        return node
    tagged = "discriminator" in node
    standard: Schema = {}
    for key, value in node.items():
        if key == "discriminator":
            continue
        standard["oneOf" if tagged and key == "anyOf" else key] = _standard(value)
    return standard
