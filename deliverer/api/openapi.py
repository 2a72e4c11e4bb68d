"""The OpenAPI 3.1 document ``GET /v1/openapi.json`` serves: the routes, and the event catalog as
components and a ``webhooks`` section (``catalog``)."""

import json
from importlib import resources
from typing import Any

from deliverer.api import catalog


def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(resources.files(__package__).joinpath("openapi.json").read_text())
    doc["components"]["schemas"] |= catalog.schemas()
    doc["webhooks"] = catalog.webhooks()
    return doc
