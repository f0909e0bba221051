"""The job record's state machine (leases, re-queues, duplicates, cancel) and the queue."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from selfhost.platform.errors import Refused
from selfhost.platform.jobs.queue import Queue, QueueUrlError, check_url, make_huey, register
from selfhost.platform.jobs.service import JobStore, check_params, job_key
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.store.db import Store


@pytest.fixture
def jobs(tmp_path: Path) -> JobStore:
    store = Store(PlatformPaths(tmp_path / "platform"))
    store.create_app("builders", "bookworm")
    return JobStore(store)


def new(jobs: JobStore, key: str = "k1") -> dict:
    job, created = jobs.create("builders", "self-rebuild", {}, key, timeout=60)
    assert created
    return job


def test_claim_lease_and_exactly_one_outcome(jobs):
    job = new(jobs)
    claimed, lease = jobs.claim(job["id"], 1, "worker.1", "dyno-a")
    assert claimed["state"] == "running" and claimed["worker"]["name"] == "worker.1"
    with pytest.raises(Refused) as again:  # a second delivery of the same message
        jobs.claim(job["id"], 1, "worker.2", "dyno-b")
    assert again.value.id == "conflict"
    with pytest.raises(Refused):
        jobs.heartbeat(job["id"], "not-the-lease", None)
    assert jobs.heartbeat(job["id"], lease, "build") == {"cancel": False}
    done = jobs.finish(job["id"], lease, "succeeded", {"identical": True})
    assert done["state"] == "succeeded" and done["result"] == {"identical": True}
    with pytest.raises(Refused) as twice:
        jobs.finish(job["id"], lease, "failed", error="late")
    assert twice.value.id == "conflict"
    assert jobs.get(job["id"])["state"] == "succeeded"


def test_a_lost_attempt_cannot_report_after_the_requeue(jobs):
    job = new(jobs)
    _, old_lease = jobs.claim(job["id"], 1, "worker.1", "dyno-a")
    again = jobs.requeue(job["id"], None)  # the platform takes it back (dyno exited)
    assert again["state"] == "queued" and again["attempt"] == 2 and again["worker"] is None
    with pytest.raises(Refused):
        jobs.claim(job["id"], 1, "worker.1", "dyno-a")  # the stale message
    _, lease = jobs.claim(job["id"], 2, "worker.3", "dyno-c")
    with pytest.raises(Refused):
        jobs.finish(job["id"], old_lease, "succeeded")  # the killed worker's late report
    assert jobs.finish(job["id"], lease, "succeeded")["attempt"] == 2


def test_lost_and_held_by(jobs):
    job = new(jobs)
    jobs.claim(job["id"], 1, "worker.1", "dyno-a")
    assert [j["id"] for j in jobs.held_by("dyno-a")] == [job["id"]]
    assert jobs.lost(lease_seconds=3600) == []
    assert [j["id"] for j in jobs.lost(lease_seconds=-1)] == [job["id"]]


def test_duplicates_while_active_only(jobs):
    first = new(jobs, "same")
    dup, created = jobs.create("builders", "self-rebuild", {}, "same", timeout=60)
    assert not created and dup["id"] == first["id"]
    _, lease = jobs.claim(first["id"], 1, "w", "d")
    jobs.finish(first["id"], lease, "succeeded")
    later, created = jobs.create("builders", "self-rebuild", {}, "same", timeout=60)
    assert created and later["id"] != first["id"]


def test_duplicate_submissions_race_to_one_job(jobs):
    ids: list[int] = []

    def submit() -> None:
        ids.append(jobs.create("builders", "stage", {}, "racy", timeout=60)[0]["id"])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1


def test_cancel(jobs):
    queued = new(jobs, "a")
    assert jobs.request_cancel(queued["id"])["state"] == "cancelled"
    running = new(jobs, "b")
    _, lease = jobs.claim(running["id"], 1, "w", "d")
    flagged = jobs.request_cancel(running["id"])
    assert flagged["state"] == "running" and flagged["cancel_requested"]
    assert jobs.heartbeat(running["id"], lease, None) == {"cancel": True}
    # a cancelled job whose worker died is not queued again
    assert jobs.requeue(running["id"], None)["state"] == "cancelled"


def test_params_are_checked_with_the_field_named():
    assert check_params("stage", {"stage": 2, "builder": "a" * 64}) == {
        "stage": 2,
        "builder": "a" * 64,
    }
    assert check_params("stage", {})["builder"] == "stage0"
    assert check_params("bootstrap", {"force": True, "jobs": 4}) == {
        "stages": 3,
        "force": True,
        "jobs": 4,
    }
    for kind, params, field in [
        ("stage", {"stage": 0}, "params.stage"),
        ("stage", {"stage": 2}, "params.builder"),
        ("app-compile", {"target": "x"}, "params.source"),
        ("self-rebuild", {"stage": 2}, "unknown: stage"),
        ("rebuild", {}, "kind must be one of"),
        ("bootstrap", {"stages": 1}, "params.stages"),
        ("stage", {"force": "yes"}, "params.force"),
        ("stage", {"jobs": 0}, "params.jobs"),
        ("app-compile", {"source": "x", "target": "y", "force": True}, "unknown: force"),
    ]:
        with pytest.raises(Refused) as err:
            check_params(kind, params)
        assert field in err.value.message
    assert job_key("stage", {"a": 1}, "s1") != job_key("stage", {"a": 1}, "s2")


def test_queue_urls():
    assert check_url("sqlite:///var/lib/q/jobs.db") == "sqlite"
    assert check_url("redis://127.0.0.1:6379/0") == "redis"
    assert check_url("unix:///run/redis.sock?db=1") == "unix"
    for bad in ("sqlite://relative.db", "amqp://host", "jobs.db"):
        with pytest.raises(QueueUrlError):
            check_url(bad)


def test_the_daemon_and_the_worker_agree_on_the_task(tmp_path):
    """A message enqueued by the daemon's Queue runs the worker's registered task."""
    url = f"sqlite://{tmp_path}/jobs.db"
    Queue().enqueue(url, "builders", 7, 2)
    seen: list[tuple[int, int]] = []
    huey = make_huey(url, "builders")
    register(huey, lambda job_id, attempt: seen.append((job_id, attempt)))
    task = huey.dequeue()
    huey.execute(task)
    assert seen == [(7, 2)]


def test_a_stopping_worker_puts_a_message_back(tmp_path):
    """SIGTERM while Huey's thread takes a message: the message goes back, unclaimed."""
    from selfhost.platform.jobs.worker import Worker

    url = f"sqlite://{tmp_path}/jobs.db"
    Queue().enqueue(url, "builders", 5, 2)
    worker = Worker(api=None, name="worker.1", dyno_id="d1")  # type: ignore[arg-type]
    worker.stopping.set()
    parked = []
    worker.park = lambda: parked.append(True)  # the real one blocks until exit
    huey = make_huey(url, "builders")
    worker.resend = register(huey, worker.run_job)
    huey.execute(huey.dequeue())
    assert parked == [True]  # the stopping thread takes no more messages
    assert huey.pending_count() == 1  # back on the queue for another worker
    message = huey.dequeue()
    assert message.args == (5, 2)
