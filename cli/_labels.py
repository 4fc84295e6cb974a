"""`--label KEY=VALUE` options (submit, schedule add, jobs) as a dict, in a module of its own:
the read commands parse them without loading the submit path."""

from jobstream.cli._runtime import UsageError


def parse_labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise UsageError(f"--label {pair!r}: expected KEY=VALUE")
        labels[key] = value
    return labels
