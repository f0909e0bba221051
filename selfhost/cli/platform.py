"""Tasks of the platform domain: slugs, releases, apps, config and the platform daemon."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke import Context

from selfhost.cli.base import argv_after_dashdash, make_engine, make_ui, settings, task
from selfhost.compilers import find_recipe
from selfhost.config import SUITES, Settings
from selfhost.errors import PlatformError, SelfhostError, UsageError

if TYPE_CHECKING:
    from selfhost.platform.client import PlatformClient
    from selfhost.platform.slugs.packaging import CompilerSlug
    from selfhost.ui import UI


SLUG_HELP = {
    "compiler": "the recipe whose final stage the slug ships (default: selfhost.default_compiler)",
    "app_dir": "your app (a directory with its Procfile, .slugignore, .profile.d); default: "
    "the platform's own compile-worker app",
    "strict": "make every lint an error (no slug is written if one fires)",
    "engine": "sandbox engine, if a stage must be built: bwrap (default) or docker",
}


@task(
    help={
        **SLUG_HELP,
        "out": "where to write the slug (default: <workspace>/slugs/NAME-VERSION.tgz)",
        "stack": "lint against this suite's stack instead of the one it runs on",
        "json": "print {path, checksum, size, process_types, warnings, ...} as JSON",
    }
)
def slug(
    c: Context,
    compiler: str | None = None,
    app_dir: str | None = None,
    out: str | None = None,
    strict: bool = False,
    stack: str | None = None,
    engine: str | None = None,
    json: bool = False,
) -> None:
    """Package the proven final stage with an app into a reproducible slug."""
    s = settings(c, engine=engine)
    ui = make_ui(s, json=json)
    if stack and stack not in SUITES:
        raise UsageError(f"--stack is {stack!r}; expected one of {', '.join(SUITES)}")
    result = _build_slug(
        s,
        ui,
        compiler,
        app_dir=Path(app_dir) if app_dir else None,
        out=Path(out) if out else None,
        strict=strict,
        target_suite=stack,
    )
    if json:
        ui.emit_json(result.to_json())
        return
    info = result.info
    ui.info(
        f"slug {info.path}\n  checksum: {info.checksum}\n  size: {info.size} bytes\n"
        f"  process types: {', '.join(f'{k}: {v}' for k, v in info.process_types.items())}"
        f"\n  stack: {result.target_stack.spec.name}\n  lints: {len(result.lints)}"
        f"\n  {result.bootstrap.recipe.name} stage{result.bootstrap.stages[-1].stage}, tree "
        f"digest {result.bootstrap.stages[-1].manifest.tree_digest[:16]}"
    )


def _build_slug(s: Settings, ui: UI, compiler: str | None, **options: Any) -> CompilerSlug:
    """The proven final stage (built first if it is not cached), packed with the live view."""
    from selfhost.platform.slugs.packaging import build_slug

    recipe = find_recipe(compiler or s.default_compiler, s.recipe_dirs)
    engine = make_engine(s, ui)
    with ui.live():
        return build_slug(s, recipe, engine, ui, **options)


# --------------------------------------------------------------------------- the API


def client_for(s: Settings, ui: UI, api: str | None) -> tuple[PlatformClient, bool]:
    """A client for --api / selfhost.api_url, or for the local daemon (started on demand).

    The bool is True for the local platform, where a first release creates the app.
    """
    from selfhost.platform.client import PlatformClient, token_for
    from selfhost.platform.paths import PlatformPaths

    paths = PlatformPaths(s.platform)
    url = api or s.api_url
    if url:
        return PlatformClient(url, token_for(url, paths.token, s.api_token)), False
    info, started = start_daemon(s)
    if started:
        ui.info(f"started the platform daemon (pid {info.pid}) at {info.url}")
    return PlatformClient(info.url, paths.ensure_token()), True


def start_daemon(s: Settings) -> tuple[Any, bool]:
    """The local daemon, started if needed with what it needs to run dynos."""
    from selfhost.platform import daemon
    from selfhost.platform.paths import PlatformPaths
    from selfhost.platform.runtime.dynos import DynoSettings

    dynos = DynoSettings.from_settings(s)
    started = daemon.start(
        PlatformPaths(s.platform),
        port=s.platform_port,
        stack=s.suite,
        max_blob_bytes=s.slug_max_bytes,
        dynos=dynos,
        queue=s.queue_url,
    )
    start_router(s)  # the platform's data plane comes with it
    return started


def start_router(s: Settings) -> tuple[Any, bool]:
    """The platform's router, started if needed (a process of its own)."""
    from selfhost.platform.paths import PlatformPaths
    from selfhost.platform.router import service

    return service.start(
        PlatformPaths(s.platform),
        port=s.router_port,
        options=(
            "--request-timeout",
            f"{s.router_timeout:g}",
            "--workers",
            str(s.router_workers),
        ),
    )


