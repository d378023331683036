"""docs/api/openapi.yaml as a checker: every response a test gets must match it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import yaml

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.yaml"


@functools.cache
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def check(response: httpx.Response) -> Any:
    """Validate status, content type, headers and body against the spec; return the body."""
    path = response.request.url.path
    method = response.request.method.lower()
    operation = spec()["paths"][path][method]
    responses = operation["responses"]
    status = str(response.status_code)
    assert status in responses, f"{method.upper()} {path} -> {status} is not in the spec"
    declared = _resolve(responses[status])
    content = declared["content"]
    media = response.headers.get("content-type", "").split(";")[0].strip()
    assert media in content, f"{path} {status}: content type {media!r} not in {list(content)}"
    if media != "application/json":
        return response.text
    body = response.json()
    schema = {**content[media]["schema"], "components": spec()["components"]}
    jsonschema.validate(body, schema, cls=jsonschema.Draft4Validator)
    if response.status_code >= 400:
        listed = operation.get("x-reasons", {}).get(status, [])
        assert body["reason"] in listed, (
            f"{method.upper()} {path} -> {status} {body['reason']}: not in its x-reasons")
    for header in declared.get("headers", {}):
        if header == "Retry-After" and response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
    return body


def reasons_enum() -> set[str]:
    return set(spec()["components"]["schemas"]["Error"]["properties"]["reason"]["enum"])


def check_error_body(body: Any) -> None:
    """An ``Error`` body, for answers on paths or methods the spec does not list."""
    schema = {"$ref": "#/components/schemas/Error", "components": spec()["components"]}
    jsonschema.validate(body, schema, cls=jsonschema.Draft4Validator)


def check_any(response: httpx.Response) -> Any:
    """``check`` for an operation the spec lists; else the routing answer every path
    gives (404/405), which must still be an ``Error``."""
    path = response.request.url.path
    if response.request.method.lower() in spec()["paths"].get(path, {}):
        return check(response)
    assert response.status_code in (404, 405), (path, response.status_code)
    body = response.json()
    check_error_body(body)
    return body
