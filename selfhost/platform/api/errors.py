"""The API's errors: HTTP statuses for what the layers below refuse, and the API's own.

Heroku's error body is ``{"id": ..., "message": ...}``. :data:`STATUS` maps the ids the
platform's layers use (:class:`selfhost.platform.errors.Refused`) to statuses;
:class:`ApiError` is for what only HTTP knows (a malformed request, a wrong method).
"""

from __future__ import annotations

from selfhost.platform.errors import Refused

STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "not_acceptable": 406,
    "conflict": 409,
    "payload_too_large": 413,
    "quota_exceeded": 429,
    "invalid_params": 422,
    "invalid_slug": 422,
    "invalid_stage": 422,
    "digest_mismatch": 422,
    "not_implemented": 501,
    "queue_unavailable": 503,
}


class ApiError(Refused):
    """A refusal with its HTTP status given (the API layer's own errors)."""

    def __init__(self, status: int, id: str, message: str):
        super().__init__(id, message)
        self.status = status


def status_of(exc: Refused) -> int:
    """The HTTP status of a refusal (422 for an id the table does not know)."""
    return exc.status if isinstance(exc, ApiError) else STATUS.get(exc.id, 422)
