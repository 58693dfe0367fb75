"""Our ``/openapi.json`` serves every operation of all three upstream revisions, as specified.

For each upstream operation (from ``tests/fixtures/tada_contract.json``, derived from the
reference OpenAPI files by ``scripts/derive_tada_contract.py``) the engine's own document
must have: the same path and method, the same path parameter names, the same query
parameters (same required-ness, nothing required that upstream leaves optional), the same
JSON body fields, the same success status, and every response field upstream defines, with
the same shape (object or array). A behavioural pass then checks that leaving out each
required query parameter or body field answers FastAPI's 422 at that location.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from engine.app import create_app
from tests.conftest import make_settings, register

CONTRACT = json.loads((Path(__file__).parents[1] / "fixtures" / "tada_contract.json").read_text())
REVISIONS: dict[str, list[dict[str, Any]]] = CONTRACT["revisions"]
ALL_OPS = [(rev, op) for rev, ops in sorted(REVISIONS.items()) for op in ops]
_PARAM = re.compile(r"\{[^}]+\}")


def shape_of(path: str) -> str:
    """The path with every parameter name erased: the form a router matches on."""
    return _PARAM.sub("{}", path)


def op_id(item: tuple[str, dict[str, Any]]) -> str:
    rev, op = item
    return f"{rev}:{op['method']} {op['path']}"


class Spec:
    """Our OpenAPI document, indexed by method and path shape."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.schemas: dict[str, Any] = doc.get("components", {}).get("schemas", {})
        self.ops: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        for path, item in doc["paths"].items():
            for method, op in item.items():
                key = (method.upper(), shape_of(path))
                assert key not in self.ops, f"two of our routes share {key}"
                self.ops[key] = (path, op)

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref", "")
        return self.schemas[ref.rsplit("/", 1)[-1]] if ref else schema

    def branches(self, schema: dict[str, Any]) -> list[dict[str, Any]]:
        """A schema as the alternatives it allows (``anyOf``/``oneOf`` expanded)."""
        schema = self.resolve(schema)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return [b for s in schema[key] for b in self.branches(s)]
        return [schema]

    def has_field(self, schema: dict[str, Any], dotted: str) -> bool:
        """Whether ``a.b`` / ``a[].b`` exists in ``schema`` (in some branch of each level)."""
        head, _, rest = dotted.partition(".")
        is_list = head.endswith("[]")
        name = head.removesuffix("[]")
        for branch in self.branches(schema):
            prop = branch.get("properties", {}).get(name)
            if prop is None:
                continue
            if not rest:
                return True
            inner = prop
            if is_list:
                arrays = [b for b in self.branches(prop) if b.get("type") == "array"]
                if not arrays:
                    continue
                inner = arrays[0].get("items", {})
            if self.has_field(inner, rest):
                return True
        return False

    def body_schema(self, op: dict[str, Any]) -> dict[str, Any] | None:
        content = op.get("requestBody", {}).get("content", {})
        if "application/json" not in content:
            return None
        return self.resolve(content["application/json"]["schema"])


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Spec:
    """Our served document, fetched once (no lifespan: the document needs no database)."""
    app = create_app(make_settings(tmp_path_factory.mktemp("engine")))
    resp = TestClient(app).get("/openapi.json")
    assert resp.status_code == 200
    return Spec(resp.json())


def upstream_names_for(method: str, path: str) -> set[str]:
    """Path parameter names upstream uses on this method and path shape, any revision.

    The seed revision declares ``GET /api/voices/generations/{voice_id}`` and
    ``GET /api/voices/generations/{generation_id}``: one path shape, two names. One route
    serves both, so either name is upstream's.
    """
    names: set[str] = set()
    for _, op in ALL_OPS:
        if op["method"] == method and shape_of(op["path"]) == shape_of(path):
            names.update(op["path_params"])
    return names


def test_the_fixture_covers_three_revisions() -> None:
    assert len(REVISIONS) == 3
    assert all(len(ops) >= 19 for ops in REVISIONS.values())


