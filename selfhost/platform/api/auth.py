"""Who is calling the platform API, and what they may do: credentials by scope.

Two kinds of bearer tokens (HTTP Basic with the token as password works too, as
Heroku's CLI sends it):

- **the platform's token** (``token`` in the platform directory, mode 0600): everything.
  It never enters a dyno;
- **a dyno's token** (``SELFHOST_API_TOKEN`` in every dyno, ``dyno-...``): scoped to the
  dyno's own app, issued when the dyno starts and revoked when it ends (only its sha256
  is stored). It may call the endpoints marked ``DYNO`` (:mod:`.web`), and only for its
  own app: read the app and its config vars, start, list and stop the app's dynos, open
  its log, list its jobs, and, as a compile worker, claim, run and report the app's
  jobs and read and store the app's stages. Anything else is 403.

:func:`authenticate` finds the caller; :func:`selfhost.platform.api.web.caller`, the
dependency every endpoint has, checks it against what the endpoint allows.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass

from selfhost.platform.api.errors import ApiError
from selfhost.platform.store.db import Store


@dataclass(frozen=True)
class Principal:
    """The caller: the platform itself, or one dyno of one app."""

    app_id: str | None = None  # None: the platform's own token
    app_name: str | None = None
    dyno_id: str | None = None

    @property
    def platform(self) -> bool:
        return self.app_id is None

    def require_app(self, app_id: str, what: str = "this") -> None:
        """403 unless the caller may act for the app with this id."""
        if self.app_id is not None and app_id != self.app_id:
            raise forbidden(self, what)


def forbidden(principal: Principal, what: str) -> ApiError:
    return ApiError(
        403,
        "forbidden",
        f"This token belongs to a dyno of {principal.app_name}: it may not "
        f"{what} (a dyno's token acts only for its own app).",
    )


def token_of(authorization: str) -> str:
    """The token of an ``Authorization`` header (Bearer, or Basic with it as password)."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return ""
    return ""


def authenticate(store: Store, platform_token: str, authorization: str) -> Principal:
    """The caller behind an ``Authorization`` header, or 401."""
    token = token_of(authorization)
    if token and hmac.compare_digest(token.encode(), platform_token.encode()):
        return Principal()
    scope = store.token_scope(token) if token.startswith("dyno-") else None
    if scope is None:
        raise ApiError(401, "unauthorized", "Invalid credentials provided.")
    return Principal(*scope)
