"""The OpenAPI document (relay/openapi.json, served at `GET /openapi.json`) is valid OpenAPI 3.1
and says what the app does: every route and method, every error code, every error's shape.
tests/live/test_fuzz.py holds the running server to it."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from relay.errors import ErrorCode

# Flask answers these for every GET rule (HEAD) and every rule (OPTIONS) by itself; the document
# has a HEAD only where relay means it (a stream's HEAD starts nothing).
_AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}
_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def document() -> dict[str, Any]:
    return json.loads(files("relay").joinpath("openapi.json").read_text(encoding="utf-8"))


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method.upper()): operation
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if method in _HTTP_METHODS
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)


def test_it_is_served_at_openapi_json(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == document()


def test_every_route_and_method_is_documented_and_nothing_else(app: Flask) -> None:
    routes = {
        (re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - _AUTOMATIC_METHODS
    }
    documented = set(operations(document()))
    assert routes == {(path, method) for path, method in documented if method != "HEAD"}
    for path, method in documented - routes:
        assert method == "HEAD" and (path, "GET") in routes


def test_the_error_code_enum_is_relays_vocabulary() -> None:
    enum = document()["components"]["schemas"]["ErrorCode"]["enum"]
    assert set(ErrorCode) - set(enum) == set(), "codes missing from the document"
    assert set(enum) - set(ErrorCode) == set(), "codes relay does not have"
    assert len(enum) == len(set(enum))


# `GET /auth/me` says, with its 401, which mode relay is in and whether the first admin must be
# set up (the page's sign-in or set-up screen): the contract's `error`, and those two beside it.
_ERRORS_WITH_MORE = {("/auth/me", "GET", "401"): "SignInRequired"}


def test_every_error_response_has_the_contracts_shape() -> None:
    doc = document()
    shared = doc["components"]["responses"]
    schemas = doc["components"]["schemas"]
    for (path, method), operation in operations(doc).items():
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            if "$ref" in response:
                response = shared[response["$ref"].rsplit("/", 1)[1]]
            if method == "HEAD":
                assert "content" not in response, f"{method} {path} {status}"
                continue
            expected = "OpenAIError" if path.startswith("/v1/") else "Error"
            if (path, method, status) in _ERRORS_WITH_MORE:
                expected = _ERRORS_WITH_MORE[path, method, status]
                assert schemas[expected]["required"] == ["error"]
                assert schemas[expected]["additionalProperties"] is False
                assert schemas[expected]["properties"]["error"] == (
                    schemas["Error"]["properties"]["error"]
                ), f"{method} {path} {status}"
            assert response["content"] == {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{expected}"}}
            }, f"{method} {path} {status}"


def test_every_operation_has_an_id_and_every_link_names_one() -> None:
    ops = operations(document()).values()
    ids = [operation["operationId"] for operation in ops]
    assert len(ids) == len(set(ids))
    for operation in ops:
        for response in operation["responses"].values():
            for link in response.get("links", {}).values():
                assert link["operationId"] in ids
