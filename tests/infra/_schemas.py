"""The vendored schemas of tests/infra/schemas, and YAML loading for the deployment files.

What each schema is and where it comes from: schemas/README.md.
"""

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"
COMPOSE_DIR = REPO_ROOT / "infra" / "compose"
K8S_DIR = REPO_ROOT / "infra" / "k8s"

# apiVersion/kind -> the key of its schema in kubernetes-v1.33.json's $defs
KUBERNETES_KINDS = {
    "apps/v1/Deployment",
    "v1/Service",
    "batch/v1/Job",
    "policy/v1/PodDisruptionBudget",
    "v1/ConfigMap",
    "v1/PersistentVolumeClaim",
}
SCALED_OBJECT = "keda.sh/v1alpha1/ScaledObject"

Document = dict[str, Any]


def load_yaml_documents(path: Path) -> list[Document]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text("utf-8")) if doc is not None]
    assert all(isinstance(doc, dict) for doc in documents), f"{path}: not a mapping"
    return documents


def _load_json(name: str) -> Document:
    loaded: Document = json.loads((SCHEMAS / name).read_text("utf-8"))
    return loaded


@cache
def compose_validator() -> jsonschema.Draft7Validator:
    schema = _load_json("compose-spec.json")
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@cache
def _kubernetes_definitions() -> Document:
    return _load_json("kubernetes-v1.33.json")


@cache
def kind_validator(kind_key: str) -> jsonschema.protocols.Validator:
    """A validator of one kind (`apps/v1/Deployment`, `keda.sh/v1alpha1/ScaledObject`)."""
    if kind_key == SCALED_OBJECT:
        schema = _load_json("keda-scaledobject-v1alpha1.json")
        jsonschema.Draft7Validator.check_schema(schema)
        return jsonschema.Draft7Validator(schema)
    if kind_key not in KUBERNETES_KINDS:
        raise KeyError(f"no vendored schema for {kind_key}: add it in schemas/trim.py")
    definitions = _kubernetes_definitions()
    pointer = kind_key.replace("~", "~0").replace("/", "~1")  # a JSON pointer's escapes
    schema = {**definitions, "$ref": f"#/$defs/{pointer}"}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def kind_key(document: Document) -> str:
    return f"{document['apiVersion']}/{document['kind']}"


def schema_errors(document: Document) -> list[str]:
    """Where `document` breaks its kind's schema, one line each; [] if it conforms."""
    validator = kind_validator(kind_key(document))
    return [
        f"{kind_key(document)} {document.get('metadata', {}).get('name')}: "
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]