API_HELP = "a Heroku-compatible API URL instead of the local platform (token: HEROKU_API_KEY)"


@task(
    help={
        **SLUG_HELP,
        "app": "the app to release to (created on the local platform if it does not exist)",
        "api": API_HELP,
        "slug": "release this slug file (built elsewhere) instead of building one",
        "json": "print the release as JSON",
    }
)
def release(
    c: Context,
    app: str,
    api: str | None = None,
    compiler: str | None = None,
    app_dir: str | None = None,
    slug: str | None = None,
    strict: bool = False,
    engine: str | None = None,
    json: bool = False,
) -> None:
    """Build the slug (or take --slug), upload it, verify it and release it."""
    from selfhost.platform.slugs.slug import slug_facts

    s = settings(c, engine=engine)
    ui = make_ui(s, json=json)
    built = None
    if slug:
        if app_dir or compiler:
            raise UsageError(
                "--slug releases a slug as it is: it takes no --app-dir or --compiler",
                hint="build it with invoke slug, or leave --slug out",
            )
        path = Path(slug)
        checksum, size, process_types = slug_facts(path)
        commit, description = None, f"slug {path.name}"
    else:
        built = _build_slug(
            s, ui, compiler, strict=strict, app_dir=Path(app_dir) if app_dir else None
        )
        final = built.bootstrap.stages[-1]
        recipe = built.bootstrap.recipe
        path, checksum, size = built.info.path, built.info.checksum, built.info.size
        process_types = built.info.process_types
        commit, description = (
            final.input_hash[:40],
            f"{recipe.name} {recipe.version} stage{final.stage}",
        )
    client, local = client_for(s, ui, api)
    with ui.step(f"release {app}") as step:
        result = client.release_slug(
            app,
            path,
            checksum=checksum,
            size=size,
            process_types=process_types,
            stack=(built.bootstrap.recipe.suite if built else None) or s.suite if local else None,
            commit=commit,
            description=description,
            create_app=local,
        )
        step.note = f"v{result.version}"
    if built is not None and local:
        with ui.step("stages to the platform's store") as step:
            pushed = push_stages(client, app, built.bootstrap)
            step.note = f"{pushed} stored"
    if json:
        ui.emit_json({**result.to_json(), "process_types": process_types})
        return
    if result.app_created:
        ui.info(f"created app {app} (first release)")
    ui.info(
        f"released v{result.version} of {app}: slug {result.slug_id} ({checksum}, {size} bytes)"
    )


def push_stages(client: PlatformClient, app: str, outcome: Any) -> int:
    """Store the bootstrap's stages in the platform's stage store (for the app), so that
    its compile workers' stage jobs with the same inputs are cache hits."""
    import tempfile

    from selfhost.platform.client import ApiRequestError
    from selfhost.platform.slugs.slug import tar_tree

    pushed = 0
    for stage in outcome.stages:
        try:
            client.request("GET", f"/stages/{stage.input_hash}?app={app}")
            continue  # stored already
        except ApiRequestError as exc:
            if exc.status != 404:
                raise
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "stage.tar.gz"
            tar_tree(stage.entry / "tree", archive)
            client.put_file(
                f"/stages/{stage.input_hash}",
                archive,
                {
                    "app": app,
                    "tree_digest": stage.manifest.tree_digest,
                    "files": len(stage.manifest.files),
                },
            )
        pushed += 1
    return pushed


