"""Compile jobs: the platform's record of every job, and the daemon's side of the queue.

A job is a row of the ``jobs`` table (platform.db); the queue (see taskqueue.py) only
carries ``(job_id, attempt)`` to the worker dynos. Kinds:

=============  ============================================================================
kind           what a worker does
=============  ============================================================================
self-rebuild   build the compiler with the slug's own final-stage compiler as the builder;
               ``result.identical`` says whether the result equals the slug's compiler
stage          build stage ``k`` with a given builder (``stage0``, ``slug`` or the input
               hash of a stored stage); content-addressed: a stored input hash is a hit
app-compile    fetch an app (git URL, tarball URL or directory, with a Procfile), compile
               it with the slug's compiler, pack a slug and release it to ``target``
bootstrap      no work of its own: the daemon fans it out into stage jobs 1..N, each
               built by the previous one, and reports the fixpoint
=============  ============================================================================

States: ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``; a running
job goes back to ``queued`` (attempt + 1) when its worker stops (SIGTERM), dies (its
dyno exits, or no heartbeat for LEASE_SECONDS) or the platform restarts.

Exactly once: a worker must *claim* the job's current attempt (the claim hands out a
secret lease); heartbeats, progress and the final report need that lease, and a re-queue
replaces it, so a late report from a lost attempt is refused (409) and never recorded.
Duplicate submissions (same kind, parameters and slug while a job is queued or running)
return the existing job.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfhost import archive
from selfhost.archive import ArchiveError
from selfhost.errors import SlugError
from selfhost.hashing import digest_json, scan_tree, tree_digest
from selfhost.platform.errors import Refused, invalid, not_found
from selfhost.platform.jobs.queue import DYNO_QUEUE_DIR, QUEUE_FILE, Queue, QueueUrlError
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.runtime.dynos import SIZES, Dyno, DynoManager, Extras
from selfhost.platform.slugs.slug import check_slug
from selfhost.platform.store.db import Store, now
from selfhost.stages.engine import Mount, Process, Sandbox
from selfhost.stages.security import hand_over

KINDS = ("self-rebuild", "stage", "app-compile", "bootstrap")
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
LEASE_SECONDS = 15.0  # a running job whose worker sent no heartbeat for this long is lost
DEFAULT_TIMEOUT = 1800.0
MAX_TIMEOUT = 86_400.0
QUEUE_CONFIG_VAR = "SELFHOST_QUEUE_URL"
DISTCC_CONFIG_VAR = "SELFHOST_DISTCC"
MAX_LOG_LINES = 200  # lines accepted per heartbeat


#: Job rows with their app's name (every read of jobs goes through it).
JOB_ROWS = "SELECT jobs.*, apps.name AS app_name FROM jobs JOIN apps ON apps.id = jobs.app_id"


def conflict(message: str) -> Refused:
    return Refused("conflict", message)


class JobStore:
    """Data access for jobs and stored stages; every method is one transaction."""

    def __init__(self, store: Store):
        self.store = store
        self.logs = store.paths.job_logs
        self.logs.mkdir(parents=True, exist_ok=True)

    def log_path(self, job_id: int) -> Path:
        return self.logs / f"{job_id}.log"

    def log(self, job_id: int, lines: list[str], source: str = "platform") -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        with open(self.log_path(job_id), "a", encoding="utf-8") as f:
            f.writelines(f"{stamp} {source}: {line}\n" for line in lines)

    def log_tail(self, job_id: int, lines: int) -> list[str]:
        try:
            text = self.log_path(job_id).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return text.splitlines()[-lines:] if lines else []

    # ------------------------------------------------------------------ reads
    def _row(self, db: sqlite3.Connection, job_id: int | str) -> sqlite3.Row:
        try:
            ident = int(job_id)
        except (TypeError, ValueError):
            raise not_found("job") from None
        row = db.execute(f"{JOB_ROWS} WHERE jobs.id = ?", (ident,)).fetchone()
        if row is None:
            raise not_found("job")
        return row

    def _json(self, db: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
        children = [
            r[0]
            for r in db.execute("SELECT id FROM jobs WHERE parent_id = ? ORDER BY id", (row["id"],))
        ]
        return {
            "id": row["id"],
            "app": {"id": row["app_id"], "name": row["app_name"]},
            "kind": row["kind"],
            "state": row["state"],
            "params": json.loads(row["params"]),
            "key": row["key"],
            "parent": row["parent_id"],
            "children": children,
            "attempt": row["attempt"],
            "worker": (
                {"name": row["worker"], "dyno": row["worker_dyno"]} if row["worker"] else None
            ),
            "heartbeat": row["heartbeat"],
            "timeout": row["timeout"],
            "cancel_requested": bool(row["cancel_requested"]),
            "progress": row["progress"],
            "result": json.loads(row["result"]) if row["result"] else None,
            "error": row["error"],
            "created": row["created"],
            "started": row["started"],
            "finished": row["finished"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    def get(self, job_id: int | str) -> dict[str, Any]:
        with self.store.read() as db:
            return self._json(db, self._row(db, job_id))

    def find(
        self, app: str | None = None, *, limit: int = 100, states: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        query = f"{JOB_ROWS} WHERE 1"
        args: list[Any] = []
        if app:
            query += " AND (apps.name = ? OR apps.id = ?)"
            args += [app, app]
        if states:
            query += f" AND jobs.state IN ({','.join('?' * len(states))})"
            args += list(states)
        query += " ORDER BY jobs.id DESC LIMIT ?"
        args.append(limit)
        with self.store.read() as db:
            return [self._json(db, r) for r in db.execute(query, args)]

    # ------------------------------------------------------------------ writes
    def create(
        self,
        app: str,
        kind: str,
        params: dict[str, Any],
        key: str,
        *,
        timeout: float,
        parent: int | None = None,
        state: str = "queued",
    ) -> tuple[dict[str, Any], bool]:
        """Insert a job, unless one with the same key is queued or running: then that
        one is returned (and False)."""
        with self.store.tx() as db:
            app_row = self.store._app(db, app)
            same = db.execute(
                "SELECT id FROM jobs WHERE app_id = ? AND key = ? AND state IN "
                "('queued', 'running') ORDER BY id LIMIT 1",
                (app_row["id"], key),
            ).fetchone()
            if same is not None:
                return self._json(db, self._row(db, same[0])), False
            ts = now()
            cur = db.execute(
                "INSERT INTO jobs (app_id, kind, params, key, parent_id, state, timeout, "
                "created, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    app_row["id"],
                    kind,
                    json.dumps(params, sort_keys=True),
                    key,
                    parent,
                    state,
                    timeout,
                    time.time(),
                    ts,
                    ts,
                ),
            )
            assert cur.lastrowid is not None  # an INSERT into a rowid table
            return self._json(db, self._row(db, cur.lastrowid)), True

    def claim(
        self, job_id: int | str, attempt: int, worker: str, dyno: str
    ) -> tuple[dict[str, Any], str]:
        """Give the current attempt of a queued job to a worker; 409 otherwise."""
        with self.store.tx() as db:
            row = self._row(db, job_id)
            if row["state"] != "queued" or row["attempt"] != attempt:
                raise conflict(
                    f"job {row['id']} attempt {attempt} cannot be claimed: the job "
                    f"is {row['state']} at attempt {row['attempt']}"
                )
            lease = secrets.token_urlsafe(16)
            db.execute(
                "UPDATE jobs SET state = 'running', lease = ?, worker = ?, "
                "worker_dyno = ?, heartbeat = ?, started = COALESCE(started, ?), "
                "updated_at = ? WHERE id = ?",
                (lease, worker, dyno, time.time(), time.time(), now(), row["id"]),
            )
            return self._json(db, self._row(db, row["id"])), lease

    def _leased(self, db: sqlite3.Connection, job_id: int | str, lease: str) -> sqlite3.Row:
        row = self._row(db, job_id)
        if (
            row["state"] != "running"
            or not row["lease"]
            or not secrets.compare_digest(str(row["lease"]), str(lease))
        ):
            raise conflict(
                f"job {row['id']}: this worker no longer holds the job (it is "
                f"{row['state']}, attempt {row['attempt']})"
            )
        return row

    def check_lease(self, job_id: int | str, lease: str) -> sqlite3.Row:
        """The job's row if ``lease`` holds it (409 otherwise)."""
        with self.store.read() as db:
            return self._leased(db, job_id, lease)

    def heartbeat(self, job_id: int | str, lease: str, progress: str | None) -> dict[str, Any]:
        with self.store.tx() as db:
            row = self._leased(db, job_id, lease)
            db.execute(
                "UPDATE jobs SET heartbeat = ?, progress = COALESCE(?, progress), "
                "updated_at = ? WHERE id = ?",
                (time.time(), progress, now(), row["id"]),
            )
            return {"cancel": bool(row["cancel_requested"])}

    def finish(
        self,
        job_id: int | str,
        lease: str | None,
        state: str,
        result: Any = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        """Record the outcome once (with the lease; None for the platform's own jobs)."""
        if state not in FINAL:
            raise invalid(f"state must be one of {', '.join(FINAL)}")
        with self.store.tx() as db:
            row = self._leased(db, job_id, lease) if lease is not None else self._row(db, job_id)
            if row["state"] in FINAL:
                raise conflict(f"job {row['id']} is already {row['state']}")
            db.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, lease = NULL, "
                "finished = ?, progress = ?, updated_at = ? WHERE id = ?",
                (
                    state,
                    json.dumps(result) if result is not None else None,
                    error,
                    time.time(),
                    state,
                    now(),
                    row["id"],
                ),
            )
            return self._json(db, self._row(db, row["id"]))

    def requeue(self, job_id: int | str, lease: str | None) -> dict[str, Any] | None:
        """Back to the queue as the next attempt (or cancelled, if that was asked for).
        With a lease, only the holder may give the job back; None: the platform takes
        it back (its worker is gone). Returns None when there was nothing to do."""
        with self.store.tx() as db:
            row = self._leased(db, job_id, lease) if lease is not None else self._row(db, job_id)
            if row["state"] != "running":
                return None
            if row["cancel_requested"]:
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', lease = NULL, finished = ?, "
                    "error = 'cancelled', updated_at = ? WHERE id = ?",
                    (time.time(), now(), row["id"]),
                )
            else:
                db.execute(
                    "UPDATE jobs SET state = 'queued', attempt = attempt + 1, "
                    "lease = NULL, worker = NULL, worker_dyno = NULL, heartbeat = NULL, "
                    "progress = 'queued again', updated_at = ? WHERE id = ?",
                    (now(), row["id"]),
                )
            return self._json(db, self._row(db, row["id"]))

    def request_cancel(self, job_id: int | str) -> dict[str, Any]:
        """Queued: cancelled now. Running: flagged; the worker kills it at its next
        heartbeat. Final: unchanged."""
        with self.store.tx() as db:
            row = self._row(db, job_id)
            if row["state"] == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished = ?, error = "
                    "'cancelled', progress = 'cancelled', updated_at = ? WHERE id = ?",
                    (time.time(), now(), row["id"]),
                )
            elif row["state"] == "running":
                db.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?",
                    (now(), row["id"]),
                )
            return self._json(db, self._row(db, row["id"]))

    def _running(self, condition: str, value: Any) -> list[dict[str, Any]]:
        with self.store.read() as db:
            rows = db.execute(
                f"{JOB_ROWS} WHERE jobs.state = 'running' AND {condition}", (value,)
            ).fetchall()
            return [self._json(db, r) for r in rows]

    def lost(self, lease_seconds: float) -> list[dict[str, Any]]:
        """Running jobs whose worker has not been heard of for ``lease_seconds``."""
        return self._running(
            "jobs.lease IS NOT NULL AND jobs.heartbeat < ?", time.time() - lease_seconds
        )

    def held_by(self, dyno_id: str) -> list[dict[str, Any]]:
        """Running jobs claimed by a dyno (by its id)."""
        return self._running("jobs.worker_dyno = ?", dyno_id)

    # ------------------------------------------------------------------ stages
    def stage(self, input_hash: str, app_id: str | None = None) -> dict[str, Any] | None:
        """An app's stored stage (``app_id``), or with None any app's (the platform's
        own view: a stage built by a job first)."""
        with self.store.read() as db:
            if app_id is not None:
                row = db.execute(
                    "SELECT * FROM app_stages WHERE app_id = ? AND input_hash = ?",
                    (app_id, input_hash),
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT * FROM app_stages WHERE input_hash = ? "
                    "ORDER BY job_id IS NULL, created_at LIMIT 1",
                    (input_hash,),
                ).fetchone()
            return dict(row) if row else None

    def add_stage(
        self,
        app: str,
        input_hash: str,
        tree_digest: str,
        files: int,
        size: int,
        blob: str,
        job_id: int | None,
    ) -> dict[str, Any]:
        with self.store.tx() as db:
            app_row = self.store._app(db, app)
            db.execute(
                "INSERT OR IGNORE INTO app_stages (app_id, input_hash, tree_digest, files, "
                "size, blob_sha256, job_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (app_row["id"], input_hash, tree_digest, files, size, blob, job_id, now()),
            )
            return dict(
                db.execute(
                    "SELECT * FROM app_stages WHERE app_id = ? AND input_hash = ?",
                    (app_row["id"], input_hash),
                ).fetchone()
            )


