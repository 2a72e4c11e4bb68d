"""A client for the API under test that checks every response against the OpenAPI document."""

import json
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
import jsonschema

from deliverer.api.app import OPENAPI


def _inline(node: Any) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].removeprefix("#/components/schemas/")
            return _inline(OPENAPI["components"]["schemas"][name])
        return {k: _inline(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v) for v in node]
    return node


def _templates() -> list[tuple[re.Pattern[str], str]]:
    out = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in OPENAPI["paths"]]
    # Literal paths before templated ones: /v1/webhooks/test is not /v1/webhooks/{webhook_id}.
    return sorted(out, key=lambda item: item[1].count("{"))


TEMPLATES = _templates()


def response_schema(method: str, path: str, status: int) -> dict[str, Any] | None:
    """The documented schema of a response; raises if the status is not documented for the operation."""
    template = next((t for pattern, t in TEMPLATES if pattern.match(path)), None)
    if template is None:
        return OPENAPI_ERROR
    operation = OPENAPI["paths"][template].get(method.lower())
    if operation is None:
        return OPENAPI_ERROR
    documented = operation["responses"].get(str(status))
    assert documented is not None, f"{method} {template} answered {status}, which the OpenAPI document does not list"
    content = documented.get("content")
    return None if content is None else _inline(content["application/json"]["schema"])


OPENAPI_ERROR = _inline({"$ref": "#/components/schemas/Error"})


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class Api:
    http: aiohttp.ClientSession
    base: str
    key: str
    other_key: str

    async def call(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                   key: str | None = None, params: dict[str, str] | None = None,
                   headers: dict[str, str] | None = None) -> Reply:
        send_headers = {"Authorization": f"Bearer {self.key if key is None else key}"} if key != "" else {}
        send_headers |= headers or {}
        async with self.http.request(method, self.base + path, json=json_body, data=data, params=params,
                                     headers=send_headers) as response:
            raw = await response.read()
            body = json.loads(raw) if raw else None
            reply = Reply(response.status, body, dict(response.headers))
        assert response.status < 500, f"{method} {path} -> {response.status}: {body}"
        if response.status >= 400:
            jsonschema.validate(body, OPENAPI_ERROR)
        else:
            schema = response_schema(method, path, response.status)
            if schema is not None:
                jsonschema.validate(body, schema)
        return reply
