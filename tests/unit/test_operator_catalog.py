"""The operator event types' schemas: valid, held to what publish checks, and outside the customer catalog."""

from pathlib import Path

import jsonschema

import outbox
from outbox import catalog
from outbox.catalog import CONTRACT_EVENT_TYPES, EVENT_TYPES, OPERATOR_EVENT_TYPES, OPERATOR_ORG, OPERATOR_SCHEMAS
from tests.support.paths import DOCS


def test_each_operator_type_has_a_schema_whose_example_publish_accepts() -> None:
    """operator/<type>.json is a draft 2020-12 schema, its example valid under it and under publish's check."""
    files = {p.name for p in (Path(catalog.__file__).parent / "operator").glob("*.json")}
    assert files == {f"{t}.json" for t in OPERATOR_EVENT_TYPES}
    for event_type, schema in OPERATOR_SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        [example] = schema["examples"]
        jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(example)
        catalog.validate(event_type, example, OPERATOR_ORG)  # data.org_id is the customer's: allowed here
        assert {"endpoint_id", "org_id", "reason", "last_error"} <= set(schema["properties"])


def test_they_are_not_in_the_customer_catalog() -> None:
    """Neither the event types, the contract's types nor the customer docs list them."""
    assert not set(OPERATOR_EVENT_TYPES) & {*EVENT_TYPES, *CONTRACT_EVENT_TYPES}
    events_page = (DOCS / "events.md").read_text()
    assert not [t for t in OPERATOR_EVENT_TYPES if t in events_page]


def test_a_customer_event_still_must_name_its_own_org() -> None:
    """Only an operator event's data may name another org than the event's."""
    data = {"endpoint_id": "ep_1", "url": "https://x.example", "reason": "gone", "disabled_at": "2024-11-23T10:00:00Z",
            "org_id": "org_other"}
    try:
        catalog.validate("webhook.endpoint_disabled", data, "org_a")
    except outbox.InvalidPayload as exc:
        assert "must be the same" in str(exc)
    else:
        raise AssertionError("accepted")