@pytest.mark.parametrize("item", ALL_OPS, ids=op_id)
def test_operation_is_served_as_upstream_defines_it(
    spec: Spec, item: tuple[str, dict[str, Any]]
) -> None:
    _, up = item
    key = (up["method"], shape_of(up["path"]))
    assert key in spec.ops, f"{up['method']} {up['path']} is not in our /openapi.json"
    path, ours = spec.ops[key]
    problems: list[str] = []

    params = ours.get("parameters", [])
    path_names = [p["name"] for p in params if p["in"] == "path"]
    allowed = upstream_names_for(up["method"], up["path"])
    # Only where upstream itself names one path shape two ways may ours use the other name.
    same = path_names == up["path_params"]
    if not same and not (len(allowed) > 1 and len(path_names) == 1 and set(path_names) <= allowed):
        problems.append(f"path parameters {path_names} != upstream {up['path_params']}")

    query = {p["name"]: bool(p.get("required", False)) for p in params if p["in"] == "query"}
    for name, required in up["query_params"].items():
        if name not in query:
            located = [p["in"] for p in params if p["name"] == name]
            problems.append(f"query parameter {name!r} missing (found in {located or 'nowhere'})")
        elif query[name] != required:
            problems.append(f"query parameter {name!r} required={query[name]}, upstream {required}")
    for name, required in query.items():
        if required and name not in up["query_params"]:
            problems.append(f"we require query parameter {name!r}, upstream does not define it")

    body = spec.body_schema(ours)
    if up["json_body"] is None:
        if body is not None and ours["requestBody"].get("required"):
            problems.append("we require a JSON body, upstream takes none")
    elif body is None:
        problems.append(f"no JSON body, upstream takes {up['json_body']}")
    else:
        missing = set(up["json_body"]) - set(body.get("properties", {}))
        extra_required = set(body.get("required", [])) - set(up["json_body"])
        if missing:
            problems.append(f"body lacks {sorted(missing)}")
        if extra_required:
            problems.append(f"body requires {sorted(extra_required)} beyond upstream's")

    status = str(up["success_status"])
    success = sorted(c for c in ours["responses"] if c.startswith("2"))
    if success != [status]:
        problems.append(f"success status {success} != upstream {status}")
    else:
        content = ours["responses"][status].get("content", {}).get("application/json", {})
        schema = content.get("schema", {})
        expected = up["response"]
        shapes = {b.get("type", "object") for b in spec.branches(schema)}
        if expected["shape"] == "array":
            if shapes != {"array"}:
                problems.append(f"answer is {shapes}, upstream an array")
            else:
                schema = spec.branches(schema)[0].get("items", {})
        elif expected["shape"] == "object" and shapes != {"object"}:
            problems.append(f"answer is {shapes}, upstream an object")
        branch_ok = any(
            all(spec.has_field(branch, f) for f in expected["fields"])
            for branch in spec.branches(schema)
        )
        if not branch_ok:
            absent = [f for f in expected["fields"] if not spec.has_field(schema, f)]
            problems.append(f"answer lacks upstream fields {absent or expected['fields']}")
    assert not problems, f"{up['method']} {up['path']} (ours: {path}): " + "; ".join(problems)


def test_field_walker_can_fail(spec: Spec) -> None:
    """The checker itself: a field that is not there is reported as absent."""
    generation = {"$ref": "#/components/schemas/VoiceGenerationList"}
    assert spec.has_field(generation, "generations[].audio_url")
    assert not spec.has_field(generation, "generations[].no_such_field")
    assert not spec.has_field(generation, "nothing")


def _fill(path: str) -> str:
    return _PARAM.sub(lambda _: str(uuid.uuid4()), path)


async def test_missing_required_inputs_answer_fastapi_422(api: httpx.AsyncClient) -> None:
    """Behaviour, not just the document: each required input, left out, is a 422 there."""
    key = await register(api, "conformance@example.com")
    headers = {"X-API-Key": key}
    checked = 0
    seen: set[tuple[str, str]] = set()
    for _, op in ALL_OPS:
        if (op["method"], shape_of(op["path"])) in seen:
            continue
        seen.add((op["method"], shape_of(op["path"])))
        required = [n for n, req in op["query_params"].items() if req]
        full = {n: "x" for n in required}
        for name in required:
            params = {k: v for k, v in full.items() if k != name}
            resp = await api.request(
                op["method"], _fill(op["path"]), params=params, headers=headers
            )
            assert resp.status_code == 422, (op["path"], name, resp.text)
            locs = [tuple(e["loc"]) for e in resp.json()["detail"]]
            assert ("query", name) in locs, (op["path"], locs)
            assert all({"loc", "msg", "type"} <= set(e) for e in resp.json()["detail"])
            checked += 1
        for name in op["json_body"] or []:
            resp = await api.request(
                op["method"], _fill(op["path"]), json={"other": 1}, headers=headers
            )
            assert resp.status_code == 422, (op["path"], name, resp.text)
            locs = [tuple(e["loc"]) for e in resp.json()["detail"]]
            assert ("body", name) in locs, (op["path"], locs)
            checked += 1
    # register's email, 2 + 3 upload-url names, upload_id, 4 generation bodies, 2 demos
    assert checked >= 13


def test_counts_for_the_report(spec: Spec) -> None:
    """Every distinct upstream method+path shape is one of ours (the report's count)."""
    distinct = {(op["method"], shape_of(op["path"])) for _, op in ALL_OPS}
    assert distinct <= set(spec.ops)
    assert len(ALL_OPS) == 59 and len(distinct) == 23
