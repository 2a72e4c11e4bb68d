"""The registry's one refusal, shared by its modules."""


class EndpointError(ValueError):
    """The endpoint cannot be registered as given; the message says how to fix it.

    ``field`` names the input it is about, as the API's error object reports it.
    """

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field
