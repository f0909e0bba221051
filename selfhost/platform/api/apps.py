"""The account, app, release, config-var and formation routes.

==========  ==========================================  ===================================
method      path                                        what
==========  ==========================================  ===================================
GET         /health                                     liveness (no token needed)
GET         /account                                    the platform's one account
GET         /account/rate-limits                        ``{remaining}`` (not enforced)
GET         /users/{~ or id or email}/apps              the account's apps
GET         /apps                                       list apps
POST        /apps                                       create ``{name, stack}``
GET         /apps/{app}                                 app info (id or name)
PATCH       /apps/{app}                                 update (renaming is refused)
DELETE      /apps/{app}                                 destroy: dynos stopped, state gone
GET         /apps/{app}/addons                          add-ons (there are none)
GET         /apps/{app}/releases                        list releases (``Range``)
POST        /apps/{app}/releases                        ``{slug}`` release, ``{release}``
                                                        rollback
GET         /apps/{app}/releases/{id or version}        release info
GET         /apps/{app}/releases/{v}/config-vars        the config vars of that release
GET/PATCH   /apps/{app}/config-vars                     config vars (PATCH: null unsets)
GET/PATCH   /apps/{app}/formation                       formation; PATCH ``{updates: [...]}``
GET/PATCH   /apps/{app}/formation/{type}                one process type ``{quantity, size}``
==========  ==========================================  ===================================

A dyno's token may read its own app and its config vars; everything else here needs
the platform's token.
"""

from __future__ import annotations

from collections.abc import Callable

from selfhost.platform.api.errors import ApiError
from selfhost.platform.api.models import (
    AppCreate,
    AppUpdate,
    FormationBatch,
    FormationOne,
    ReleaseCreate,
    given,
    parse,
)
from selfhost.platform.api.web import DYNO, RATE_LIMIT, URL, Call, Endpoint, Reply


