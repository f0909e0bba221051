"""The routing table: what the daemon tells the router, through one file.

The daemon (control plane) writes ``<platform>/routes.json`` whenever an app's web
dynos or formation change; the router (data plane) reads it when it changes. A file,
not a connection: the router keeps serving from the last table while the daemon is
down or restarting, and either can be restarted alone.

The file (written atomically; ``serial`` grows with every write)::

    {"serial": 7, "api": "http://127.0.0.1:5000",
     "apps": {"hello": {"id": "...", "web": 3, "autostart": false, "idle": 300,
                        "backends": [{"dyno": "web.1", "id": "...", "port": 20000,
                                      "pid": 4242, "netns": 4026532999,
                                      "since": 1764670000.5}, ...]}}}

``web`` is the formation's quantity (0: the router answers H14); a backend is a web
dyno that is up and not stopping; ``pid`` is a process in its network namespace (the
namespace's inode is ``netns``), through which the router sees whether it has bound
``$PORT`` and whether it is frozen.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfhost.stages.manifest import write_json_atomic

if TYPE_CHECKING:
    from selfhost.platform.runtime.dynos import Dyno, DynoManager, Extras

#: config vars an app sets to have a dyno started by its first request
AUTOSTART_VAR = "SELFHOST_AUTOSTART"  # "1": a request to an app at web=0 starts a dyno
IDLE_VAR = "SELFHOST_IDLE_SECONDS"  # autostarted dynos idle this long are stopped
DEFAULT_IDLE = 300.0


@dataclass(frozen=True)
class Backend:
    """One routable web dyno."""

    app: str
    dyno: str  # its name: web.1
    id: str
    port: int  # its host loopback port
    pid: int  # a process in its network namespace (once it has entered it)
    netns: int  # that namespace's inode (0: the host's)
    since: float  # when it came up (wall clock)


@dataclass(frozen=True)
class AppRoute:
    name: str
    id: str
    web: int  # the formation's web quantity
    autostart: bool
    idle: float
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class Table:
    serial: int
    api: str
    apps: dict[str, AppRoute]

    @classmethod
    def empty(cls) -> Table:
        return cls(0, "", {})


def read_table(path: Path) -> Table:
    """The table in ``path``; an empty one if there is none. A malformed file raises
    ValueError naming what is wrong."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return Table.empty()
    if not isinstance(document, dict) or not isinstance(document.get("apps"), dict):
        raise ValueError(f"{path}: expected an object with an 'apps' object")
    apps: dict[str, AppRoute] = {}
    for name, app in document["apps"].items():
        try:
            backends = tuple(
                Backend(
                    app=name,
                    dyno=str(b["dyno"]),
                    id=str(b["id"]),
                    port=int(b["port"]),
                    pid=int(b["pid"]),
                    netns=int(b.get("netns", 0)),
                    since=float(b["since"]),
                )
                for b in app["backends"]
            )
            apps[name] = AppRoute(
                name=name,
                id=str(app["id"]),
                web=int(app["web"]),
                autostart=bool(app["autostart"]),
                idle=float(app["idle"]),
                backends=backends,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: app {name!r}: {exc!r}") from None
    return Table(int(document.get("serial", 0)), str(document.get("api", "")), apps)


def idle_seconds(config: dict[str, str]) -> float:
    try:
        value = float(config.get(IDLE_VAR, DEFAULT_IDLE))
    except ValueError:
        return DEFAULT_IDLE
    return value if value > 0 else DEFAULT_IDLE


class RoutePublisher:
    """Writes the routing table from the dyno manager's state (a dyno observer: a web
    dyno coming up or ending rewrites it at once; the supervisor's pass catches the
    rest, a scale to 0 say). It writes only what changed."""

    def __init__(self, manager: DynoManager, path: Path, api_url: str):
        self.manager = manager
        self.path = path
        self.api_url = api_url
        self.lock = threading.Lock()
        self.last: dict[str, Any] | None = None
        self.serial = 0
        with contextlib.suppress(ValueError):
            self.serial = read_table(path).serial

    def compute(self) -> dict[str, Any]:
        m = self.manager
        apps: dict[str, Any] = {}
        for app in m.store.apps():
            name = app["name"]
            formation = {f["type"]: f for f in m.store.formation(name)}
            config = m.store.config(name)
            backends = []
            for d in m.list(name):
                if d.type != "web" or not d.live or d.stopping or d.state != "up":
                    continue
                if d.process is None or d.port is None:
                    continue
                try:
                    pid = d.process.namespace_pid()
                except Exception:  # it is ending: not routable
                    continue
                backends.append(
                    {
                        "dyno": d.name,
                        "id": d.id,
                        "port": d.port,
                        "pid": pid,
                        "netns": d.netns,
                        "since": d.up_since,
                    }
                )
            apps[name] = {
                "id": app["id"],
                "web": formation["web"]["quantity"] if "web" in formation else 0,
                "autostart": config.get(AUTOSTART_VAR, "") in ("1", "true", "on"),
                "idle": idle_seconds(config),
                "backends": backends,
            }
        return {"api": self.api_url, "apps": apps}

    def publish(self) -> None:
        with self.lock:
            document = self.compute()
            if document == self.last:
                return
            self.serial += 1
            write_json_atomic(self.path, {"serial": self.serial, **document})
            self.last = document

    def safely(self) -> None:
        try:
            self.publish()
        except Exception as exc:  # the next change or pass writes it
            self.manager.log(f"routes: {exc!r}")

    # ------------------------------------------------------------ DynoObserver
    def dyno_environment(self, dyno: Dyno, config: dict[str, str]) -> Extras:
        from selfhost.platform.runtime.dynos import Extras

        return Extras()

    def dyno_changed(self, dyno: Dyno) -> None:
        if dyno.type == "web":
            self.safely()

    def dyno_exited(self, dyno: Dyno) -> None:
        if dyno.type == "web":
            self.safely()
