"""The platform's state: SQLite (standard library) plus content-addressed slug blobs.

Directory (``<workspace>/platform`` unless ``selfhost.platform_dir`` is set)::

    platform.db             SQLite database, WAL mode (schema below)
    blobs/sha256/<hex>      uploaded slug archives, named by their sha256
    blobs/tmp/              uploads in progress (removed at daemon start)
    token                   the API bearer token (mode 0600), created at first start
    daemon.pid              the running daemon's pid
    daemon.json             {"pid", "url", "started"} of the running daemon
    port                    the daemon's last port (reused when platform_port is 0)
    settings.json           what the daemon needs to run dynos (stacks, engine, grace)
    slugs/<sha256>/app      released slugs, unpacked once (copied into each dyno)
    dynos/<id>/app          the /app of a running dyno (deleted when it ends)
    logs/<app>.log          each app's log (Heroku's line format)
    daemon.log              the daemon's log

Schema (version 1)::

    meta(key PRIMARY KEY, value)                      schema_version, account_id,
                                                      app_number_max (of destroyed apps),
                                                      pid_max:<app id> (the app's last
                                                      dyno PID, see next_pid)
    apps(id PK, name UNIQUE, stack, created_at, updated_at)
    slugs(id PK, app_id → apps, checksum, size, blob_sha256, upload_token,
          process_types JSON, commit_sha, commit_description,
          buildpack_provided_description, stack, created_at, updated_at)
    releases(id PK, app_id → apps, version, slug_id → slugs, description,
             config JSON, status, created_at, updated_at, UNIQUE(app_id, version))
    config_vars(app_id → apps, key, value, PRIMARY KEY(app_id, key))
    formation(id PK, app_id → apps, type, quantity, size, command,
              created_at, updated_at, UNIQUE(app_id, type))

Added in version 3 (the sandbox security model, docs/security.md)::

    app_numbers(app_id PK → apps, number UNIQUE)      each app's sandbox host id offset
    tokens(token_sha256 PK, app_id → apps, dyno_id, created_at)
                                                      app-scoped tokens of live dynos
                                                      (only their sha256 is kept)

Added in version 2 (compile jobs, see selfhost/platform/jobs/service.py)::

    jobs(id INTEGER PK, app_id → apps, kind, params JSON, key, parent_id → jobs,
         state, attempt, lease, worker, worker_dyno, heartbeat, timeout,
         cancel_requested, progress, result JSON, error,
         created, started, finished (unix seconds), created_at, updated_at)
    stages(...)                                       replaced by app_stages in v4

Changed in version 4 (each app's stage store is its own: a stage uploaded by one
app's workers is never served to another app's)::

    app_stages(app_id → apps, input_hash, tree_digest, files, size, blob_sha256,
               job_id → jobs, created_at, PRIMARY KEY(app_id, input_hash))

Consistency rules, so that a ``kill -9`` at any moment leaves a usable state:

- every change is one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``);
- a blob is written to ``blobs/tmp``, verified, renamed to ``blobs/sha256/<hex>``, and
  only then recorded on its slug; a slug without ``blob_sha256`` cannot be released;
- releases are append-only: version N+1 is computed inside the transaction that
  inserts it; a rollback or a config change is a new release;
- each release snapshots the config vars, so a rollback restores code and config.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from selfhost.platform.errors import Refused, invalid, not_found
from selfhost.platform.paths import PlatformPaths

SCHEMA_VERSION = 4
OPERATOR_EMAIL = "operator@selfhost.localhost"  # the platform's one account
POOL_SIZE = 8  # idle connections kept open
APP_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,28}[a-z0-9]$")
CONFIG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_SIZES = ("basic", "standard-1x", "standard-2x", "performance-m", "performance-l")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS apps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    stack TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS slugs (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id),
    checksum TEXT,
    size INTEGER,
    blob_sha256 TEXT,
    upload_token TEXT NOT NULL,
    process_types TEXT NOT NULL,
    commit_sha TEXT,
    commit_description TEXT,
    buildpack_provided_description TEXT,
    stack TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id),
    version INTEGER NOT NULL,
    slug_id TEXT REFERENCES slugs(id),
    description TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (app_id, version)
);
CREATE TABLE IF NOT EXISTS config_vars (
    app_id TEXT NOT NULL REFERENCES apps(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (app_id, key)
);
CREATE TABLE IF NOT EXISTS formation (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id),
    type TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    size TEXT NOT NULL,
    command TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (app_id, type)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id TEXT NOT NULL REFERENCES apps(id),
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    key TEXT NOT NULL,
    parent_id INTEGER REFERENCES jobs(id),
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    lease TEXT,
    worker TEXT,
    worker_dyno TEXT,
    heartbeat REAL,
    timeout REAL NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress TEXT,
    result TEXT,
    error TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (app_id, key, state);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE TABLE IF NOT EXISTS app_numbers (
    app_id TEXT PRIMARY KEY REFERENCES apps(id),
    number INTEGER NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS tokens (
    token_sha256 TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id),
    dyno_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tokens_by_dyno ON tokens (dyno_id);
CREATE TABLE IF NOT EXISTS app_stages (
    app_id TEXT NOT NULL REFERENCES apps(id),
    input_hash TEXT NOT NULL,
    tree_digest TEXT NOT NULL,
    files INTEGER NOT NULL,
    size INTEGER NOT NULL,
    blob_sha256 TEXT NOT NULL,
    job_id INTEGER REFERENCES jobs(id),
    created_at TEXT NOT NULL,
    PRIMARY KEY (app_id, input_hash)
);
"""
#: Version 2's stages table was keyed by input hash alone, shared by every app; each
#: app's store is its own since version 4.
MIGRATE_STAGES = """
INSERT OR IGNORE INTO app_stages (app_id, input_hash, tree_digest, files, size,
    blob_sha256, job_id, created_at)
SELECT app_id, input_hash, tree_digest, files, size, blob_sha256, job_id, created_at
FROM stages;
DROP TABLE stages;
"""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Store:
    """Data access for the platform; every public method is one transaction."""

    def __init__(self, paths: PlatformPaths):
        self.paths = paths
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        paths.ensure_private()
        db = self.connect()
        try:
            # executescript runs in its own transaction (it commits first), and every
            # statement is idempotent, so it stays outside tx().
            db.executescript(SCHEMA)
        finally:
            db.close()
        paths.ensure_private()  # the database files exist now
        with self.tx() as db:
            # An older database is upgraded in place: new tables come from CREATE ...
            # IF NOT EXISTS above; version 4 moves the shared stages table into
            # app_stages (MIGRATE_STAGES).
            old = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stages'"
            ).fetchone()
            if old:
                for statement in filter(str.strip, MIGRATE_STAGES.split(";")):
                    db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('account_id', ?)", (str(uuid.uuid4()),))
            db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def connect(self) -> sqlite3.Connection:
        # check_same_thread=False: a pooled connection serves one thread at a time
        db = sqlite3.connect(
            self.paths.db, timeout=30, isolation_level=None, check_same_thread=False
        )
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection from the pool (opening one costs half a millisecond, and a
        dyno's start makes a dozen calls); back in the pool only if it is clean."""
        with self._pool_lock:
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self.connect()
        try:
            yield db
        except BaseException:
            db.close()  # whatever state it is in, it is not reused
            raise
        if db.in_transaction:
            db.close()
            return
        with self._pool_lock:
            if len(self._idle) < POOL_SIZE:
                self._idle.append(db)
                return
        db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any error."""
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read: each statement sees the database as it was when it started (a
        caller finishes its cursors before the block ends, so none holds a snapshot)."""
        with self._connection() as db:
            yield db

    def close(self) -> None:
        """Close the pooled connections (the store stays usable: it opens new ones)."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()

    # ------------------------------------------------------------------ apps
    def _app(self, db: sqlite3.Connection, ident: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM apps WHERE id = ? OR name = ?", (ident, ident)).fetchone()
        if row is None:
            raise not_found("app")
        return row

    def create_app(self, name: str | None, stack: str) -> dict[str, Any]:
        name = name or f"app-{secrets.token_hex(4)}"
        if not APP_NAME_RE.match(name):
            raise invalid(
                f"Name {name!r} is invalid: it must start with a letter, end with a "
                "letter or digit, and contain only lowercase letters, digits and "
                "dashes (3 to 30 characters)."
            )
        with self.tx() as db:
            if db.execute("SELECT 1 FROM apps WHERE name = ?", (name,)).fetchone():
                raise invalid(f"Name {name} is already taken.")
            ts = now()
            app_id = str(uuid.uuid4())
            db.execute("INSERT INTO apps VALUES (?, ?, ?, ?, ?)", (app_id, name, stack, ts, ts))
            return self._app_json(db, self._app(db, app_id))

    def app(self, ident: str) -> dict[str, Any]:
        with self.read() as db:
            return self._app_json(db, self._app(db, ident))

    def delete_app(self, ident: str) -> dict[str, Any]:
        """Delete an app and everything recorded for it (Heroku's ``apps:destroy``), in
        one transaction; answers the app as it was. Its sandbox number is never given
        to another app (``meta.app_number_max``); blobs are content-addressed, may be
        shared, and stay."""
        with self.tx() as db:
            row = self._app(db, ident)
            gone = self._app_json(db, row)
            # its sandbox number is never given again: the highest one given is kept
            db.execute(
                "INSERT INTO meta SELECT 'app_number_max', COALESCE(MAX(number), 0) "
                "FROM app_numbers WHERE true ON CONFLICT(key) DO UPDATE SET value = "
                "MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))"
            )
            for table in (
                "app_numbers",
                "tokens",
                "app_stages",
                "jobs",
                "formation",
                "config_vars",
                "releases",
                "slugs",
                "apps",
            ):
                column = "id" if table == "apps" else "app_id"
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (row["id"],))
        return gone

    # ------------------------------------------------------------------ security
    def app_number(self, ident: str) -> int:
        """The app's number (1, 2, ...): its dynos run as the sandbox host id base + it.
        Given once, at the first dyno, and never reused."""
        with self.tx() as db:
            app_id = self._app(db, ident)["id"]
            row = db.execute(
                "SELECT number FROM app_numbers WHERE app_id = ?", (app_id,)
            ).fetchone()
            if row:
                return int(row[0])
            number = db.execute(
                "SELECT MAX(COALESCE((SELECT MAX(number) FROM app_numbers), 0), COALESCE("
                "(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'app_number_max'), 0)) + 1"
            ).fetchone()[0]
            db.execute("INSERT INTO app_numbers VALUES (?, ?)", (app_id, number))
            return int(number)

    def next_pid(self, app_id: str) -> int:
        """The app's next dyno PID (1, 2, ...): short, never reused, kept across daemon
        restarts (``meta.pid_max:<app id>``), as ``ps`` shows it."""
        key = f"pid_max:{app_id}"
        with self.tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            pid = int(row[0]) + 1 if row else 1
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(pid)))
            return pid

    def issue_token(self, app_id: str, dyno_id: str) -> str:
        """A new token scoped to one app, for one dyno (revoked when the dyno ends)."""
        token = "dyno-" + secrets.token_urlsafe(32)
        with self.tx() as db:
            db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?)",
                (hashlib.sha256(token.encode()).hexdigest(), app_id, dyno_id, now()),
            )
        return token

    def revoke_tokens(self, dyno_id: str | None = None, keep: tuple[str, ...] = ()) -> None:
        """Revoke the tokens of a dyno (or of every dyno but those in ``keep``, at
        daemon start: the dynos it adopts keep theirs)."""
        with self.tx() as db:
            if dyno_id is None:
                marks = ",".join("?" * len(keep))
                db.execute(f"DELETE FROM tokens WHERE dyno_id NOT IN ({marks})", keep)
            else:
                db.execute("DELETE FROM tokens WHERE dyno_id = ?", (dyno_id,))

    def token_scope(self, token: str) -> tuple[str, str, str] | None:
        """``(app id, app name, dyno id)`` of an app-scoped token, or None."""
        with self.read() as db:
            row = db.execute(
                "SELECT tokens.app_id, apps.name, tokens.dyno_id FROM tokens JOIN apps ON "
                "apps.id = tokens.app_id WHERE token_sha256 = ?",
                (hashlib.sha256(token.encode()).hexdigest(),),
            ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def apps(self) -> list[dict[str, Any]]:
        with self.read() as db:
            return [self._app_json(db, r) for r in db.execute("SELECT * FROM apps ORDER BY name")]

    def _app_json(self, db: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
        released = db.execute(
            "SELECT MAX(created_at) FROM releases WHERE app_id = ?", (row["id"],)
        ).fetchone()[0]
        return {
            "id": row["id"],
            "name": row["name"],
            "stack": {"id": row["stack"], "name": row["stack"]},
            "build_stack": {"id": row["stack"], "name": row["stack"]},
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "released_at": released,
            "maintenance": False,
            "owner": self._owner(db),
            "repo_size": 0,  # no git repository: slugs are built by selfhost
            "slug_size": self._slug_size(db, row["id"]),
            "region": {"name": "local"},
            "web_url": None,
            "git_url": None,
        }

    def _slug_size(self, db: sqlite3.Connection, app_id: str) -> int | None:
        """The size of the slug the app's current release runs (None before one)."""
        row = db.execute(
            "SELECT slugs.size FROM releases JOIN slugs ON slugs.id = releases.slug_id "
            "WHERE releases.app_id = ? ORDER BY releases.version DESC LIMIT 1",
            (app_id,),
        ).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ the account
    @staticmethod
    def _owner(db: sqlite3.Connection) -> dict[str, str]:
        account_id = db.execute("SELECT value FROM meta WHERE key = 'account_id'").fetchone()
        return {"id": account_id[0], "email": OPERATOR_EMAIL}

    def account(self) -> dict[str, Any]:
        """The platform's one account: its operator, who holds the platform's token
        (Heroku's ``GET /account``; every app's ``owner``)."""
        with self.read() as db:
            owner = self._owner(db)
            created = db.execute("SELECT MIN(created_at) FROM apps").fetchone()[0]
        return {
            **owner,
            "name": "selfhost operator",
            "allow_tracking": False,
            "beta": False,
            "created_at": created or now(),
            "updated_at": created or now(),
            "last_login": None,
            "two_factor_authentication": False,
            "verified": True,
            "default_organization": None,
            "default_team": None,
            "sms_number": None,
            "suspended_at": None,
            "delinquent_at": None,
        }

    # ------------------------------------------------------------------ slugs
    def create_slug(self, app: str, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Record a slug; return its JSON and the secret token of its upload URL."""
        process_types = body.get("process_types")
        if not isinstance(process_types, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and re.match(r"^[-\w]{1,128}$", k)
            for k, v in process_types.items()
        ):
            raise invalid(
                "process_types must be an object of {name: command} where names "
                "match ^[-\\w]{1,128}$"
            )
        checksum = body.get("checksum")
        if checksum is not None and not re.match(r"^SHA256:[0-9a-f]{64}$", str(checksum)):
            raise invalid("checksum must look like SHA256:<64 hex digits>")
        for key in ("commit", "commit_description", "buildpack_provided_description", "stack"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise invalid(f"{key} must be a string")
        token = secrets.token_urlsafe(24)
        with self.tx() as db:
            app_row = self._app(db, app)
            ts = now()
            slug_id = str(uuid.uuid4())
            db.execute(
                "INSERT INTO slugs VALUES (?, ?, ?, NULL, NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    slug_id,
                    app_row["id"],
                    checksum,
                    token,
                    json.dumps(process_types),
                    body.get("commit"),
                    body.get("commit_description"),
                    body.get("buildpack_provided_description"),
                    body.get("stack") or app_row["stack"],
                    ts,
                    ts,
                ),
            )
            return self._slug_json(self._slug(db, app_row["id"], slug_id)), token

    def _slug(self, db: sqlite3.Connection, app_id: str, slug_id: str) -> sqlite3.Row:
        row = db.execute(
            "SELECT * FROM slugs WHERE id = ? AND app_id = ?", (slug_id, app_id)
        ).fetchone()
        if row is None:
            raise not_found("slug")
        return row

    def slug(self, app: str, slug_id: str) -> dict[str, Any]:
        with self.read() as db:
            return self._slug_json(self._slug(db, self._app(db, app)["id"], slug_id))

    def slug_for_upload(self, slug_id: str, token: str) -> sqlite3.Row:
        """The slug a blob URL points to, if its secret matches (compared in constant time)."""
        with self.read() as db:
            row = db.execute("SELECT * FROM slugs WHERE id = ?", (slug_id,)).fetchone()
        if row is None or not hmac.compare_digest(row["upload_token"], token):
            raise Refused("forbidden", "This blob URL is not valid.")
        return row

    def slug_for_download(self, slug_id: str, token: str) -> sqlite3.Row:
        """The uploaded slug a download URL points to, if its secret matches."""
        with self.read() as db:
            row = db.execute("SELECT * FROM slugs WHERE id = ?", (slug_id,)).fetchone()
        expected = self.download_token(slug_id)
        if row is None or expected is None or not hmac.compare_digest(expected, token):
            raise Refused("forbidden", "This blob URL is not valid.")
        return row

    def download_token(self, slug_id: str) -> str | None:
        """The secret of an uploaded slug's download URL (None before the upload):
        derived from the upload secret, so it is never stored, like the signature of a
        pre-signed URL."""
        with self.read() as db:
            row = db.execute(
                "SELECT upload_token, blob_sha256 FROM slugs WHERE id = ?", (slug_id,)
            ).fetchone()
        if row is None or row["blob_sha256"] is None:
            return None
        secret = row["upload_token"].encode()
        return hmac.new(secret, f"download:{slug_id}".encode(), "sha256").hexdigest()

    def attach_blob(self, slug_id: str, sha256: str, size: int) -> None:
        """Record a verified blob (already in place under blobs/sha256) on its slug."""
        with self.tx() as db:
            checksum = f"SHA256:{sha256}"
            db.execute(
                "UPDATE slugs SET blob_sha256 = ?, size = ?, updated_at = ?, "
                "checksum = COALESCE(checksum, ?) WHERE id = ?",
                (sha256, size, now(), checksum, slug_id),
            )

    @staticmethod
    def _slug_json(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "checksum": row["checksum"],
            "size": row["size"],
            "process_types": json.loads(row["process_types"]),
            "commit": row["commit_sha"],
            "commit_description": row["commit_description"],
            "buildpack_provided_description": row["buildpack_provided_description"],
            "stack": {"id": row["stack"], "name": row["stack"]},
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    # ------------------------------------------------------------------ releases
    def _next_release(
        self,
        db: sqlite3.Connection,
        app_id: str,
        slug_id: str | None,
        description: str,
        config: dict[str, str],
    ) -> sqlite3.Row:
        version = db.execute(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM releases WHERE app_id = ?", (app_id,)
        ).fetchone()[0]
        ts = now()
        release_id = str(uuid.uuid4())
        db.execute(
            "INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?, 'succeeded', ?, ?)",
            (
                release_id,
                app_id,
                version,
                slug_id,
                description,
                json.dumps(config, sort_keys=True),
                ts,
                ts,
            ),
        )
        db.execute("UPDATE apps SET updated_at = ? WHERE id = ?", (ts, app_id))
        if slug_id:
            self._sync_formation(db, app_id, slug_id)
        return db.execute("SELECT * FROM releases WHERE id = ?", (release_id,)).fetchone()

    def _sync_formation(self, db: sqlite3.Connection, app_id: str, slug_id: str) -> None:
        """Every process type of the released slug has a formation row (new ones at 0,
        except ``web`` at 1, as on Heroku); commands follow the slug."""
        types = json.loads(
            db.execute("SELECT process_types FROM slugs WHERE id = ?", (slug_id,)).fetchone()[0]
        )
        ts = now()
        for name, command in types.items():
            db.execute(
                "INSERT INTO formation VALUES (?, ?, ?, ?, 'basic', ?, ?, ?) "
                "ON CONFLICT (app_id, type) DO UPDATE SET command = excluded.command, "
                "updated_at = excluded.updated_at",
                (str(uuid.uuid4()), app_id, name, 1 if name == "web" else 0, command, ts, ts),
            )

    def _current(self, db: sqlite3.Connection, app_id: str) -> sqlite3.Row | None:
        return db.execute(
            "SELECT * FROM releases WHERE app_id = ? ORDER BY version DESC LIMIT 1", (app_id,)
        ).fetchone()

    def _config(self, db: sqlite3.Connection, app_id: str) -> dict[str, str]:
        return {
            r["key"]: r["value"]
            for r in db.execute(
                "SELECT key, value FROM config_vars WHERE app_id = ? ORDER BY key", (app_id,)
            )
        }

    def create_release(self, app: str, slug_id: str, description: str | None) -> dict[str, Any]:
        with self.tx() as db:
            app_row = self._app(db, app)
            slug = self._slug(db, app_row["id"], slug_id)
            if slug["blob_sha256"] is None:
                raise invalid(
                    "This slug has no verified blob yet: upload it to its blob URL "
                    "before releasing it."
                )
            row = self._next_release(
                db,
                app_row["id"],
                slug_id,
                description or f"Deploy {slug_id[:8]}",
                self._config(db, app_row["id"]),
            )
            return self._release_json(db, app_row, row)

    def rollback(self, app: str, target: str) -> dict[str, Any]:
        with self.tx() as db:
            app_row = self._app(db, app)
            old = self._release(db, app_row["id"], target)
            config = json.loads(old["config"])
            db.execute("DELETE FROM config_vars WHERE app_id = ?", (app_row["id"],))
            db.executemany(
                "INSERT INTO config_vars VALUES (?, ?, ?)",
                [(app_row["id"], k, v) for k, v in config.items()],
            )
            row = self._next_release(
                db, app_row["id"], old["slug_id"], f"Rollback to v{old['version']}", config
            )
            return self._release_json(db, app_row, row)

    def _release(self, db: sqlite3.Connection, app_id: str, ident: str) -> sqlite3.Row:
        ident = str(ident)
        version = ident[1:] if ident.startswith("v") and ident[1:].isdigit() else ident
        if version.isdigit():
            row = db.execute(
                "SELECT * FROM releases WHERE app_id = ? AND version = ?", (app_id, int(version))
            ).fetchone()
        else:
            row = db.execute(
                "SELECT * FROM releases WHERE app_id = ? AND id = ?", (app_id, ident)
            ).fetchone()
        if row is None:
            raise not_found("release")
        return row

    def release(self, app: str, ident: str) -> dict[str, Any]:
        with self.read() as db:
            app_row = self._app(db, app)
            return self._release_json(db, app_row, self._release(db, app_row["id"], ident))

    def releases(self, app: str) -> list[dict[str, Any]]:
        with self.read() as db:
            app_row = self._app(db, app)
            rows = db.execute(
                "SELECT * FROM releases WHERE app_id = ? ORDER BY version", (app_row["id"],)
            ).fetchall()
            return [self._release_json(db, app_row, r) for r in rows]

    def release_config(self, app: str, ident: str) -> dict[str, str]:
        """The config vars a release was made with (Heroku's release config-vars)."""
        with self.read() as db:
            app_row = self._app(db, app)
            row = self._release(db, app_row["id"], ident)
            return dict(json.loads(row["config"] or "{}"))

    def current_release(self, app: str) -> dict[str, Any] | None:
        with self.read() as db:
            app_row = self._app(db, app)
            row = self._current(db, app_row["id"])
            return self._release_json(db, app_row, row) if row else None

    def _release_json(
        self, db: sqlite3.Connection, app_row: sqlite3.Row, row: sqlite3.Row
    ) -> dict[str, Any]:
        current = self._current(db, app_row["id"])
        return {
            "id": row["id"],
            "version": row["version"],
            "description": row["description"],
            "status": row["status"],
            "current": bool(current and current["id"] == row["id"]),
            "slug": {"id": row["slug_id"]} if row["slug_id"] else None,
            "app": {"id": app_row["id"], "name": app_row["name"]},
            "user": {"id": "local", "email": "platform@localhost"},
            "addon_plan_names": [],
            "output_stream_url": None,
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    # ------------------------------------------------------------------ config vars
    def config(self, app: str) -> dict[str, str]:
        with self.read() as db:
            return self._config(db, self._app(db, app)["id"])

    def update_config(self, app: str, changes: dict[str, Any]) -> dict[str, str]:
        """Set (string) or unset (null) config vars; a change makes a new release."""
        for key, value in changes.items():
            if not CONFIG_KEY_RE.match(key):
                raise invalid(f"Config var name {key!r} is invalid (letters, digits, _).")
            if value is not None and not isinstance(value, str):
                raise invalid(f"Config var {key} must be a string or null.")
        with self.tx() as db:
            app_row = self._app(db, app)
            before = self._config(db, app_row["id"])
            for key, value in changes.items():
                if value is None:
                    db.execute(
                        "DELETE FROM config_vars WHERE app_id = ? AND key = ?", (app_row["id"], key)
                    )
                else:
                    db.execute(
                        "INSERT INTO config_vars VALUES (?, ?, ?) ON CONFLICT "
                        "(app_id, key) DO UPDATE SET value = excluded.value",
                        (app_row["id"], key, value),
                    )
            after = self._config(db, app_row["id"])
            if after != before:
                current = self._current(db, app_row["id"])
                set_keys = sorted(k for k, v in changes.items() if v is not None)
                unset = sorted(k for k, v in changes.items() if v is None)
                words = []
                if set_keys:
                    words.append(f"Set {', '.join(set_keys)} config vars")
                if unset:
                    words.append(f"Remove {', '.join(unset)} config vars")
                self._next_release(
                    db,
                    app_row["id"],
                    current["slug_id"] if current else None,
                    "; ".join(words),
                    after,
                )
            return after

    # ------------------------------------------------------------------ formation
    def formation(self, app: str) -> list[dict[str, Any]]:
        with self.read() as db:
            app_row = self._app(db, app)
            rows = db.execute(
                "SELECT * FROM formation WHERE app_id = ? ORDER BY type", (app_row["id"],)
            ).fetchall()
            return [self._formation_json(app_row, r) for r in rows]

    def update_formation(self, app: str, updates: Any) -> list[dict[str, Any]]:
        if not isinstance(updates, list) or not updates:
            raise invalid("updates must be a non-empty list of {type, quantity, size}")
        with self.tx() as db:
            app_row = self._app(db, app)
            out = []
            for update in updates:
                if not isinstance(update, dict) or not isinstance(update.get("type"), str):
                    raise invalid("each update needs a type")
                row = db.execute(
                    "SELECT * FROM formation WHERE app_id = ? AND type = ?",
                    (app_row["id"], update["type"]),
                ).fetchone()
                if row is None:
                    raise Refused(
                        "not_found",
                        f"Couldn't find that process type ({update['type']}): the "
                        "current release's Procfile does not define it.",
                    )
                quantity = update.get("quantity", row["quantity"])
                if isinstance(quantity, str) and quantity.strip().isdigit():
                    quantity = int(quantity)  # Heroku's CLI sends "1" (ps:scale worker=1)
                size = update.get("size", row["size"])
                if (
                    not isinstance(quantity, int)
                    or isinstance(quantity, bool)
                    or not 0 <= quantity <= 100
                ):
                    raise invalid("quantity must be a whole number from 0 to 100")
                if isinstance(size, str):
                    size = size.lower()  # the schema's own spelling is standard-1X
                if size not in DEFAULT_SIZES:
                    raise invalid(f"size must be one of {', '.join(DEFAULT_SIZES)}")
                db.execute(
                    "UPDATE formation SET quantity = ?, size = ?, updated_at = ? WHERE id = ?",
                    (quantity, size, now(), row["id"]),
                )
                out.append(
                    self._formation_json(
                        app_row,
                        db.execute("SELECT * FROM formation WHERE id = ?", (row["id"],)).fetchone(),
                    )
                )
            return out

    @staticmethod
    def _formation_json(app_row: sqlite3.Row, row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "type": row["type"],
            "quantity": row["quantity"],
            "size": row["size"],
            "command": row["command"],
            "app": {"id": app_row["id"], "name": app_row["name"]},
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }
