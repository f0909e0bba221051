"""The dyno and log routes of the platform API (served by the daemon).

==========  ===========================================  ==================================
method      path                                         what
==========  ===========================================  ==================================
POST        /apps/{app}/dynos                            one-off dyno ``{command, attach,
                                                         env, size, type: "run",
                                                         time_to_live}``; ``engine`` and
                                                         ``tty`` too
GET         /apps/{app}/dynos                            list, one per name (live first, then
                                                         finished); ``?all=true``: every one
GET         /apps/{app}/dynos/{id or name}               info, with ``exit_code``
POST        /apps/{app}/dynos/{id, name or type}/        graceful stop (of a dyno, or of a
            actions/stop                                 process type's dynos)
DELETE      /apps/{app}/dynos[/{id, name or type}]       restart (all, one, or a type's)
DELETE      /apps/{app}/formations/{type}                restart a process type's dynos
POST        /apps/{app}/formations/{type}/actions/stop   stop a process type's dynos
GET         /dynos/{id}/attach?token=...                 the dyno's output, live (chunked)
POST        /apps/{app}/log-sessions                     ``{tail, lines, dyno}`` → logplex_url
GET         /logs/{app}?token=...                        the app's log (followed with tail)
==========  ===========================================  ==================================

The attach and log URLs carry their own secret (like Heroku's rendezvous and logplex
URLs), compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selfhost.platform.api.errors import ApiError
from selfhost.platform.api.models import DynoCreate, LogSessionCreate, given, parse
from selfhost.platform.api.streams import Stream
from selfhost.platform.api.web import DYNO, URL, Call, Endpoint, Reply
from selfhost.platform.errors import Refused, invalid
from selfhost.platform.runtime.dynos import Dyno, DynoManager, Supervisor
from selfhost.platform.runtime.rendezvous import Rendezvous
from selfhost.platform.store.db import now

LOG_SESSION_SECONDS = 3600


def _check(token: str, expected: str) -> None:
    if not token or not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(403, "forbidden", "This URL is not valid (wrong or missing token).")


def follow(path: Path, lines: int, tail: bool) -> Iterator[bytes]:
    """The last ``lines`` lines of a log file, then (with ``tail``) what is appended."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    kept = data.splitlines(keepends=True)[-lines:] if lines else []
    yield b"".join(kept)
    if not tail:
        return
    position = len(data)
    while True:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size > position:
            with open(path, "rb") as f:
                f.seek(position)
                chunk = f.read(size - position)
            position = size
            yield chunk
        else:
            yield b""  # a tick: lets the server notice a client that went away
            time.sleep(0.2)


