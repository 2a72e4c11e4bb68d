"""The typed event builders and the job-events helper against the customer contract's example payloads."""

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import outbox
from outbox import catalog, events
from outbox.catalog import CONTRACT_EVENT_TYPES
from outbox.jobs import JobError, JobResult, job_finished, processing_time_ms
from outbox.publish import serialize
from tests.support.contract import SEED_ORG, SEED_PAYLOADS, at, build_from_seed, seed


def assert_same_payload(event: outbox.Event, expected: dict[str, Any]) -> None:
    """Equal as JSON and with the fields in the docs' order, at every level."""
    body = json.loads(serialize(event.event_type, event.data))
    assert body == expected

    def keys(value: Any) -> Any:
        if isinstance(value, dict):
            return [(k, keys(v)) for k, v in value.items()]
        return None
    assert keys(body) == keys(expected)


class TestSeedRoundTrip:
    @pytest.mark.parametrize("event_type", list(SEED_PAYLOADS))
    def test_builder_reproduces_the_docs_example(self, event_type: str) -> None:
        """Each builder, given the example's values, produces the example payload exactly and passes the catalog."""
        event = build_from_seed(event_type)
        assert event.event_type == event_type
        assert event.org_id == SEED_ORG
        assert_same_payload(event, seed(event_type))
        catalog.validate(event.event_type, event.data, event.org_id)

    def test_catalog_covers_exactly_the_built_types(self) -> None:
        """There is a builder and a docs example for every event type in the catalog."""
        assert set(SEED_PAYLOADS) == set(CONTRACT_EVENT_TYPES)

    def test_job_helper_reproduces_both_job_examples(self) -> None:
        """job_finished computes processing_time_ms from the timings and yields the docs' two job payloads."""
        common = {"job_id": "job_abc123...", "org_id": "org_xyz789...", "extractor_id": "ext_def456..."}
        completed = job_finished(
            **common, outcome=JobResult(seed("job.completed")["data"]["extracted_data"],
                                        seed("job.completed")["data"]["confidence"]),
            created_at=at("2024-11-23T10:00:00Z"), started_at=at("2024-11-23T10:00:00.468Z"),
            finished_at=at("2024-11-23T10:00:05Z"), cost_credits=2,
            metadata={"customer_id": "cust_123", "source": "email"})
        assert_same_payload(completed, seed("job.completed"))
        failed = job_finished(
            **common, outcome=JobError("document_unreadable", "Document quality is too low to extract text",
                                       "Please provide a higher quality scan or image"),
            created_at=at("2024-11-23T10:00:00.200Z"), started_at=at("2024-11-23T10:00:00.500Z"),
            finished_at=at("2024-11-23T10:00:01.700Z"), cost_credits=0, metadata={"customer_id": "cust_123"})
        assert_same_payload(failed, seed("job.failed"))


class TestTimestamps:
    def test_any_zone_is_written_as_utc_with_z(self) -> None:
        """An aware time in another zone is written in UTC, whole seconds, ending in Z."""
        paris = timezone(timedelta(hours=1))
        assert events.format_timestamp(datetime(2024, 11, 23, 11, 0, 5, 999_999, tzinfo=paris)) == \
            "2024-11-23T10:00:05Z"

    def test_naive_time_is_refused(self) -> None:
        """A time without a zone cannot be placed in UTC, so the builder refuses it and names the field."""
        with pytest.raises(outbox.InvalidPayload, match=r"depleted_at: .*no time zone"):
            events.credits_depleted(org_id="org_a", depleted_at=datetime(2024, 11, 23), jobs_queued=0)

    @settings(deadline=None)
    @given(st.datetimes(timezones=st.timezones(), allow_imaginary=False))
    def test_format_is_the_instant_truncated_to_seconds(self, moment: datetime) -> None:
        """Any aware datetime becomes YYYY-MM-DDTHH:MM:SSZ: the same instant without its fraction of a second."""
        text = events.format_timestamp(moment)
        assert text.endswith("Z") and len(text) == len("2024-11-23T10:00:00Z")
        parsed = datetime.fromisoformat(text)
        assert parsed.utcoffset() == timedelta(0)
        assert timedelta(0) <= moment - parsed < timedelta(seconds=1)


NOW = datetime(2024, 11, 23, 10, 0, tzinfo=UTC)


