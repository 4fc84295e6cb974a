"""Package names loaded on first use (PEP 562): a package's `__init__` maps each public name
to the module that defines it, and imports that module only when the name is asked for."""

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attribute(
    package: str, homes: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """The `__getattr__` of `package`: `homes[name]`'s `name`, kept in `namespace` (the
    package's globals) so the next use is a plain lookup."""

    def load(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value
        return value

    return load