def job_key(kind: str, params: dict[str, Any], slug: str) -> str:
    """What makes two submissions the same job: kind, parameters and the slug running it."""
    return digest_json({"kind": kind, "params": params, "slug": slug})


def _timeout(body: dict[str, Any]) -> float:
    value = body.get("timeout", DEFAULT_TIMEOUT)
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 < value <= MAX_TIMEOUT
    ):
        raise invalid(f"timeout must be a number of seconds from 1 to {MAX_TIMEOUT:g}")
    return float(value)


def check_params(kind: str, params: Any) -> dict[str, Any]:
    """Validate a job's parameters; the error names the field and what is expected."""
    if kind not in KINDS:
        raise invalid(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    if not isinstance(params, dict):
        raise invalid("params must be an object")
    out: dict[str, Any] = {}
    allowed = {
        "self-rebuild": {"test", "distcc", "jobs"},
        "stage": {"stage", "builder", "test", "distcc", "force", "jobs"},
        "bootstrap": {"stages", "test", "distcc", "force", "jobs"},
        "app-compile": {"source", "target", "ref", "distcc", "jobs"},
    }[kind]
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise invalid(
            f"{kind} jobs take {', '.join(sorted(allowed))}; unknown: {', '.join(unknown)}"
        )
    for flag in ("test", "distcc", "force"):
        if flag in params:
            if not isinstance(params[flag], bool):
                raise invalid(f"params.{flag} must be true or false")
            out[flag] = params[flag]
    if "jobs" in params:
        jobs = params["jobs"]
        if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= 256:
            raise invalid(
                "params.jobs must be a whole number from 1 to 256 (make -j); "
                "leave it out to use every slot the worker and its distcc hosts have"
            )
        out["jobs"] = jobs
    if kind == "stage":
        stage = params.get("stage", 1)
        if not isinstance(stage, int) or isinstance(stage, bool) or not 1 <= stage <= 9:
            raise invalid("params.stage must be a whole number from 1 to 9")
        builder = params.get("builder", "stage0" if stage == 1 else None)
        if not isinstance(builder, str) or not (
            builder in ("stage0", "slug")
            or (len(builder) == 64 and all(c in "0123456789abcdef" for c in builder))
        ):
            raise invalid(
                "params.builder must be 'stage0' (the recipe's stage0 compiler), "
                "'slug' (the slug's compiler) or the 64-hex input hash of a stored "
                "stage (see a stage job's result)"
            )
        out.update(stage=stage, builder=builder)
    if kind == "bootstrap":
        stages = params.get("stages", 3)
        if not isinstance(stages, int) or isinstance(stages, bool) or not 2 <= stages <= 9:
            raise invalid("params.stages must be a whole number from 2 to 9")
        out["stages"] = stages
    if kind == "app-compile":
        source = params.get("source")
        if not isinstance(source, str) or not source:
            raise invalid(
                "params.source is required: a git URL, a tarball URL or a directory with a Procfile"
            )
        target = params.get("target")
        if not isinstance(target, str) or not target:
            raise invalid("params.target is required: the app to release the slug to")
        out.update(source=source, target=target)
        if params.get("ref") is not None:
            if not isinstance(params["ref"], str):
                raise invalid("params.ref must be a string (a git branch, tag or commit)")
            out["ref"] = params["ref"]
    return out


class JobService:
    """The daemon's side: submission, dispatch, leases, cancel, fan-out, distcc hosts."""

    def __init__(
        self,
        store: Store,
        paths: PlatformPaths,
        manager: DynoManager,
        *,
        api_url: Callable[[], str],
        default_queue: str | None = None,
        queues: tuple[str, ...] = (),
        log: Callable[[str], None] = lambda _: None,
        lease_seconds: float = LEASE_SECONDS,
        on_release: Callable[[str], None] | None = None,
    ):
        self.store = store
        self.paths = paths
        self.jobs = JobStore(store)
        self.manager = manager
        self.api_url = api_url
        self.queue_dir = paths.queues
        #: The platform's queue for every app (selfhost.queue_url); None: each app has an
        #: SQLite queue of its own, queue/<app id>/jobs.db, owned by its sandbox id.
        self.default_queue = default_queue
        self.queues = tuple(q for q in queues if q)
        self.queue = Queue()
        self.log = log
        self.lease_seconds = lease_seconds
        self.sources = paths.sources
        self.stage_blobs = paths.stages
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.unsent: set[int] = set()  # queued jobs the queue could not take yet
        self.sandboxes: dict[int, Process] = {}  # running job sandboxes, by job id
        self.stopped_sandboxes: dict[int, str] = {}  # why the platform killed one
        self.on_release = on_release  # after it releases an app (the supervisor's poke)

    # ------------------------------------------------------------------ queue
    def queue_url(self, app: str) -> str:
        """The app's queue, always one the platform owns: the app's ``SELFHOST_QUEUE_URL``
        config var may name one of the platform's queues (``selfhost.queue_url`` and
        ``selfhost.queues``) or ``sqlite`` (its own SQLite queue); unset, the platform's
        default. Anything else is refused: no config var reaches another queue, and none
        makes the platform mount a host path."""
        chosen = self.store.config(app).get(QUEUE_CONFIG_VAR, "").strip()
        owned = [q for q in (self.default_queue, *self.queues) if q]
        if chosen in owned:
            return chosen
        if chosen and chosen != "sqlite":
            raise invalid(
                f"the {QUEUE_CONFIG_VAR} config var of {app} is {chosen!r}, which is not one "
                "of the platform's queues: set it to 'sqlite' (the app's own queue)"
                + (f" or one of {', '.join(owned)}" if owned else "")
                + ", or unset it (apps can only use queues the platform owns)"
            )
        if self.default_queue and not chosen:
            return self.default_queue
        return f"sqlite://{self.app_queue_dir(app) / QUEUE_FILE}"

    def app_queue_dir(self, app: str) -> Path:
        """The directory of an app's own SQLite queue, owned by its sandbox id (SQLite,
        running as root in the daemon, gives its journal files the database's owner)."""
        app_id = self.store.app(app)["id"]
        directory = self.queue_dir / app_id
        db = directory / QUEUE_FILE
        if not db.exists():
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            db.touch(mode=0o600)
            hand_over(self.manager.security, self.manager.host_id(app), directory)
        return directory

    def dyno_queue_url(self, app: str) -> tuple[str, Path | None]:
        """The queue URL as a worker dyno sees it, and the directory to mount for it
        (only the platform's own: the app's SQLite directory, a Redis socket's)."""
        url = self.queue_url(app)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "unix":  # the socket's directory, at the same path
            return url, Path(parts.path).parent
        if parts.scheme != "sqlite":
            return url, None
        path = Path(parts.path)
        return f"sqlite://{DYNO_QUEUE_DIR}/{path.name}", path.parent

    def _send(self, job: dict[str, Any]) -> None:
        app = job["app"]["name"]
        self.queue.enqueue(self.queue_url(app), app, job["id"], job["attempt"])
        self.jobs.log(job["id"], [f"queued (attempt {job['attempt']})"])

    def _enqueue(self, job: dict[str, Any]) -> None:
        """Queue a new job; if the queue cannot take it, the job fails with the reason."""
        try:
            self._send(job)
        except Exception as exc:
            self.jobs.finish(job["id"], None, "failed", error=f"not queued: {exc}")
            if isinstance(exc, Refused):
                raise
            url = self.queue_url(job["app"]["name"])
            if isinstance(exc, QueueUrlError):
                raise invalid(f"{exc}; fix the {QUEUE_CONFIG_VAR} config var") from None
            raise Refused(
                "queue_unavailable",
                f"The job queue ({url}) is not reachable: {exc}. Job {job['id']} "
                "was not queued (it is marked failed); submit it again when the "
                "queue is up.",
            ) from None

    def _resend(self, job: dict[str, Any]) -> None:
        """Queue a job again (re-queue, restart); if the queue is down, keep trying from
        the reaper until it is up."""
        try:
            self._send(job)
        except Exception as exc:
            with self.lock:
                if job["id"] not in self.unsent:
                    self.jobs.log(job["id"], [f"could not queue it again (retrying): {exc}"])
                self.unsent.add(job["id"])

    # ------------------------------------------------------------------ submit
    def submit(self, app: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        kind = body.get("kind")
        params = check_params(str(kind), body.get("params") or {})
        timeout = _timeout(body)
        self.queue_url(app)  # the app's queue must be the platform's before any job exists
        release = self.store.current_release(app)
        if release is None or release["slug"] is None:
            raise invalid(
                f"{app} has no release with a slug: jobs run on the released "
                "compiler slug (invoke release first)"
            )
        slug = self.store.slug(app, release["slug"]["id"])["checksum"]
        if (
            self.store.config(app).get(DISTCC_CONFIG_VAR) in ("1", "true")
            and "distcc" not in params
            and kind != "bootstrap"
        ):
            params["distcc"] = True
        if kind == "app-compile":
            params["source_blob"] = self._fetch_app(params)
        parent = body.get("parent")
        if parent is not None:
            self.jobs.get(parent)
        # A stage of one bootstrap is not a duplicate of the same stage of another.
        key = job_key(str(kind), params if parent is None else {**params, "parent": parent}, slug)
        if kind == "bootstrap":
            job, created = self.jobs.create(
                app, "bootstrap", params, key, timeout=timeout, parent=parent, state="running"
            )
            if created:
                self.jobs.log(
                    job["id"],
                    [f"bootstrap of {params['stages']} stages: fanning out into stage jobs"],
                )
                self._next_stage(job)
            return self.jobs.get(job["id"]), created
        job, created = self.jobs.create(app, str(kind), params, key, timeout=timeout, parent=parent)
        if created:
            self._enqueue(job)
        return job, created

    def _fetch_app(self, params: dict[str, Any]) -> str:
        """Fetch an app's source on the platform (it has git and the network; the stack
        need not), as a tarball blob the worker downloads. Returns its sha256."""
        from selfhost.platform.slugs.appsource import fetch_app_source

        self.sources.mkdir(parents=True, exist_ok=True)
        try:
            return fetch_app_source(params["source"], params.get("ref"), self.sources)
        except ValueError as exc:
            raise invalid(f"params.source: {exc}") from None

    def source_path(self, sha: str) -> Path:
        return self.sources / f"{sha}.tar.gz"

    # ------------------------------------------------------------------ fan-out
    def _next_stage(self, parent: dict[str, Any]) -> None:
        """Submit the next stage job of a bootstrap, or finish it."""
        params = parent["params"]
        done = [self.jobs.get(c) for c in parent["children"]]
        if done and done[-1]["state"] != "succeeded":
            last = done[-1]
            self.jobs.finish(
                parent["id"],
                None,
                "failed" if last["state"] == "failed" else "cancelled",
                error=f"stage job {last['id']} {last['state']}: {last['error']}",
            )
            return
        if len(done) == params["stages"]:
            self._finish_bootstrap(parent, done)
            return
        k = len(done) + 1
        builder = "stage0" if k == 1 else done[-1]["result"]["input_hash"]
        child_params = {"stage": k, "builder": builder, "test": params.get("test", True)}
        for name in ("distcc", "force", "jobs"):
            if params.get(name):
                child_params[name] = params[name]
        if parent["cancel_requested"]:
            self.jobs.finish(parent["id"], None, "cancelled", error="cancelled")
            return
        child, _ = self.submit(
            parent["app"]["name"],
            {
                "kind": "stage",
                "params": child_params,
                "parent": parent["id"],
                "timeout": parent["timeout"],
            },
        )
        self.jobs.log(parent["id"], [f"stage {k}: job {child['id']}"])
        if child["state"] in FINAL:  # an identical job had already finished
            self.on_finished(child)

    def _finish_bootstrap(self, parent: dict[str, Any], stages: list[dict[str, Any]]) -> None:
        digests = [s["result"]["tree_digest"] for s in stages]
        slug_digest = stages[-1]["result"].get("slug_tree_digest")
        result = {
            "fixpoint": digests[-1] == digests[-2],
            "identical": slug_digest is not None and digests[-1] == slug_digest,
            "stages": [
                {
                    "stage": i + 1,
                    "job": s["id"],
                    "input_hash": s["result"]["input_hash"],
                    "tree_digest": d,
                    "cache": s["result"].get("cache"),
                }
                for i, (s, d) in enumerate(zip(stages, digests, strict=True))
            ],
        }
        state = "succeeded" if result["fixpoint"] else "failed"
        self.jobs.log(
            parent["id"],
            [f"stage{len(stages) - 1} {'==' if result['fixpoint'] else '!='} stage{len(stages)}"],
        )
        self.jobs.finish(
            parent["id"],
            None,
            state,
            result=result,
            error=None
            if result["fixpoint"]
            else "no fixpoint: the last two stages differ (invoke diff-stages explains why)",
        )

    def on_finished(self, job: dict[str, Any]) -> None:
        if job["parent"] is not None:
            parent = self.jobs.get(job["parent"])
            if parent["kind"] == "bootstrap" and parent["state"] == "running":
                self._next_stage(parent)

    # ------------------------------------------------------------------ cancel
    def cancel(self, job_id: int | str) -> dict[str, Any]:
        job = self.jobs.request_cancel(job_id)
        self.jobs.log(job["id"], ["cancel requested"])
        self.kill_sandbox(job["id"], "cancelled")
        for child in job["children"]:
            self.jobs.request_cancel(child)
        if job["kind"] == "bootstrap" and job["state"] == "running":
            live = [c for c in job["children"] if self.jobs.get(c)["state"] in ACTIVE]
            if not live:
                self.jobs.finish(job["id"], None, "cancelled", error="cancelled")
        elif job["state"] == "cancelled":
            self.on_finished(job)
        return self.jobs.get(job["id"])

    # ------------------------------------------------------------------ lost workers
    def take_back(self, job: dict[str, Any], why: str) -> None:
        """A running job's worker is gone: queue the job again (or mark it cancelled)."""
        self.kill_sandbox(job["id"], "lost")
        again = self.jobs.requeue(job["id"], None)
        if again is None:
            return
        self.jobs.log(
            job["id"],
            [
                f"{why}; "
                + (
                    "cancelled"
                    if again["state"] == "cancelled"
                    else f"queued again as attempt {again['attempt']}"
                )
            ],
        )
        self.log(f"jobs: job {job['id']}: {why}")
        if again["state"] == "queued":
            self._resend(again)
        else:
            self.on_finished(again)

    def dyno_changed(self, dyno: Dyno) -> None:
        """Nothing to do while a dyno comes up or starts stopping."""

    def dyno_exited(self, dyno: Dyno) -> None:
        """Called when any dyno ends: its jobs go back to the queue at once."""
        for job in self.jobs.held_by(dyno.id):
            self.take_back(
                job, f"{dyno.name} exited ({dyno.reason or dyno.exit_code}) with the job running"
            )

    def reap(self) -> None:
        with self.lock:
            unsent, self.unsent = self.unsent, set()
        for job_id in sorted(unsent):
            job = self.jobs.get(job_id)
            if job["state"] == "queued":
                self._resend(job)
        for job in self.jobs.lost(self.lease_seconds):
            self.take_back(
                job, f"no heartbeat from {job['worker']['name']} for {self.lease_seconds:g}s"
            )

    def recover(self) -> None:
        """At daemon start: jobs that were running belong to dynos that died with the
        previous daemon; queued jobs are queued again (a lost message is harmless: the
        claim drops duplicates)."""
        for job in self.jobs.find(states=("running",), limit=10_000):
            if job["kind"] != "bootstrap":
                self.take_back(job, "the platform restarted")
        for job in self.jobs.find(states=("queued",), limit=10_000):
            self._resend(job)

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            try:
                self.reap()
            except Exception as exc:  # keep reaping whatever one job does
                self.log(f"jobs: reaper: {exc!r}")

    def start(self) -> threading.Thread:
        self.recover()
        thread = threading.Thread(target=self.run, daemon=True, name="job-reaper")
        thread.start()
        return thread

    def stop(self) -> None:
        self.stopped.set()

    # ------------------------------------------------------------------ dynos
    def dyno_environment(self, dyno: Dyno, config: dict[str, str]) -> Extras:
        """What a worker dyno needs besides what every dyno gets: its app's queue (and
        the port of a Redis queue on this machine's loopback)."""
        if dyno.type != "worker":
            return Extras()
        url, mount = self.dyno_queue_url(dyno.app)
        ports: tuple[int, ...] = ()
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("redis", "rediss") and parts.hostname in ("127.0.0.1", "localhost"):
            ports = (parts.port or 6379,)
        mounts = (
            []
            if mount is None
            else [(mount, DYNO_QUEUE_DIR if url.startswith("sqlite:") else str(mount))]
        )
        return Extras(env={"SELFHOST_QUEUE_URL": url}, mounts=mounts, host_ports=ports)

    def distcc_hosts(self, app: str) -> list[str]:
        """``127.0.0.1:PORT/LIMIT`` of the app's running distccd dynos (each forwarded
        from its own host port; every dyno of the app may reach the app's ports)."""
        hosts = []
        for d in self.manager.list(app):
            if d.type == "distccd" and d.state == "up" and d.port and not d.stopping:
                hosts.append(f"127.0.0.1:{d.port}/2")
        return hosts

    # ------------------------------------------------------------------ sandboxes
    def run_sandbox(
        self, job: dict[str, Any], lease: str, command: str, directory: str, env: dict[str, str]
    ) -> dict[str, Any]:
        """Run a job's untrusted build commands (an app's ``make``) in a fresh sandbox,
        for the worker dyno that holds the job: ``directory`` of that dyno's ``/build``
        read-write at the same path, its ``/app`` (the compiler slug) read-only, no
        network, no token, the dyno's limits and host id. The output goes to the job's
        log; cancel, timeout and a lost lease kill it."""
        row = self.jobs.check_lease(job["id"], lease)
        dyno = self.manager.by_id(row["worker_dyno"] or "")
        if dyno is None or not dyno.live or dyno.fs is None or dyno.stack is None:
            raise conflict(f"job {job['id']}: its worker dyno is not running")
        relative = Path(directory.removeprefix("/build/").strip("/"))
        if (
            not directory.startswith("/build/")
            or ".." in relative.parts
            or not (dyno.fs.build / relative).is_dir()
        ):
            raise invalid(f"dir must be an existing directory under /build, not {directory!r}")
        target = f"/build/{relative}"
        safe_env = {
            k: v
            for k, v in env.items()
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) and not k.startswith("SELFHOST_")
        }
        sandbox = Sandbox(
            stack=dyno.stack,
            argv=("/bin/sh", "-ec", command),
            env=tuple(
                {
                    "PATH": "/usr/local/bin:/usr/bin:/bin",
                    "HOME": target,
                    "LC_ALL": "C.UTF-8",
                    "TZ": "UTC",
                    **safe_env,
                }.items()
            ),
            mounts=(
                Mount(dyno.fs.app, "/app"),
                Mount(dyno.fs.build / relative, target, writable=True),
            ),
            workdir=target,
            network=False,
            limits=SIZES[dyno.size],
            scratch=("/tmp",),
            owner=str(self.paths.root),
            label=f"job-{job['id']}-{secrets.token_hex(4)}",
            host_id=dyno.host_id,
        )
        self.jobs.log(job["id"], [f"sandbox: {command}"])
        output = LogLines(lambda lines: self.jobs.log(job["id"], lines, source="sandbox"))
        started = time.monotonic()
        process = self.manager.engine(dyno.engine).start(sandbox, output)
        with self.lock:
            self.sandboxes[job["id"]] = process
        try:
            remaining = max(1.0, float(job["timeout"]) - (time.time() - (job["started"] or 0)))
            code = process.wait(remaining)
            if code is None:
                self.stopped_sandboxes[job["id"]] = "timeout"
                process.kill()
                code = process.wait()
        finally:
            with self.lock:
                self.sandboxes.pop(job["id"], None)
                stopped = self.stopped_sandboxes.pop(job["id"], None)
            process.close()
            output.flush()
        seconds = round(time.monotonic() - started, 2)
        self.jobs.log(
            job["id"],
            [f"sandbox: exit {code} ({seconds}s)" + (f", stopped: {stopped}" if stopped else "")],
        )
        return {"exit_code": code, "seconds": seconds, "stopped": stopped}

    def kill_sandbox(self, job_id: int, why: str) -> None:
        """Kill a job's running sandbox; the worker is told ``why`` (cancelled, lost)."""
        with self.lock:
            process = self.sandboxes.get(job_id)
            if process is not None:
                self.stopped_sandboxes[job_id] = why
        if process is not None:
            process.kill()

    # ------------------------------------------------------------------ artifacts
    def store_artifact(
        self, job: dict[str, Any], lease: str, upload: Path, sha: str, size: int
    ) -> dict[str, Any]:
        """An app-compile job's slug, checked like an upload, kept until the job ends."""
        self.jobs.check_lease(job["id"], lease)
        try:
            check_slug(upload, self.manager.unpack_limits)
        except SlugError as exc:
            raise Refused("invalid_slug", exc.message) from None
        os.chmod(upload, 0o600)
        os.replace(upload, self.paths.blob(sha))
        return {"checksum": f"SHA256:{sha}", "size": size}

    def release_artifact(self, job: dict[str, Any], lease: str, result: Any) -> dict[str, Any]:
        """Release an app-compile job's slug to its target app (created if needed): the
        platform does it, with the process types the worker read from the app."""
        self.jobs.check_lease(job["id"], lease)
        if not isinstance(result, dict) or not isinstance(result.get("checksum"), str):
            raise invalid("result.checksum (the uploaded artifact's) is required")
        sha = result["checksum"].removeprefix("SHA256:")
        if not re.fullmatch(r"[0-9a-f]{64}", sha) or not self.paths.blob(sha).is_file():
            raise invalid("the artifact was not uploaded (PUT /jobs/{id}/artifact)")
        target = job["params"]["target"]
        try:
            self.store.app(target)
        except Refused:
            self.store.create_app(target, self.store.app(job["app"]["id"])["stack"]["name"])
        slug, _ = self.store.create_slug(
            target,
            {
                "process_types": result.get("process_types") or {},
                "checksum": result["checksum"],
                "buildpack_provided_description": f"app-compile job {job['id']}",
            },
        )
        self.store.attach_blob(slug["id"], sha, self.paths.blob(sha).stat().st_size)
        release = self.store.create_release(target, slug["id"], f"app-compile job {job['id']}")
        if self.on_release:
            self.on_release(target)
        return {**result, "target": target, "version": release["version"], "release": release["id"]}

    # ------------------------------------------------------------------ stages
    def stage_blob(self, sha: str) -> Path:
        return self.stage_blobs / f"{sha}.tar.gz"

    def store_stage(
        self,
        app: str,
        input_hash: str,
        job_id: int | None,
        digest: str,
        files: int,
        upload: Path,
        sha: str,
        size: int,
    ) -> dict[str, Any]:
        """Verify a received stage tarball (its tree must have the digest it claims),
        then keep it, content-addressed; an input hash already stored stays as it is."""
        self.stage_blobs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.stage_blobs) as tmp:
            try:
                archive.extract(upload, Path(tmp) / "tree", what="stage")
                actual = tree_digest(scan_tree(Path(tmp) / "tree"))
            except ArchiveError as exc:
                raise Refused("invalid_stage", f"the stage was refused: {exc}") from None
        if actual != digest:
            raise Refused(
                "digest_mismatch",
                f"the uploaded stage's tree has digest {actual}, not {digest}; it was not stored",
            )
        existing = self.jobs.stage(input_hash, self.store.app(app)["id"])
        if existing is not None:
            return existing
        os.replace(upload, self.stage_blob(sha))
        return self.jobs.add_stage(app, input_hash, digest, files, size, sha, job_id)


class LogLines:
    """An engine output that hands complete lines to a function (the job's log)."""

    def __init__(self, sink: Callable[[list[str]], None]):
        self.sink = sink
        self.partial = b""

    def write(self, data: bytes) -> int:
        complete, _, self.partial = (self.partial + data).rpartition(b"\n")
        if complete:
            self.sink(complete.decode("utf-8", "replace").splitlines())
        return len(data)

    def flush(self) -> None:
        if self.partial:
            self.sink([self.partial.decode("utf-8", "replace")])
            self.partial = b""