class TestMalformedInputIsRefused:
    @pytest.mark.parametrize(("field", "value", "message"), [
        ("job_id", "abc123", "job_id must be a string like job_abc123"),
        ("job_id", "job_", "job_id must be a string like job_abc123"),
        ("org_id", "xyz789", "org_id must be a string like org_abc123"),
        ("extractor_id", "def456", "extractor_id must be a string like ext_abc123"),
        ("processing_time_ms", -1, "processing_time_ms must be a non-negative integer"),
        ("processing_time_ms", 4532.0, "processing_time_ms must be a non-negative integer"),
        ("processing_time_ms", True, "processing_time_ms must be a non-negative integer"),
        ("cost_credits", float("nan"), "cost_credits must be a finite number"),
        ("cost_credits", -2, "cost_credits must be at least 0"),
        ("cost_credits", "2", "cost_credits must be a number"),
        ("extracted_data", [1, 2], "extracted_data must be a mapping"),
        ("extracted_data", {"pages": {1, 2}}, "not JSON-serialisable"),
        ("completed_at", "2024-11-23T10:00:05Z", "a timestamp must be a datetime"),
    ])
    def test_job_completed(self, field: str, value: Any, message: str) -> None:
        """job_completed raises InvalidPayload, naming the field, for a value the contract does not allow."""
        arguments: dict[str, Any] = {
            "job_id": "job_abc", "org_id": "org_a", "extractor_id": "ext_a", "extracted_data": {},
            "confidence": {}, "processing_time_ms": 1, "cost_credits": 1, "created_at": NOW, "completed_at": NOW,
        }
        with pytest.raises(outbox.InvalidPayload, match=message):
            events.job_completed(**(arguments | {field: value}))

    def test_blank_error_code_is_refused(self) -> None:
        """job.failed needs a non-empty error code and message; receivers branch on the code."""
        with pytest.raises(outbox.InvalidPayload, match="code must be a non-empty string"):
            events.job_failed(job_id="job_a", org_id="org_a", extractor_id="ext_a", code=" ", message="m",
                              processing_time_ms=0, cost_credits=0, created_at=NOW, failed_at=NOW)

    def test_missing_suggestion_is_left_out(self) -> None:
        """Without a suggestion, error_details has only code and message, which the catalog accepts."""
        event = events.job_failed(job_id="job_a", org_id="org_a", extractor_id="ext_a", code="timeout",
                                  message="took too long", processing_time_ms=0, cost_credits=0, created_at=NOW,
                                  failed_at=NOW)
        assert event.data["error_details"] == {"code": "timeout", "message": "took too long"}
        assert event.data["metadata"] == {}

    def test_decimal_amounts_become_json_numbers(self) -> None:
        """Amounts read from NUMERIC columns (Decimal) are sent as JSON integers or floats."""
        event = events.credits_low_balance(org_id="org_a", current_balance=Decimal("50.0"), threshold=Decimal(100),
                                           percentage_remaining=Decimal("2.5"), estimated_jobs_remaining=25,
                                           timestamp=NOW)
        assert serialize(event.event_type, event.data) == (
            '{"event":"credits.low_balance","data":{"org_id":"org_a","current_balance":50,"threshold":100,'
            '"percentage_remaining":2.5,"estimated_jobs_remaining":25,"timestamp":"2024-11-23T10:00:00Z"}}')


