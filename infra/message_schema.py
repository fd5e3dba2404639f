#!/usr/bin/env python3
"""Checks infra/batch-message.schema.json: it is a valid draft 2020-12 schema, it accepts every
valid example in infra/batch-message.examples.json and refuses every invalid one. (The
integration test `batch_message_schema` checks the same examples, and the schema's fields,
against the worker's parser.) Uses `jsonschema`, installed in the infra venv by infra/check."""

import argparse
import json
import sys
from pathlib import Path

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

here = Path(__file__).resolve().parent


def describe(error) -> str:
    """Where and why; for `oneOf`, the complaint of the branch whose `type` matched."""
    branches = {}
    for inner in error.context or []:
        branches.setdefault(inner.relative_schema_path[0], []).append(inner)
    for errors in branches.values():
        if not any(list(e.absolute_path) == ["type"] for e in errors):
            error = errors[0]
            break
    where = "/".join(str(p) for p in error.absolute_path) or "(message)"
    return f"at {where}: {error.message}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schema", default=here / "batch-message.schema.json", type=Path)
    parser.add_argument("--examples", default=here / "batch-message.examples.json", type=Path)
    args = parser.parse_args()

    schema = json.loads(args.schema.read_text())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    examples = json.loads(args.examples.read_text())

    problems = []
    for index, message in enumerate(examples["valid"]):
        error = best_match(validator.iter_errors(message))
        if error is not None:
            problems.append(f"valid example {index} is refused: {describe(error)}")
    for index, case in enumerate(examples["invalid"]):
        if validator.is_valid(case["message"]):
            problems.append(f"invalid example {index} ({case['why']}) is accepted")

    for problem in problems:
        print(f"message_schema: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(
        f"message_schema: {len(examples['valid'])} valid and {len(examples['invalid'])} "
        "invalid examples agree with the schema"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