@task(help={"app": "the app", "api": API_HELP, "json": "print the releases as JSON"})
def releases(c: Context, app: str, api: str | None = None, json: bool = False) -> None:
    """List an app's releases, newest last."""
    s = settings(c)
    ui = make_ui(s, json=json)
    items = client_for(s, ui, api)[0].releases(app)
    if json:
        ui.emit_json(items)
        return
    ui.table(
        f"releases of {app}",
        ["version", "description", "slug", "created", "current"],
        [
            (
                f"v{r['version']}",
                r["description"],
                (r["slug"] or {}).get("id", "-"),
                r["created_at"],
                "*" if r["current"] else "",
            )
            for r in items
        ],
    )


@task(
    positional=["version"],
    help={"app": "the app", "version": "the release to roll back to (vN or N)", "api": API_HELP},
)
def rollback(c: Context, app: str, version: str, api: str | None = None) -> None:
    """Roll back to an earlier release (as a new release with its code and config)."""
    s = settings(c)
    ui = make_ui(s)
    result = client_for(s, ui, api)[0].rollback(app, version)
    ui.info(f"v{result['version']} of {app}: {result['description']}")


@task(
    iterable=["set", "unset"],
    help={
        "app": "the app",
        "set": "K=V to set (repeatable); pairs after -- work too: -- K=V K2=V2",
        "unset": "a config var to remove (repeatable)",
        "api": API_HELP,
        "json": "print the config vars as JSON",
    },
)
def config(
    c: Context,
    app: str,
    set: list[str] | None = None,
    unset: list[str] | None = None,
    api: str | None = None,
    json: bool = False,
) -> None:
    """Show an app's config vars, or set and unset them (each change is a release)."""
    s = settings(c)
    ui = make_ui(s, json=json)
    changes: dict[str, str | None] = {}
    for pair in [*(set or []), *argv_after_dashdash()]:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{pair!r} is not K=V", hint="e.g. invoke config --app a -- K=V")
        changes[key] = value
    for key in unset or []:
        changes[key] = None
    client = client_for(s, ui, api)[0]
    result = client.update_config(app, changes) if changes else client.config(app)
    if json:
        ui.emit_json(result)
        return
    for key, value in sorted(result.items()):
        ui.info(f"{key}={value}")


# --------------------------------------------------------------------------- apps


@task(
    positional=["name"],
    help={
        "name": "the app's name (lowercase, digits, dashes)",
        "api": API_HELP,
        "json": "print the app as JSON",
    },
)
def apps_create(c: Context, name: str, api: str | None = None, json: bool = False) -> None:
    """Create an app."""
    s = settings(c)
    ui = make_ui(s, json=json)
    app = client_for(s, ui, api)[0].create_app(name, None if api or s.api_url else s.suite)
    if json:
        ui.emit_json(app)
    else:
        ui.info(f"created app {app['name']} ({app['id']}) on stack {app['stack']['name']}")


@task(help={"api": API_HELP, "json": "print the apps as JSON"})
def apps_list(c: Context, api: str | None = None, json: bool = False) -> None:
    """List the apps."""
    s = settings(c)
    ui = make_ui(s, json=json)
    items = client_for(s, ui, api)[0].apps()
    if json:
        ui.emit_json(items)
        return
    ui.table(
        "apps",
        ["name", "stack", "released", "id"],
        [(a["name"], a["stack"]["name"], a.get("released_at") or "-", a["id"]) for a in items],
    )


# --------------------------------------------------------------------------- the daemon


@task
def platform_up(c: Context) -> None:
    """Start the local platform daemon (API server) if it is not running."""
    from selfhost.platform.paths import PlatformPaths

    s = settings(c)
    ui = make_ui(s)
    paths = PlatformPaths(s.platform)
    info, started = start_daemon(s)
    ui.info(
        f"{'started' if started else 'already running:'} platform daemon pid {info.pid} "
        f"at {info.url} (state: {paths.root}, log: {paths.log})"
    )