class TestJobHelper:
    def test_finished_before_started_is_refused(self) -> None:
        """A job cannot finish before it started, nor start before it was created."""
        common: dict[str, Any] = {"job_id": "job_a", "org_id": "org_a", "extractor_id": "ext_a",
                                  "outcome": JobError("x", "y"), "cost_credits": 0}
        with pytest.raises(outbox.InvalidPayload, match=r"finished_at .* is before started_at"):
            job_finished(**common, created_at=NOW, started_at=NOW + timedelta(seconds=2),
                         finished_at=NOW + timedelta(seconds=1))
        with pytest.raises(outbox.InvalidPayload, match=r"started_at .* is before created_at"):
            job_finished(**common, created_at=NOW, started_at=NOW - timedelta(seconds=1), finished_at=NOW)
        with pytest.raises(outbox.InvalidPayload, match=r"created_at: .*no time zone"):
            job_finished(**common, created_at=datetime(2024, 1, 1), started_at=NOW, finished_at=NOW)

    def test_outcome_must_be_a_result_or_an_error(self) -> None:
        """Anything but a JobResult or a JobError as the outcome is refused."""
        with pytest.raises(outbox.InvalidPayload, match="outcome must be a JobResult or a JobError"):
            job_finished(job_id="job_a", org_id="org_a", extractor_id="ext_a", outcome={"ok": True},  # type: ignore[arg-type]
                         created_at=NOW, started_at=NOW, finished_at=NOW, cost_credits=0)

    @settings(deadline=None)
    @given(st.datetimes(timezones=st.just(UTC)), st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=2)))
    def test_processing_time_is_the_elapsed_milliseconds(self, started: datetime, elapsed: timedelta) -> None:
        """processing_time_ms is the time from start to finish, rounded to the nearest millisecond."""
        finished = started + elapsed
        ms = processing_time_ms(started, finished)
        assert isinstance(ms, int)
        assert abs(timedelta(milliseconds=ms) - elapsed) <= timedelta(microseconds=500)


    def test_processing_time_across_a_daylight_saving_change_is_real_time(self) -> None:
        """Started 02:30 CEST, finished 02:10 CET the same night (after clocks went back): 40 minutes,
        not minus 20, whatever wall clocks say."""
        berlin = ZoneInfo("Europe/Berlin")
        started = datetime(2024, 10, 27, 2, 30, tzinfo=berlin)
        finished = datetime(2024, 10, 27, 2, 10, fold=1, tzinfo=berlin)
        assert processing_time_ms(started, finished) == 40 * 60 * 1000
        event = job_finished(job_id="job_a", org_id="org_a", extractor_id="ext_a", outcome=JobResult({}, {}),
                             created_at=started, started_at=finished, finished_at=finished, cost_credits=0)
        assert event.data["processing_time_ms"] == 0
        assert event.data["created_at"] == "2024-10-27T00:30:00Z"
        assert event.data["completed_at"] == "2024-10-27T01:10:00Z"


json_scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False,
                                                                                     allow_infinity=False) | st.text()
json_objects = st.dictionaries(st.text(), st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                                                       | st.dictionaries(st.text(), inner, max_size=3), max_leaves=8),
                               max_size=4)
suffixes = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=20)
aware_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                           timezones=st.timezones(), allow_imaginary=False)


class TestBuilderProperties:
    @settings(deadline=None)
    @given(job=suffixes, org=suffixes, extractor=suffixes, extracted=json_objects, confidence=json_objects,
           metadata=st.none() | json_objects, cost=st.integers(0, 10**6) | st.floats(0, 1e6),
           created=aware_times, elapsed=st.timedeltas(timedelta(0), timedelta(hours=3)),
           failure=st.none() | st.tuples(st.text(min_size=1).filter(str.strip), st.text(min_size=1).filter(str.strip),
                                         st.none() | st.text(min_size=1).filter(str.strip)))
    def test_job_events_always_pass_the_catalog_and_survive_json(
            self, job: str, org: str, extractor: str, extracted: dict[str, Any], confidence: dict[str, Any],
            metadata: dict[str, Any] | None, cost: float, created: datetime, elapsed: timedelta,
            failure: tuple[str, str, str | None] | None) -> None:
        """For any valid job and outcome the helper's event passes the catalog and its body parses back to its data."""
        outcome: JobResult | JobError = JobResult(extracted, confidence) if failure is None else JobError(*failure)
        # elapsed real time, in the same zone: `created + elapsed` would add wall-clock time,
        # which differs by an hour across a daylight-saving change.
        finished = (created.astimezone(UTC) + elapsed).astimezone(created.tzinfo)
        event = job_finished(job_id="job_" + job, org_id="org_" + org, extractor_id="ext_" + extractor,
                             outcome=outcome, created_at=created, started_at=created, finished_at=finished,
                             cost_credits=cost, metadata=metadata)
        assert event.event_type == ("job.completed" if failure is None else "job.failed")
        catalog.validate(event.event_type, event.data, event.org_id)
        body = json.loads(serialize(event.event_type, event.data))
        assert body == {"event": event.event_type, "data": event.data}
        finished_field = "completed_at" if failure is None else "failed_at"
        assert at(body["data"][finished_field]) - at(body["data"]["created_at"]) <= elapsed + timedelta(seconds=1)
        assert body["data"]["processing_time_ms"] == (elapsed // timedelta(microseconds=1) + 500) // 1000
