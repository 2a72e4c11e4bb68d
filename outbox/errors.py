"""Exceptions raised by the producer library.

Every one is raised before anything is sent to the database, so the caller's
transaction stays usable: catch it, fix the input, and carry on.
"""


class OutboxError(Exception):
    """Base class of every error the outbox raises."""


class UnknownEventType(OutboxError):
    """The event type is not in the catalog."""


class InvalidPayload(OutboxError):
    """The event data is missing fields, has fields of the wrong type, or is not JSON."""


class PayloadTooLarge(InvalidPayload):
    """The serialised event is bigger than MAX_BODY_BYTES."""


class MissingOrgId(OutboxError):
    """No org_id was given; every event belongs to exactly one org."""


class UnsupportedConnection(OutboxError):
    """publish() was given something that is not a supported connection or session."""
