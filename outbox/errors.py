"""Exceptions raised by the producer library.

Every one but ``WritesRefused`` is raised before anything is sent to the
database, so the caller's transaction stays usable: catch it, fix the input, and
carry on. ``WritesRefused`` says whether it was.
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


class WritesRefused(OutboxError):
    """The database does not accept writes now: a standby, a server set read-only, or a full disk.

    ``transaction_usable`` is True when the outbox knew before writing (the server
    reports it is read-only): nothing was sent and the transaction is as it was.
    Otherwise the server refused the write itself and the caller must roll back.
    Either way nothing was written; retry once the primary accepts writes.
    """

    def __init__(self, message: str, *, transaction_usable: bool) -> None:
        super().__init__(message)
        self.transaction_usable = transaction_usable