@task
def platform_down(c: Context) -> None:
    """Stop the local platform daemon and its router."""
    from selfhost.platform import daemon
    from selfhost.platform.paths import PlatformPaths
    from selfhost.platform.router import service

    s = settings(c)
    ui = make_ui(s)
    info = daemon.stop(PlatformPaths(s.platform))
    ui.info(
        f"stopped platform daemon pid {info.pid}" if info else "the platform daemon was not running"
    )
    router = service.stop(PlatformPaths(s.platform))
    if router:
        ui.info(f"stopped the router pid {router.pid}")


@task
def router_up(c: Context) -> None:
    """Start the router for web dynos alone (platform.up starts it too); it serves
    http://APP.localhost:PORT/ from the routing table the daemon writes."""
    from selfhost.platform.paths import PlatformPaths

    s = settings(c)
    ui = make_ui(s)
    info, started = start_router(s)
    ui.info(
        f"{'started' if started else 'already running:'} router pid {info.pid}: "
        f"http://APP.localhost:{info.port}/ (log: {PlatformPaths(s.platform).router_log})"
    )


@task
def router_down(c: Context) -> None:
    """Stop the router (web dynos keep running; the daemon keeps the routing table)."""
    from selfhost.platform.paths import PlatformPaths
    from selfhost.platform.router import service

    s = settings(c)
    ui = make_ui(s)
    info = service.stop(PlatformPaths(s.platform))
    ui.info(f"stopped the router pid {info.pid}" if info else "the router was not running")


@task(help={"app": "the app whose URL to print"})
def open_(c: Context, app: str) -> None:
    """Print the app's URL on the router (http://APP.localhost:PORT/)."""
    from selfhost.platform.paths import PlatformPaths
    from selfhost.platform.router import service

    s = settings(c)
    ui = make_ui(s)
    client_for(s, ui, None)[0].app(app)  # 404 for an unknown app
    info = service.running(PlatformPaths(s.platform))
    if info is None:
        raise PlatformError(
            "the router is not running", hint="start it with `invoke router.up` (or platform.up)"
        )
    print(info.app_url(app))


@task(help={"json": "print the status as JSON"})
def platform_status(c: Context, json: bool = False) -> None:
    """Show whether the platform daemon runs, where, and what it holds."""
    from selfhost.platform import daemon
    from selfhost.platform.paths import PlatformPaths
    from selfhost.platform.store.db import Store

    s = settings(c)
    ui = make_ui(s, json=json)
    paths = PlatformPaths(s.platform)
    info = daemon.running(paths)
    apps = Store(paths).apps() if paths.db.exists() else []
    status = {
        "running": info is not None,
        "pid": info.pid if info else None,
        "url": info.url if info else None,
        "state": str(paths.root),
        "log": str(paths.log),
        "apps": len(apps),
        "uptime_seconds": round(time.time() - info.started, 1) if info else None,
    }
    if json:
        ui.emit_json(status)
    elif info:
        ui.info(
            f"running: pid {info.pid} at {info.url}, up {status['uptime_seconds']}s, "
            f"{len(apps)} app(s); state {paths.root}"
        )
    else:
        ui.info(f"not running (state {paths.root}); start it with `invoke platform.up`")


# --------------------------------------------------------------------------- dynos


