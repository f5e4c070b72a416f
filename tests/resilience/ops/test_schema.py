"""The OpenAPI schema: valid, covering every API route of both apps, the
error shape documented; schema and docs public and served offline."""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

pytestmark = pytest.mark.django_db

# Routes under /api/ that are not API operations themselves.
NOT_OPERATIONS = {"/api/schema/", "/api/docs/"}
HTTP_VERBS = ("get", "post", "put", "patch", "delete")


def api_routes(patterns=None, prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    """Every URL pattern under /api/ as (OpenAPI path, pattern)."""
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from api_routes(entry.url_patterns, route)
        elif route.startswith("api/"):
            yield "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route), entry


@pytest.fixture(scope="module")
def schema() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


def test_schema_validates(schema):
    validate_schema(schema)
    assert schema["openapi"].startswith("3.")


def test_every_api_route_and_method_is_in_the_schema(schema):
    routes = dict(api_routes())
    assert any(path.startswith("/api/ai/") for path in routes)
    assert any(path.startswith("/api/resilience/") for path in routes)
    for path, pattern in routes.items():
        if path in NOT_OPERATIONS:
            continue
        assert path in schema["paths"], f"{path} is missing from the schema"
        view = pattern.callback.cls
        methods = {m for m in HTTP_VERBS if hasattr(view, m)}
        assert methods, path
        assert methods <= set(schema["paths"][path]), f"{path}: {methods - set(schema['paths'][path])}"


def test_every_operation_answers_in_json_and_documents_401(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            # 202: queued jobs; 201: a silence created
            assert {"200", "201", "202"} & set(responses), (method, path)
            assert responses["401"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"}, (method, path)


def test_resilience_operations_document_their_errors(schema):
    def errors_of(path: str, method: str) -> set[str]:
        responses = schema["paths"][path][method]["responses"]
        documented = {code for code, r in responses.items() if code != "200"}
        for code in documented:
            assert responses[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
        return documented

    base = "/api/resilience"
    # 429: any token check may be throttled (token guessing, resilience.ops.throttling).
    # 403: reading policies needs view_upstream (resilience.ops.permissions); call logs answer
    # a caller without view_calllog with its own calls.
    assert errors_of(f"{base}/upstreams", "get") == {"401", "403", "429"}
    assert errors_of(f"{base}/upstreams/{{name}}", "get") == {"401", "403", "404", "429"}
    assert errors_of(f"{base}/upstreams/{{name}}/calls", "get") == {"400", "401", "404", "429"}
    for path, method in ((f"{base}/upstreams/{{name}}/breaker/reset", "post"),
                         (f"{base}/upstreams/{{name}}/probe", "post"),
                         (f"{base}/upstreams/{{name}}/cache", "delete")):
        assert errors_of(path, method) == {"401", "403", "404", "429"}
    calls = schema["paths"][f"{base}/upstreams/{{name}}/calls"]["get"]
    params = {p["name"] for p in calls["parameters"]}
    assert params == {"name", "outcome", "status", "since", "until", "page", "page_size"}


def test_error_shape_component(schema):
    components = schema["components"]["schemas"]
    error = components["ErrorResponse"]
    assert set(error["properties"]) == {"success", "error"}
    assert {"code", "message"} <= set(components["ErrorDetail"]["required"])
    assert "bearerAuth" in schema["components"]["securitySchemes"]


def test_schema_and_docs_are_public_and_offline():
    client = Client()
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    assert "/api/resilience/upstreams" in response.json()["paths"]
    assert client.get("/api/schema/").status_code == 200  # YAML
    client.defaults["HTTP_AUTHORIZATION"] = "Bearer bogus"  # a bad token does not lock out the docs
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html
    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", html), "the docs must not load from a CDN"
    assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css|png))""", html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert b"".join(served.streaming_content) if served.streaming else served.content, asset
