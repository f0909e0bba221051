"""The compile-job queue: Huey, on embedded SQLite (one machine) or Redis (many).

The same task code runs on both; only the queue URL changes:

- ``sqlite:///ABSOLUTE/PATH/jobs.db``: Huey's SQLite storage (the default: the platform
  directory's ``queue/jobs.db``, mounted into worker dynos at ``/var/lib/selfhost/queue``);
- ``redis://HOST:PORT/DB`` or ``unix:///PATH/redis.sock?db=N``: Huey's Redis storage
  (blocking pops, so a job starts as soon as a worker is free).

A queue message carries only ``(job_id, attempt)``. The platform's SQLite store is the
record of every job (state, lease, progress, result); a message whose attempt is no
longer the job's current one is dropped by the worker's claim. So the queue may deliver
a message twice (a re-enqueue after a lost worker) and the job still runs once.

This module imports only huey (and redis for Redis URLs): it also runs inside worker
dynos, on the stack's Python.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

#: Inside a worker dyno, where the platform's SQLite queue directory is mounted.
DYNO_QUEUE_DIR = "/var/lib/selfhost/queue"
QUEUE_FILE = "jobs.db"
TASK_NAME = "selfhost.run_job"


class QueueUrlError(ValueError):
    """A queue URL that is not sqlite://, redis:// or unix://."""


def check_url(url: str) -> str:
    """The URL's scheme, or QueueUrlError saying what is expected."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == "sqlite":
        if not urllib.parse.urlsplit(url).path.startswith("/"):
            raise QueueUrlError(
                f"queue URL {url!r}: a sqlite URL needs an absolute path "
                "(sqlite:///var/lib/queue/jobs.db)"
            )
        return scheme
    if scheme in ("redis", "rediss", "unix"):
        return scheme
    raise QueueUrlError(
        f"queue URL {url!r}: expected sqlite:///PATH, redis://HOST:PORT/DB "
        "or unix:///PATH/redis.sock"
    )


def make_huey(url: str, app: str) -> Any:
    """A Huey instance for one app's queue at ``url`` (results are not stored: the
    platform's store keeps them)."""
    scheme = check_url(url)
    name = f"selfhost-{app}"
    if scheme == "sqlite":
        from huey import SqliteHuey

        return SqliteHuey(
            name=name, filename=urllib.parse.urlsplit(url).path, results=False, timeout=30
        )
    import redis
    from huey import RedisHuey

    pool = redis.ConnectionPool.from_url(url, health_check_interval=15)
    # read_timeout: how long a blocking pop waits before the consumer looks around again.
    return RedisHuey(name=name, connection_pool=pool, results=False, blocking=True, read_timeout=1)


def register(huey: Any, run: Callable[[int, int], None]) -> Any:
    """Register the one task every message runs: ``run(job_id, attempt)``.

    Huey names a task ``<module>.<name>``; the module is pinned so that the daemon
    (which only enqueues) and the workers (``__main__``) agree on ``selfhost.run_job``.
    """

    def run_job(job_id: int, attempt: int) -> None:
        run(job_id, attempt)

    run_job.__module__ = TASK_NAME.rpartition(".")[0]
    return huey.task(name=TASK_NAME.rpartition(".")[2])(run_job)


def _never(job_id: int, attempt: int) -> None:  # pragma: no cover - only enqueued
    raise RuntimeError("run_job is executed by worker dynos, not by the platform daemon")


class Queue:
    """The platform daemon's side: enqueue ``(job_id, attempt)`` on an app's queue."""

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, str], Any] = {}

    def task(self, url: str, app: str) -> Any:
        key = (url, app)
        if key not in self._tasks:
            self._tasks[key] = register(make_huey(url, app), _never)
        return self._tasks[key]

    def enqueue(self, url: str, app: str, job_id: int, attempt: int) -> None:
        self.task(url, app)(job_id, attempt)