def server_sent_events(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Log lines as Server-Sent Events (``data: <line>``, one event per line); the
    keep-alive ticks of ``chunks`` pass through."""
    partial = b""
    for chunk in chunks:
        if not chunk:
            yield b""
            continue
        complete, _, partial = (partial + chunk).rpartition(b"\n")
        if complete:
            yield b"".join(b"data: " + line + b"\n\n" for line in complete.split(b"\n"))
    if partial:
        yield b"data: " + partial + b"\n\n"


def endpoints(
    manager: DynoManager, supervisor: Supervisor, rendezvous: Rendezvous | None = None
) -> list[Endpoint]:
    """The routes. With ``rendezvous``, an attached dyno's ``attach_url`` is its
    rendezvous URL."""

    def as_json(call: Call, dyno: Dyno) -> dict[str, Any]:
        url = None
        if rendezvous is not None and dyno.attach:
            url = rendezvous.url(dyno.attach_token)
        return dyno.to_json(call.base_url, url)

    sessions: dict[str, tuple[str, float]] = {}  # token -> (app, expiry)

    def name_of(app: str) -> str:
        """Apps are addressed by id or name; dynos, logs and counters by name."""
        return str(manager.store.app(app)["name"])

    def dynos_create(call: Call, app: str) -> Reply:
        # a dyno's token: the new dyno is its child (the process tree)
        dyno = manager.run(
            name_of(app), given(parse(DynoCreate, call.json())), by=call.principal.dyno_id
        )
        return 201, as_json(call, dyno)

    def dynos_list(call: Call, app: str) -> Reply:
        """The dynos that exist now, as Heroku lists them: one per name (the live one,
        else the last to end, with its exit code); ``?all=true`` adds the earlier ones."""
        dynos = manager.list(app)
        if call.query_str("all") not in ("true", "1"):
            chosen: dict[str, Dyno] = {}
            for d in dynos:
                kept = chosen.get(d.name)
                if kept is None or (not kept.live and (d.live or d.started > kept.started)):
                    chosen[d.name] = d
            dynos = [d for d in dynos if chosen[d.name] is d]
        return call.page([as_json(call, d) for d in dynos], ("name", "id"))

    def dynos_info(call: Call, app: str, dyno: str) -> Reply:
        return 200, as_json(call, manager.get(app, dyno))

    def dynos_stop(call: Call, app: str, dyno: str) -> Reply:
        """Stop a dyno (by id or name), or every dyno of a process type (``ps:stop web``)."""
        chosen = manager.select(app, dyno)
        for found in chosen:
            manager.stop(found, "stopped by request")
        supervisor.poke(name_of(app))
        return 202, as_json(call, chosen[0])

    def dynos_restart(call: Call, app: str, dyno: str | None = None) -> Reply:
        """Heroku's restart (``DELETE``): stop the dyno, the process type's dynos, or all;
        the supervisor starts the formation's again from the current release. A dyno
        that has already ended has nothing to restart."""
        try:
            chosen = manager.select(app, dyno)
        except Refused:
            manager.get(app, dyno or "")  # 404 unless the platform knows it
            chosen = []
        for found in chosen:
            manager.stop(found, "restarted by request")
        supervisor.poke(name_of(app))
        return 202, {}

    def type_restart(call: Call, app: str, type: str) -> Reply:
        """``ps:restart --process-type``: every dyno of the type."""
        formation_type(app, type)
        for found in manager.select(app):
            if found.type == type:
                manager.stop(found, "restarted by request")
        supervisor.poke(name_of(app))
        return 202, {}

    def type_stop(call: Call, app: str, type: str) -> Reply:
        """``ps:stop --process-type``: every dyno of the type (the formation's are
        started again by the supervisor, as Heroku's are)."""
        formation_type(app, type)
        for found in manager.select(app):
            if found.type == type:
                manager.stop(found, "stopped by request")
        supervisor.poke(name_of(app))
        return 202, {}

    def formation_type(app: str, type: str) -> None:
        if type not in {f["type"] for f in manager.store.formation(app)}:
            raise Refused("not_found", f"Couldn't find that process type ({type}).")

    def dyno_attach(call: Call, dyno: str) -> Reply:
        found = manager.by_id(dyno)
        if found is None:
            raise ApiError(404, "not_found", "Couldn't find that dyno.")
        _check(call.query_str("token"), found.attach_token)
        found.close_input()  # attached over HTTP: output only, the command reads EOF
        return 200, Stream(found.output())

    def log_sessions_create(call: Call, app: str) -> Reply:
        body = parse(LogSessionCreate, call.json())
        app = name_of(app)
        lines = body.lines
        if not 0 <= lines <= 1500:
            raise invalid("lines must be a whole number from 0 to 1500")
        token = secrets.token_urlsafe(16)
        sessions[token] = (app, time.monotonic() + LOG_SESSION_SECONDS)
        tail = "1" if body.tail else "0"
        return 201, {
            "id": token[:12],
            "created_at": now(),
            "updated_at": now(),
            "logplex_url": f"{call.base_url}/logs/{app}?token={token}&tail={tail}&lines={lines}",
        }

    def log_stream(call: Call, app: str) -> Reply:
        token = call.query_str("token")
        owner, expiry = sessions.get(token, ("", 0.0))
        if owner != app or time.monotonic() >= expiry:
            raise ApiError(403, "forbidden", "This log URL is not valid or has expired.")
        lines = call.query_int("lines", 100)
        tail = call.query_str("tail", "0") == "1"
        chunks = follow(manager.app_log(app).path, lines, tail)
        if "text/event-stream" in call.headers.get("Accept", ""):  # Heroku's CLI
            return 200, Stream(server_sent_events(chunks), "text/event-stream")
        return 200, Stream(chunks)

    return [
        Endpoint("POST", "/apps/{app}/dynos", dynos_create, DYNO),
        Endpoint("GET", "/apps/{app}/dynos", dynos_list, DYNO),
        Endpoint("GET", "/apps/{app}/dynos/{dyno}", dynos_info, DYNO),
        Endpoint("POST", "/apps/{app}/dynos/{dyno}/actions/stop", dynos_stop, DYNO),
        Endpoint("DELETE", "/apps/{app}/dynos", dynos_restart),
        Endpoint("DELETE", "/apps/{app}/dynos/{dyno}", dynos_restart),
        Endpoint("DELETE", "/apps/{app}/formations/{type}", type_restart),
        Endpoint("POST", "/apps/{app}/formations/{type}/actions/stop", type_stop),
        Endpoint("GET", "/dynos/{dyno}/attach", dyno_attach, URL),
        Endpoint("POST", "/apps/{app}/log-sessions", log_sessions_create, DYNO),
        Endpoint("GET", "/logs/{app}", log_stream, URL),
    ]
