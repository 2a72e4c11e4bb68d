"""The event catalog: JSON Schemas publish validates with, the docs' examples, and the OpenAPI
webhooks section a customer generates receiver types from."""

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.protocols
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import outbox
from deliverer.api import catalog as api_catalog
from deliverer.api.app import OPENAPI
from deliverer.delivery import sign
from outbox import catalog
from outbox.catalog import EVENT_TYPES, SCHEMAS
from tests.support.contract import SEED_PAYLOADS
from tests.support.paths import DOCS

# What catalog.validate interprets; everything else in a schema must be an annotation.
CHECKED = {"type", "const", "required", "properties", "format"}
ANNOTATIONS = {"$schema", "$id", "title", "description", "examples", "additionalProperties", "x-operational"}


# JSON Schema counts 2.0 as an integer; publish refuses it, as a receiver in a typed
# language would (Go's encoding/json will not put 2.0 in an int): the one place the
# two differ, by design, and the reference validator here is told so.
StrictIntegers = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)))


def checker(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    return StrictIntegers(schema, format_checker=jsonschema.FormatChecker())


def accepted_by_catalog(event_type: str, data: Any) -> bool:
    org_id = data.get("org_id") if isinstance(data, dict) else None
    try:
        catalog.validate(event_type, data, org_id)  # type: ignore[arg-type]
    except outbox.InvalidPayload:
        return False
    return True


class TestSchemas:
    def test_every_event_type_has_a_valid_schema_file_and_nothing_else_is_there(self) -> None:
        """Each type's <type>.json is a draft 2020-12 schema; the package holds no other schema."""
        files = {p.name for p in Path(catalog.__file__).parent.glob("*.json")}
        assert files == {f"{t}.json" for t in EVENT_TYPES}
        for event_type in EVENT_TYPES:
            jsonschema.Draft202012Validator.check_schema(SCHEMAS[event_type])

    def test_schemas_use_only_what_publish_checks(self) -> None:
        """Every keyword is one catalog.validate checks or an annotation, and only strings have a format."""
        def walk(node: dict[str, Any]) -> None:
            assert set(node) <= CHECKED | ANNOTATIONS, set(node) - CHECKED - ANNOTATIONS
            assert node.get("format", "date-time") == "date-time"
            for child in node.get("properties", {}).values():
                walk(child)
        for schema in SCHEMAS.values():
            walk(schema)

    @pytest.mark.parametrize("event_type", sorted(SEED_PAYLOADS))
    def test_the_docs_examples_are_valid(self, event_type: str) -> None:
        """The customer docs' example payloads pass both the JSON Schema and publish's check."""
        data = json.loads(SEED_PAYLOADS[event_type])["data"]
        checker(SCHEMAS[event_type]).validate(data)
        assert accepted_by_catalog(event_type, data)
        assert SCHEMAS[event_type]["examples"] == [data]

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4)
        | st.sampled_from(["2024-11-23T10:00:00Z", "2024-11-23T10:00:00+01:00", "2024-11-23t10:00:00z",
                           "2024-11-23T10:00:00", "2024-11-23T10:00Z", "2024-02-30T10:00:00Z",
                           "2024-11-23 10:00:00Z", "2024-11-23T10:00:00.5Z", "completed", "failed"]),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["code", "message", "x"]),
                                                                    inner, max_size=3),
        max_leaves=6,
    )

    @settings(max_examples=300, deadline=None)
    @given(event_type=st.sampled_from(sorted(SEED_PAYLOADS)), data=st.data())
    def test_publish_accepts_exactly_what_the_schema_accepts(self, event_type: str, data: st.DataObject) -> None:
        """For the docs' examples with fields changed, dropped or added, catalog.validate and jsonschema agree."""
        payload = json.loads(SEED_PAYLOADS[event_type])["data"]
        fields = [*payload, "error_details", "suggestion", "extra"]
        for name in data.draw(st.lists(st.sampled_from(fields), max_size=3)):
            if data.draw(st.booleans()):
                payload.pop(name, None)
            else:
                payload[name] = data.draw(self.json_values)
        assert accepted_by_catalog(event_type, payload) == checker(SCHEMAS[event_type]).is_valid(payload), payload


class TestOpenApiWebhooks:
    def test_each_event_type_is_a_webhook_whose_body_is_its_schema(self) -> None:
        """The served document has a webhooks entry per type; its body is {"event", "data"} with the catalog's data."""
        assert list(OPENAPI["webhooks"]) == list(EVENT_TYPES)
        components = OPENAPI["components"]["schemas"]
        for event_type in EVENT_TYPES:
            ref = OPENAPI["webhooks"][event_type]["post"]["requestBody"]["content"]["application/json"]["schema"]
            body = components[ref["$ref"].removeprefix("#/components/schemas/")]
            assert body["properties"]["event"] == {"const": event_type}
            data = components[body["properties"]["data"]["$ref"].removeprefix("#/components/schemas/")]
            assert data["properties"] == SCHEMAS[event_type]["properties"]
        assert components["EventType"]["enum"] == list(EVENT_TYPES)

    def test_the_documented_headers_are_the_ones_sent(self) -> None:
        """The webhooks' header parameters are exactly what the deliverer signs and sends."""
        sent = sign.headers(secret="whsec_x", body=b"{}", event_id="evt_1", event_type="webhook.test",
                            delivery_id="dlv_1", attempt=1, timestamp=0)
        assert set(api_catalog.HEADERS) == set(sent) - {"Content-Type"}

    def test_a_generated_client_model_parses_the_docs_examples(self, tmp_path: Path) -> None:
        """datamodel-code-generator turns the served document into pydantic models that read the docs' examples
        and refuse a payload without a required field."""
        from datamodel_code_generator import DataModelType, Formatter, InputFileType, generate

        output = tmp_path / "receiver_models.py"
        generate(json.dumps(OPENAPI), input_file_type=InputFileType.OpenAPI, output=output,
                 output_model_type=DataModelType.PydanticV2BaseModel, formatters=[Formatter.BUILTIN])
        spec = importlib.util.spec_from_file_location("receiver_models", output)
        assert spec is not None and spec.loader is not None
        models = importlib.util.module_from_spec(spec)
        sys.modules["receiver_models"] = models
        try:
            spec.loader.exec_module(models)
            for event_type, text in SEED_PAYLOADS.items():
                model = getattr(models, SCHEMAS[event_type]["title"].removesuffix("Data") + "Event")
                parsed = model.model_validate_json(text)
                assert parsed.model_dump(mode="json", exclude_unset=True) == json.loads(text)
            bad = json.loads(SEED_PAYLOADS["job.completed"])
            del bad["data"]["completed_at"]
            with pytest.raises(ValueError, match="completed_at"):
                models.JobCompletedEvent.model_validate(bad)
        finally:
            del sys.modules["receiver_models"]


def test_the_events_page_is_generated_from_the_catalog() -> None:
    """docs/events.md is what `python -m deliverer.api.catalog` writes: the docs cannot drift from the schemas."""
    assert (DOCS / "events.md").read_text() == api_catalog.markdown(), (
        "regenerate with: python -m deliverer.api.catalog > docs/events.md")
