"""Derive ``tests/fixtures/tada_contract.json`` from the upstream OpenAPI files.

Tests must not read ``../shared`` at run time (a fresh clone has none), so the few contract
facts the client and conformance tests need (every operation's method, path, parameters,
JSON body fields, success status and the fields of its answer, per revision) are written
once into a small fixture by this script.

    python scripts/derive_tada_contract.py [REFERENCE_DIR]

REFERENCE_DIR defaults to ``../shared/reference`` next to the repository.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tada_contract.json"
METHODS = ("get", "post", "put", "patch", "delete")


def _body_fields(schemas: dict[str, Any], op: dict[str, Any]) -> list[str] | None:
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return None
    ref = schema.get("$ref", "")
    if ref:
        schema = schemas[ref.rsplit("/", 1)[-1]]
    return sorted(schema.get("required", []))


def _resolve(schemas: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    return schemas[ref.rsplit("/", 1)[-1]] if ref else schema


def _fields(schemas: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Property names, nested ones as ``outer.inner`` (``outer[].inner`` inside arrays)."""
    names: list[str] = []
    for name, prop in schema.get("properties", {}).items():
        names.append(prefix + name)
        prop = _resolve(schemas, prop)
        if prop.get("type") == "array":
            names += _fields(
                schemas, _resolve(schemas, prop.get("items", {})), f"{prefix}{name}[]."
            )
        elif "properties" in prop:
            names += _fields(schemas, prop, f"{prefix}{name}.")
    return sorted(names)


def _response(schemas: dict[str, Any], op: dict[str, Any], status: str) -> dict[str, Any]:
    """The success answer's shape (object, array or untyped) and the fields upstream defines.

    For an array the fields are those of its items. Untyped answers (``{}`` or a bare
    ``object``) define no fields: our engine may give them any concrete model.
    """
    content = op["responses"][status].get("content", {}).get("application/json", {})
    schema = _resolve(schemas, content.get("schema", {}))
    if schema.get("type") == "array":
        items = _resolve(schemas, schema.get("items", {}))
        return {"shape": "array", "fields": _fields(schemas, items)}
    if schema.get("type") == "object" or "properties" in schema:
        return {"shape": "object", "fields": _fields(schemas, schema)}
    return {"shape": "any", "fields": []}


def operations(spec: dict[str, Any], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per operation of one OpenAPI document."""
    rows = []
    for path, item in spec["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            params = op.get("parameters", [])
            success = sorted(code for code in op["responses"] if code.startswith("2"))
            rows.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "operation_id": op.get("operationId"),
                    "path_params": [p["name"] for p in params if p["in"] == "path"],
                    "query_params": {
                        p["name"]: bool(p.get("required", False))
                        for p in params
                        if p["in"] == "query"
                    },
                    "json_body": _body_fields(schemas, op),
                    "success_status": int(success[0]),
                    "response": _response(schemas, op, success[0]),
                }
            )
    return rows


def main(argv: list[str]) -> int:
    ref = Path(argv[1]) if len(argv) > 1 else ROOT.parent / "shared" / "reference"
    specs = {
        file.stem.removeprefix("tada-openapi-"): json.loads(file.read_text())
        for file in sorted(ref.glob("tada-openapi-*.json"))
    }
    # The seed revision references schemas without defining them; later revisions do.
    schemas: dict[str, Any] = {}
    for spec in specs.values():
        schemas.update(spec.get("components", {}).get("schemas", {}))
    revisions = {name: operations(spec, schemas) for name, spec in specs.items()}
    if not revisions:
        print(f"no tada-openapi-*.json under {ref}", file=sys.stderr)
        return 1
    fixture = {
        "source": "derived by scripts/derive_tada_contract.py from shared/reference",
        "revisions": revisions,
    }
    OUT.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {sum(map(len, revisions.values()))} operations")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
