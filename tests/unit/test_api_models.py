"""The API's pydantic models and the OpenAPI document generated from them and the event catalog."""

import json
from typing import Any

import jsonschema
import pydantic
import pytest

from deliverer.api import catalog, models, openapi
from deliverer.api.app import OPENAPI
from outbox.catalog import EVENT_TYPES

SCHEMAS = OPENAPI["components"]["schemas"]


def schema_of(name: str) -> dict[str, Any]:
    """The named component as a standalone JSON Schema, its references resolved within the document."""
    text = json.dumps({**SCHEMAS[name], "$defs": SCHEMAS}).replace("#/components/schemas/", "#/$defs/")
    return json.loads(text)


def test_the_served_document_is_the_generated_one() -> None:
    """What /v1/openapi.json serves is what `python -m deliverer.api.openapi` prints, built from the models."""
    assert openapi.document() == OPENAPI
    assert set(SCHEMAS) == {m.__name__ for m in (*models.REQUESTS, *models.RESPONSES)} | {
        "ErrorBody", "Pacing", "FactKind", "Outcome"} | set(catalog.schemas())


def test_the_event_types_are_listed_once() -> None:
    """Outside the catalog's schemas, no schema lists the event types: they refer to EventType."""
    api_schemas = [{k: v for k, v in s.items() if k != "examples"}
                   for name, s in SCHEMAS.items() if name not in catalog.schemas()]
    assert not [t for t in EVENT_TYPES if f'"{t}"' in json.dumps(api_schemas)]
    assert SCHEMAS["EventType"]["enum"] == list(EVENT_TYPES)


@pytest.mark.parametrize("model", [*models.REQUESTS, *models.RESPONSES], ids=lambda m: m.__name__)
def test_each_models_examples_fit_its_schema_and_the_model(model: type[pydantic.BaseModel]) -> None:
    """The examples in the document are valid under the generated schema and parse as the model."""
    for example in SCHEMAS[model.__name__].get("examples", []):
        jsonschema.validate(example, schema_of(model.__name__))
        model.model_validate(example)


@pytest.mark.parametrize("model", models.REQUESTS, ids=lambda m: m.__name__)
def test_every_checked_request_field_says_what_it_must_be(model: type[models.Request]) -> None:
    """A request field pydantic can refuse has a Label for the message; the registry's (typed Any) need none."""
    for name, field in model.model_fields.items():
        assert field.annotation is Any or any(isinstance(m, models.Label) for m in field.metadata), name


def test_request_models_are_closed_and_strict() -> None:
    """Request bodies refuse unknown fields, in the document as on the server, and JSON's types are not coerced."""
    for model in models.REQUESTS:
        assert SCHEMAS[model.__name__]["additionalProperties"] is False
    for body in ({"since": "2024-11-23T10:00:00Z", "dry_run": "true"}, {"since": 1},
                 {"since": "2024-11-23T10:00:00Z", "colour": "red"}):
        with pytest.raises(pydantic.ValidationError):
            models.RecoverRequest.model_validate(body)
