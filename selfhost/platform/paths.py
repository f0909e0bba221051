"""Where a platform keeps its state: one directory, every path in it named here.

The tree (docs/state.md has the full picture)::

    <platform>/
      platform.db (+ -wal, -shm)   apps, releases, config vars, tokens, jobs (0600)
      token                        the master API token (0600)
      daemon.json daemon.pid daemon.log daemon.lock port settings.json
      routes.json                  the routing table the daemon writes for the router
      router.json router.log       the router process (pid, URL) and its log
      blobs/sha256/<sha>           slug blobs, content-addressed; blobs/tmp/ uploads
      slugs/<sha>-<host id>/app    a slug unpacked once per host id
      dynos/<dyno id>/             a running dyno's tmpfs (/app overlay, /tmp, /build)
      net/<pid>.pasta              pid files of the dynos' pasta processes
      kept/<dyno id>/              a dyno that outlives the daemon: record.json,
                                   output (what it writes), status (its exit status)
      logs/<app>.log               each app's log; jobs/ the compile jobs' logs
      queues/ sources/ stages/     the job queues, fetched apps, uploaded stage trees
      security/                    the seccomp filter
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PlatformPaths:
    """The files of one platform directory."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "platform.db"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def blob_tmp(self) -> Path:
        return self.root / "blobs" / "tmp"

    @property
    def token(self) -> Path:
        return self.root / "token"

    @property
    def daemon_json(self) -> Path:
        return self.root / "daemon.json"

    @property
    def settings(self) -> Path:
        return self.root / "settings.json"

    @property
    def pid_file(self) -> Path:
        return self.root / "daemon.pid"

    @property
    def log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def port_file(self) -> Path:
        return self.root / "port"

    @property
    def security(self) -> Path:
        return self.root / "security"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def routes(self) -> Path:
        return self.root / "routes.json"

    @property
    def router_json(self) -> Path:
        return self.root / "router.json"

    @property
    def router_log(self) -> Path:
        return self.root / "router.log"

    @property
    def kept(self) -> Path:
        return self.root / "kept"

    @property
    def net(self) -> Path:
        return self.root / "net"

    @property
    def dynos(self) -> Path:
        return self.root / "dynos"

    @property
    def slugs(self) -> Path:
        return self.root / "slugs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def job_logs(self) -> Path:
        return self.root / "jobs"

    @property
    def queues(self) -> Path:
        return self.root / "queues"

    @property
    def sources(self) -> Path:
        return self.root / "sources"

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    def blob(self, sha256: str) -> Path:
        return self.blobs / sha256

    def ensure_private(self) -> None:
        """The platform's state is private: the directory 0700, the database and the
        token 0600 (they hold every app's config vars and the master token)."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        for path in (
            self.db,
            self.db.with_name("platform.db-wal"),
            self.db.with_name("platform.db-shm"),
            self.token,
        ):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, 0o600)

    def ensure_token(self) -> str:
        """The API token, created (0600) on first use."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            return self.token.read_text().strip()
        except FileNotFoundError:
            token = secrets.token_urlsafe(32)
            fd = os.open(self.token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            return token
