"""The API's errors: the exception every refusal raises and the one JSON shape it answers with,
``{"error": {"code", "message", "field"?}}``."""

from aiohttp import web

from deliverer.api.models import Error, ErrorBody


class ApiError(Exception):
    """A request refused: its HTTP status, a stable code, a message saying how to fix it, and the
    field of the body or query it is about, if any."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def not_found(what: str) -> ApiError:
    """What anything of another org answers too, so ids of other orgs cannot be probed."""
    return ApiError(404, "not_found", f"no {what} with that id in this org")


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    body = Error(error=ErrorBody(code=code, message=message, field=field))
    return web.json_response(body.model_dump(exclude_none=True), status=status)