@task(
    iterable=["env"],
    help={
        "app": "the app whose current release runs",
        "size": "dyno size (basic, standard-1x, standard-2x, performance-m, performance-l)",
        "env": "K=V added to the dyno's environment (repeatable)",
        "ttl": "seconds after which the dyno is stopped",
        "detached": "return at once; the output goes to the app's log (invoke logs)",
        "engine": "run it with bwrap (default) or docker",
        "api": API_HELP,
    },
)
def run(
    c: Context,
    app: str,
    size: str | None = None,
    env: list[str] | None = None,
    ttl: str | None = None,
    detached: bool = False,
    engine: str | None = None,
    api: str | None = None,
) -> None:
    """Run a one-off dyno: invoke run --app NAME -- COMMAND ARGS... (its exit code is ours)."""
    import sys

    from invoke import Exit

    s = settings(c)
    ui = make_ui(s, json=True)  # progress on stderr: stdout is the command's own
    argv = argv_after_dashdash()
    if not argv:
        raise UsageError(
            "no command to run",
            hint="put it after --, e.g. invoke run --app myapp -- bin/compile -v",
        )
    extra: dict[str, str] = {}
    for pair in env or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {pair!r} is not K=V")
        extra[key] = value
    if ttl is not None and (not ttl.isdigit() or not 0 < int(ttl) <= 86_400):
        raise UsageError(f"--ttl is {ttl!r}; expected 1 to 86400 seconds")
    if engine not in (None, "bwrap", "docker"):
        raise UsageError(f"--engine is {engine!r}; expected bwrap or docker")
    command = command_line(argv)
    client = client_for(s, ui, api)[0]
    body: dict[str, Any] = {
        "command": command,
        "attach": not detached,
        "type": "run",
        "env": extra,
        "size": size,
        "time_to_live": int(ttl) if ttl else None,
    }
    if engine:
        body["engine"] = engine
    dyno = client.create_dyno(app, {k: v for k, v in body.items() if v is not None})
    ui.info(f"Running `{command}` on {app}... up, {dyno['name']}")
    if detached:
        ui.info(f"its output goes to the app's log: invoke logs --app {app} --tail")
        return
    out = sys.stdout.buffer
    try:
        for chunk in client.stream(dyno["attach_http_url"]):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        ui.info(f"stopping {dyno['name']}...")
        client.stop_dyno(app, dyno["id"])
        raise Exit(code=130) from None
    final = _finished(client, app, dyno["id"])
    code = final.get("exit_code")
    if final.get("reason") and code:
        ui.warn(f"{dyno['name']}: {final['reason']}")
    if code:
        raise Exit(code=int(code))


def command_line(argv: list[str]) -> str:
    """The dyno's command line, as ``heroku run`` builds it: a single argument is already
    a shell line (``-- 'ls /app; cat Procfile'``), several words keep their exact argv."""
    import shlex

    return argv[0] if len(argv) == 1 else shlex.join(argv)


def _finished(client: PlatformClient, app: str, dyno_id: str) -> dict[str, Any]:
    """The dyno once it has ended (the attach stream closes just after)."""
    deadline = time.monotonic() + 10
    while True:
        info = client.dyno(app, dyno_id)
        if info["state"] not in ("starting", "up") or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


@task(
    help={
        "app": "the app",
        "json": "print the dynos as JSON",
        "api": API_HELP,
        "tree": "the process tree: PID, PPID, STATE and CMD, each child under its parent "
        "(with --json: the dynos and jobs in tree order, each with its depth)",
    }
)
def ps_list(
    c: Context, app: str, json: bool = False, api: str | None = None, tree: bool = False
) -> None:
    """List an app's dynos: name, type, state, since, command, and the job each worker
    runs (with its parent job); with --tree, as a process tree (dynos fork children
    with bin/fork)."""
    from selfhost.cli.jobs import describe

    s = settings(c)
    ui = make_ui(s, json=json)
    client = client_for(s, ui, api)[0]
    dynos = client.dynos(app)
    try:
        running = {
            j["worker"]["dyno"]: j for j in client.jobs(app, ("running",)) if j.get("worker")
        }
    except SelfhostError:  # an API without jobs (Heroku's)
        running = {}
    for d in dynos:
        job = running.get(d["id"])
        d["job"] = (
            {
                "id": job["id"],
                "kind": job["kind"],
                "parent": job["parent"],
                "progress": job["progress"],
            }
            if job
            else None
        )
    routing = routing_state(s, app) if api is None else {}
    for d in dynos:
        if d["type"] == "web":
            d["routing"] = routing.get(d["id"], "no router" if not routing else "not routed")
    if tree:
        try:  # compile jobs are in the tree too: a bootstrap above its stage jobs
            jobs = client.jobs(app, ("queued", "running"))
        except SelfhostError:  # an API without jobs (Heroku's)
            jobs = []
        names = {d["id"]: d["name"] for d in dynos}
        ordered = process_tree(dynos + [job_node(j, names) for j in jobs])
    if json:
        ui.emit_json([{**d, "depth": depth} for d, depth in ordered] if tree else dynos)
        return

    def short(text: str, width: int = 32) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    def job_of(d: dict[str, Any]) -> str:
        job = running.get(d["id"])
        if job:
            return describe(job)
        return f"job {d['parent']}" if d.get("parent") else "-"

    if tree:
        ui.table(
            f"process tree of {app}",
            ["PID", "PPID", "STATE", "DYNO", "CMD"],
            [
                (
                    d.get("pid", 0),
                    d.get("ppid", 0),
                    d["state"]
                    if d.get("exit_code") is None
                    else f"{d['state']} ({d['exit_code']})",
                    d["name"],
                    "  " * depth
                    + short(d["command"], 60 - 2 * depth)
                    + (f"  [{job_of(d)}]" if "job" in d and job_of(d) != "-" else ""),
                )
                for d, depth in ordered
            ],
        )
        return
    ui.table(
        f"dynos of {app}",
        ["dyno", "type", "state", "port", "routing", "since", "command", "job", "restarts", "exit"],
        [
            (
                d["name"],
                d["type"],
                d["state"],
                d.get("port") or "",
                d.get("routing", ""),
                d["updated_at"][11:19],
                short(d["command"], 28),
                job_of(d),
                d.get("restarts", 0),
                "" if d.get("exit_code") is None else d["exit_code"],
            )
            for d in dynos
        ],
    )