def endpoints(
    on_change: Callable[[str], None] | None = None,
    retire: Callable[[str], None] | None = None,
) -> list[Endpoint]:
    """The routes; ``on_change(app)`` is called after a release, a rollback or a scale,
    ``retire(app)`` stops every dyno of an app being destroyed (and waits)."""

    def changed(app: str) -> None:
        if on_change:
            on_change(app)

    def health(call: Call) -> Reply:
        return 200, {"status": "ok"}

    def account_info(call: Call) -> Reply:
        return 200, call.ctx.store.account()

    def rate_limits(call: Call) -> Reply:
        return 200, {"remaining": RATE_LIMIT}

    def users_apps(call: Call, user: str) -> Reply:
        """The apps a user owns: every app, for the platform's one account."""
        account = call.ctx.store.account()
        if user not in ("~", account["id"], account["email"]):
            raise ApiError(404, "not_found", "Couldn't find that user.")
        return call.page(call.ctx.store.apps(), ("name", "id"))

    def addons_list(call: Call, app: str) -> Reply:
        call.ctx.store.app(app)  # 404 for an unknown app; the platform has no add-ons
        return 200, []

    def apps_list(call: Call) -> Reply:
        return call.page(call.ctx.store.apps(), ("name", "id"))

    def apps_create(call: Call) -> Reply:
        body = parse(AppCreate, call.json())
        return 201, call.ctx.store.create_app(body.name, body.stack or call.ctx.default_stack)

    def apps_info(call: Call, app: str) -> Reply:
        return 200, call.ctx.store.app(app)

    def apps_update(call: Call, app: str) -> Reply:
        """Heroku's app update: what this platform can change (nothing yet) is checked,
        what it cannot is refused with the reason."""
        body = parse(AppUpdate, call.json())
        found = call.ctx.store.app(app)
        if body.name not in (None, found["name"]):
            raise ApiError(
                422,
                "invalid_params",
                "Renaming an app is not supported: its dynos, logs and workers know it by "
                "name. Create an app with the new name and release the slug there.",
            )
        if body.maintenance:
            raise ApiError(422, "invalid_params", "Maintenance mode is not supported.")
        if body.build_stack not in (None, found["stack"]["name"], found["stack"]["id"]):
            raise ApiError(
                422, "invalid_params", f"An app's stack is fixed ({found['stack']['name']})."
            )
        return 200, found

    def apps_delete(call: Call, app: str) -> Reply:
        """Heroku's ``apps:destroy``: scale to nothing, stop every dyno, then forget the
        app, its releases, slugs, config vars, jobs and stages (one transaction)."""
        store = call.ctx.store
        found = store.app(app)
        types = [f["type"] for f in store.formation(found["id"])]
        if types:  # the supervisor starts nothing more for it
            store.update_formation(found["id"], [{"type": t, "quantity": 0} for t in types])
        if retire:
            retire(found["name"])
        return 200, store.delete_app(found["id"])

    def releases_list(call: Call, app: str) -> Reply:
        return call.page(call.ctx.store.releases(app), ("version", "id"))

    def releases_create(call: Call, app: str) -> Reply:
        body = parse(ReleaseCreate, call.json())
        store = call.ctx.store
        if body.release is not None:  # Heroku's rollback: {"release": id or version}
            release = store.rollback(app, str(body.release))
        elif body.slug is None:
            raise ApiError(422, "invalid_params", "slug (a slug id) is required.")
        else:
            release = store.create_release(app, body.slug, body.description)
        changed(app)
        return 201, release

    def releases_info(call: Call, app: str, release: str) -> Reply:
        return 200, call.ctx.store.release(app, release)

    def release_config(call: Call, app: str, release: str) -> Reply:
        return 200, call.ctx.store.release_config(app, release)

    def config_info(call: Call, app: str) -> Reply:
        return 200, call.ctx.store.config(app)

    def config_update(call: Call, app: str) -> Reply:
        config = call.ctx.store.update_config(app, call.json())
        changed(app)  # a new release: its dynos are replaced, the router's table rewritten
        return 200, config

    def formation_list(call: Call, app: str) -> Reply:
        return 200, call.ctx.store.formation(app)

    def formation_update(call: Call, app: str) -> Reply:
        body = parse(FormationBatch, call.json())
        result = call.ctx.store.update_formation(app, [given(u) for u in body.updates])
        changed(app)
        return 200, result

    def formation_info(call: Call, app: str, type: str) -> Reply:
        for entry in call.ctx.store.formation(app):
            if type in (entry["type"], entry["id"]):
                return 200, entry
        raise ApiError(404, "not_found", f"Couldn't find that process type ({type}).")

    def formation_one(call: Call, app: str, type: str) -> Reply:
        """PATCH one process type: ``{quantity, size}`` (Heroku's CLI for ps:scale)."""
        body = parse(FormationOne, call.json())
        result = call.ctx.store.update_formation(app, [{"type": type, **given(body)}])
        changed(app)
        return 200, result[0]

    return [
        Endpoint("GET", "/health", health, URL),
        Endpoint("GET", "/account", account_info),
        Endpoint("GET", "/account/rate-limits", rate_limits),
        Endpoint("GET", "/users/{user}/apps", users_apps),
        Endpoint("GET", "/apps", apps_list),
        Endpoint("POST", "/apps", apps_create),
        Endpoint("GET", "/apps/{app}", apps_info, DYNO),
        Endpoint("PATCH", "/apps/{app}", apps_update),
        Endpoint("DELETE", "/apps/{app}", apps_delete),
        Endpoint("GET", "/apps/{app}/addons", addons_list),
        Endpoint("GET", "/apps/{app}/releases", releases_list),
        Endpoint("POST", "/apps/{app}/releases", releases_create),
        Endpoint("GET", "/apps/{app}/releases/{release}", releases_info),
        Endpoint("GET", "/apps/{app}/releases/{release}/config-vars", release_config),
        Endpoint("GET", "/apps/{app}/config-vars", config_info, DYNO),
        Endpoint("PATCH", "/apps/{app}/config-vars", config_update),
        Endpoint("GET", "/apps/{app}/formation", formation_list),
        Endpoint("PATCH", "/apps/{app}/formation", formation_update),
        Endpoint("GET", "/apps/{app}/formation/{type}", formation_info),
        Endpoint("PATCH", "/apps/{app}/formation/{type}", formation_one),
    ]
