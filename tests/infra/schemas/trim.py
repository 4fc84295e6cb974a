"""Make the small vendored schemas of this folder from their published sources.

    python tests/infra/schemas/trim.py kubernetes KUBERNETES_SCHEMA_DIR > kubernetes-v1.33.json
    python tests/infra/schemas/trim.py crd SCALEDOBJECT_JSON > keda-scaledobject-v1alpha1.json

KUBERNETES_SCHEMA_DIR is a `v1.33.0-local-strict` folder of the Kubernetes JSON schemas (as the
`kubernetes-validate` wheel on PyPI ships them, from yannh/kubernetes-json-schema); the output
keeps only the kinds in KINDS and the definitions they reach, without descriptions. A CRD
schema (datreeio/CRDs-catalog) loses its descriptions and its `status`. Nothing else changes:
the constraints are the published ones.
"""

import json
import sys
from pathlib import Path
from typing import Any

# (file in the schema folder, the key of the kind in the output's $defs)
KINDS = {
    "deployment-apps-v1.json": "apps/v1/Deployment",
    "service-v1.json": "v1/Service",
    "job-batch-v1.json": "batch/v1/Job",
    "poddisruptionbudget-policy-v1.json": "policy/v1/PodDisruptionBudget",
    "configmap-v1.json": "v1/ConfigMap",
    "persistentvolumeclaim-v1.json": "v1/PersistentVolumeClaim",
}


def strip(node: Any, *, in_properties: bool = False) -> Any:
    """`node` without its descriptions (a property that is named `description` stays)."""
    if isinstance(node, dict):
        return {
            key: strip(value, in_properties=key == "properties" and not in_properties)
            for key, value in node.items()
            if in_properties or not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [strip(item) for item in node]
    return node


def local_refs(node: Any) -> Any:
    """Point references (to `_definitions.json` or within it) at this document's $defs."""
    if isinstance(node, dict):
        return {
            key: "#/$defs/" + value.rpartition("/$defs/")[2]
            if key == "$ref" and isinstance(value, str)
            else local_refs(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [local_refs(item) for item in node]
    return node


def refs_of(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].removeprefix("#/$defs/")} if "$ref" in node else set()
        for value in node.values():
            found |= refs_of(value)
        return found
    if isinstance(node, list):
        return set().union(*(refs_of(item) for item in node)) if node else set()
    return set()


def trim_kubernetes(folder: Path) -> dict[str, Any]:
    definitions = json.loads((folder / "_definitions.json").read_text())["$defs"]
    kept: dict[str, Any] = {}
    for file_name, key in KINDS.items():
        kind = json.loads((folder / file_name).read_text())
        kind.pop("$schema", None)
        kind.pop("$id", None)
        kept[key] = strip(local_refs(kind))
    pending = set().union(*(refs_of(schema) for schema in kept.values()))
    while pending:
        name = pending.pop()
        if name in kept:
            continue
        kept[name] = strip(local_refs(definitions[name]))
        pending |= refs_of(kept[name]) - kept.keys()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"Kubernetes v1.33 schemas of {', '.join(KINDS.values())}, trimmed (trim.py)",
        "$defs": dict(sorted(kept.items())),
    }


def trim_crd(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = strip(json.loads(path.read_text()))
    schema["properties"].pop("status", None)
    return schema


def main() -> None:
    what, source = sys.argv[1], Path(sys.argv[2])
    trimmed = trim_kubernetes(source) if what == "kubernetes" else trim_crd(source)
    json.dump(trimmed, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