def job_node(job: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """A compile job as a node of the process tree: ``job N`` under its parent job (a
    bootstrap's stage jobs under the bootstrap), with the worker dyno that runs it."""
    worker = (job.get("worker") or {}).get("dyno")
    what = job["kind"] + (f" {job['params'].get('stage')}" if job["kind"] == "stage" else "")
    return {
        "id": f"job:{job['id']}",
        "pid": f"job {job['id']}",
        "ppid": f"job {job['parent']}" if job.get("parent") else "-",
        "parent_dyno": f"job:{job['parent']}" if job.get("parent") else None,
        "type": "job",
        "state": job["state"],
        "name": names.get(worker, "-") if worker else "-",
        "command": f"{what}: {job.get('progress') or ''}".rstrip(": "),
    }


def process_tree(dynos: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """The dynos in tree order with their depth: each after its parent, siblings by PID
    (jobs after dynos); a dyno whose parent is not listed (it ended) is a root."""
    by_id = {d["id"]: d for d in dynos}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for d in dynos:
        parent = d.get("parent_dyno")
        children.setdefault(parent if parent in by_id else None, []).append(d)
    out: list[tuple[dict[str, Any], int]] = []

    def walk(parent: str | None, depth: int) -> None:
        for d in sorted(children.get(parent, []), key=_tree_order):
            out.append((d, depth))
            walk(d["id"], depth + 1)

    walk(None, 0)
    return out


def _tree_order(node: dict[str, Any]) -> tuple[int, int, str]:
    pid = node.get("pid", 0)
    if isinstance(pid, int):
        return (0, pid, "")
    number = str(pid).rpartition(" ")[2]
    return (1, int(number) if number.isdigit() else 0, str(pid))


def routing_state(s: Settings, app: str) -> dict[str, str]:
    """Each web dyno's state on the local router, by dyno id: ``routable (N in
    flight)``, or ``out`` (it has not bound $PORT, or it is frozen or dead)."""
    from selfhost.platform.paths import PlatformPaths
    from selfhost.platform.router import service

    info = service.running(PlatformPaths(s.platform))
    state = service.state(info) if info else None
    if not state or app not in state["apps"]:
        return {}
    return {
        d["id"]: f"routable ({d.get('in_flight', d['outstanding'])} in flight)"
        if d["routable"]
        else "out"
        for d in state["apps"][app]["dynos"]
    }


@task(
    positional=["dyno"],
    help={"app": "the app", "dyno": "the dyno's name (worker.1) or id", "api": API_HELP},
)
def ps_stop(c: Context, app: str, dyno: str, api: str | None = None) -> None:
    """Stop a dyno (SIGTERM, then SIGKILL after the grace period)."""
    s = settings(c)
    ui = make_ui(s)
    stopped = client_for(s, ui, api)[0].stop_dyno(app, dyno)
    ui.info(f"stopping {stopped['name']} of {app}")


@task(
    iterable=["set"],
    help={
        "app": "the app",
        "set": "TYPE=N or TYPE=N:SIZE (repeatable; bare TYPE=N words work too)",
        "api": API_HELP,
        "json": "print the formation as JSON",
    },
)
def scale(
    c: Context, app: str, set: list[str] | None = None, api: str | None = None, json: bool = False
) -> None:
    """Scale process types: invoke scale --app NAME worker=3 web=1."""
    s = settings(c)
    ui = make_ui(s, json=json)
    updates = []
    for pair in [*(set or []), *argv_after_dashdash()]:
        kind, sep, value = pair.partition("=")
        quantity, _, size = value.partition(":")
        if not sep or not kind or not quantity.isdigit():
            raise UsageError(f"{pair!r} is not TYPE=N or TYPE=N:SIZE", hint="e.g. worker=3")
        update: dict[str, Any] = {"type": kind, "quantity": int(quantity)}
        if size:
            update["size"] = size
        updates.append(update)
    client = client_for(s, ui, api)[0]
    formation = client.update_formation(app, updates) if updates else client.formation(app)
    if json:
        ui.emit_json(formation)
        return
    for f in formation:
        ui.info(f"{f['type']}={f['quantity']}:{f['size']}  ({f['command']})")


@task(
    help={
        "app": "the app",
        "tail": "keep following the log",
        "num": "lines to show first",
        "api": API_HELP,
    }
)
def logs(c: Context, app: str, tail: bool = False, num: int = 100, api: str | None = None) -> None:
    """Show the app's log (dyno output and platform events); --tail follows it."""
    import sys

    s = settings(c)
    ui = make_ui(s, json=True)
    client = client_for(s, ui, api)[0]
    url = client.log_session(app, tail=tail, lines=num)
    out = sys.stdout.buffer
    try:
        for chunk in client.stream(url):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        return


@task(
    help={
        "app": "the app",
        "slug": "the slug's id (default: the current release's slug)",
        "output": "where to write the archive (default: ./<slug id>.tar.gz)",
        "api": API_HELP,
        "json": "print the slug's record as JSON",
    }
)
def slugs_download(
    c: Context,
    app: str,
    slug: str | None = None,
    output: str | None = None,
    api: str | None = None,
    json: bool = False,
) -> None:
    """Download a released slug's archive, checked against its checksum."""
    s = settings(c)
    ui = make_ui(s, json=json)
    client = client_for(s, ui, api)[0]
    target = Path(output) if output else None
    with ui.step("download"):
        if target is None:  # named after the slug: ask for it first
            slug = slug or client.current_slug_id(app)
            target = Path(f"{slug}.tar.gz")
        found = client.download_slug(app, slug, target.resolve())
    if json:
        ui.emit_json({**found, "path": str(target.resolve())})
    else:
        ui.info(f"slug {found['id']} of {app} ({found['checksum']}) -> {target}")


@task(
    help={
        "app": "the app whose stage store holds it",
        "key": "the stage's input hash (64 hex digits; `bootstrap --json` prints it)",
        "output": "a new directory for the tree (default: ./stage-<first 12 digits>)",
        "api": API_HELP,
        "json": "print the stage's record as JSON",
    }
)
def stages_download(
    c: Context,
    app: str,
    key: str,
    output: str | None = None,
    api: str | None = None,
    json: bool = False,
) -> None:
    """Download a stage tree from an app's stage store, checked against its digest."""
    import re

    if not re.fullmatch(r"[0-9a-f]{64}", key):
        raise UsageError(f"--key must be 64 hex digits (a stage's input hash), not {key!r}")
    s = settings(c)
    ui = make_ui(s, json=json)
    target = Path(output or f"stage-{key[:12]}").resolve()
    with ui.step("download"):
        found = client_for(s, ui, api)[0].download_stage(app, key, target)
    if json:
        ui.emit_json({**found, "path": str(target)})
    else:
        ui.info(
            f"stage {key[:12]} of {app} ({found['files']} files, tree digest "
            f"{found['tree_digest'][:16]}) -> {target}"
        )
