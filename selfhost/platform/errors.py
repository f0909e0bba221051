"""What the platform refuses, in Heroku's error vocabulary, without HTTP.

The store, the dyno runtime and the job service raise :class:`Refused` with Heroku's
error ``id`` (``not_found``, ``invalid_params``, ``forbidden``, ``conflict``...) and a
message for a person. Only the API turns an id into an HTTP status
(:mod:`selfhost.platform.api.errors`), so nothing below it knows about HTTP.
"""

from __future__ import annotations


class Refused(Exception):
    """A request the platform refuses: Heroku's error ``id`` and ``message``."""

    def __init__(self, id: str, message: str):
        super().__init__(message)
        self.id = id
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "message": self.message}


def not_found(what: str) -> Refused:
    return Refused("not_found", f"Couldn't find that {what}.")


def invalid(message: str) -> Refused:
    return Refused("invalid_params", message)
