"""The job routes of the platform API (served by the daemon).

==========  =============================================  ================================
method      path                                           what
==========  =============================================  ================================
POST        /apps/{app}/jobs                               submit ``{kind, params, timeout,
                                                           parent}``; 201, or 200 with the
                                                           queued/running duplicate
GET         /apps/{app}/jobs                               list (newest first; ``?state=``)
GET         /apps/{app}/jobs/{id}                          info; ``?log=N`` adds N log lines
POST        /apps/{app}/jobs/{id}/actions/cancel           cancel (queued: now; running: the
                                                           worker kills it within a second)
POST        /jobs/{id}/claim                               worker: ``{attempt, worker, dyno}``
                                                           → the job and its lease (or 409)
POST        /jobs/{id}/heartbeat                           worker: ``{lease, progress, log}``
                                                           → ``{cancel}``
POST        /jobs/{id}/finish                              worker: ``{lease, state, result,
                                                           error}``
POST        /jobs/{id}/requeue                             worker: ``{lease, reason}`` (it is
                                                           stopping)
GET         /jobs/{id}/source                              worker: an app-compile job's app
POST        /jobs/{id}/sandbox                             worker: ``{lease, command, dir,
                                                           env}`` runs an app's build in a
                                                           fresh sandbox (no network, no
                                                           token) → ``{exit_code}``
PUT         /jobs/{id}/artifact?lease=                     worker: the compiled app's slug
                                                           (released by the platform)
GET         /stages/{input_hash}                           a stored stage (404 if none)
GET         /stages/{input_hash}/blob                      its tarball
PUT         /stages/{input_hash}?job=&tree_digest=&files=  store a stage's tarball (its
                                                           tree must have that digest)
==========  =============================================  ================================

Workers use their dyno's token (``SELFHOST_API_TOKEN``), scoped to their own app: they
see and touch only that app's jobs and stages (:mod:`selfhost.platform.api.auth`).
"""

from __future__ import annotations

import re
from typing import Any

from selfhost.platform.api.errors import ApiError
from selfhost.platform.api.streams import Stream, file_chunks
from selfhost.platform.api.web import DYNO, Call, Endpoint, Reply
from selfhost.platform.errors import Refused, invalid, not_found
from selfhost.platform.jobs.service import FINAL, MAX_LOG_LINES, JobService


def _lease(body: dict[str, Any]) -> str:
    lease = body.get("lease")
    if not isinstance(lease, str) or not lease:
        raise invalid("lease (from the claim) is required")
    return lease


def endpoints(service: JobService) -> list[Endpoint]:
    """The routes, served by the job service."""
    jobs = service.jobs

    def in_app(app: str, job: str) -> dict[str, Any]:
        found = jobs.get(job)
        if app not in (found["app"]["name"], found["app"]["id"]):
            raise not_found("job")
        return found

    def jobs_create(call: Call, app: str) -> Reply:
        job, created = service.submit(app, call.json())
        return (201 if created else 200), {**job, "duplicate": not created}

    def jobs_list(call: Call, app: str) -> Reply:
        service.store.app(app)
        states = tuple(s for s in (call.query.get("state") or []) if s)
        return 200, jobs.find(app, states=states)

    def jobs_info(call: Call, app: str, job: str) -> Reply:
        found = in_app(app, job)
        lines = call.query_int("log", 0)
        if lines:
            found["log"] = jobs.log_tail(found["id"], lines)
        return 200, found

    def jobs_cancel(call: Call, app: str, job: str) -> Reply:
        in_app(app, job)
        return 202, service.cancel(job)

    def own(call: Call, job: str) -> dict[str, Any]:
        """The job, if the caller may act for its app (a dyno: only its own app's)."""
        found = jobs.get(job)
        call.principal.require_app(found["app"]["id"], f"act on job {found['id']}")
        return found

    def jobs_claim(call: Call, job: str) -> Reply:
        body = call.json()
        own(call, job)
        attempt, worker, dyno = body.get("attempt"), body.get("worker"), body.get("dyno")
        if not isinstance(attempt, int) or not isinstance(worker, str) or not isinstance(dyno, str):
            raise invalid("attempt (a number), worker and dyno (strings) are required")
        if call.principal.dyno_id:  # a dyno claims for itself, whatever it says
            dyno = call.principal.dyno_id
        claimed, lease = jobs.claim(job, attempt, worker, dyno)
        jobs.log(claimed["id"], [f"attempt {attempt} started on {worker}"])
        extra: dict[str, Any] = {}
        if claimed["params"].get("distcc"):
            extra["distcc_hosts"] = service.distcc_hosts(claimed["app"]["name"])
        stack = service.manager.stack_identity(claimed["app"]["name"])
        return 200, {"job": claimed, "lease": lease, "stack": stack, **extra}

    def jobs_heartbeat(call: Call, job: str) -> Reply:
        body = call.json()
        own(call, job)
        progress = body.get("progress")
        lines = body.get("log") or []
        if not isinstance(lines, list) or len(lines) > MAX_LOG_LINES * 50:
            raise invalid("log must be a list of lines")
        answer = jobs.heartbeat(job, _lease(body), progress if isinstance(progress, str) else None)
        if lines:
            jobs.log(int(job), [str(x) for x in lines], source=str(body.get("worker", "worker")))
        return 200, answer

    def jobs_finish(call: Call, job: str) -> Reply:
        body = call.json()
        found = own(call, job)
        state, result, error = str(body.get("state")), body.get("result"), body.get("error")
        lease = _lease(body)
        if state == "succeeded" and found["kind"] == "app-compile":
            # the platform releases the compiled app itself: a worker's token cannot
            try:
                result = service.release_artifact(found, lease, result)
            except Refused as exc:
                if exc.id == "conflict":
                    raise
                state, error = "failed", f"the compiled app was not released: {exc.message}"
        done = jobs.finish(job, lease, state, result, error)
        jobs.log(done["id"], [f"{done['state']}" + (f": {done['error']}" if done["error"] else "")])
        service.on_finished(done)
        return 200, done

    def jobs_requeue(call: Call, job: str) -> Reply:
        body = call.json()
        own(call, job)
        again = jobs.requeue(job, _lease(body))
        if again is None:
            raise ApiError(409, "conflict", "the job is not running")
        jobs.log(
            again["id"],
            [f"given back by its worker ({body.get('reason') or 'stopping'}); {again['state']}"],
        )
        if again["state"] == "queued":
            service._resend(again)
        else:
            service.on_finished(again)
        return 200, again

    def jobs_source(call: Call, job: str) -> Reply:
        found = own(call, job)
        sha = found["params"].get("source_blob")
        path = service.source_path(sha) if sha else None
        if path is None or not path.is_file():
            raise not_found("job source")
        return 200, Stream(file_chunks(path), "application/gzip")

    def jobs_sandbox(call: Call, job: str) -> Reply:
        body = call.json()
        found = own(call, job)
        lease = _lease(body)
        command, directory, env = body.get("command"), body.get("dir"), body.get("env") or {}
        if (
            not isinstance(command, str)
            or not command.strip()
            or not isinstance(directory, str)
            or not isinstance(env, dict)
        ):
            raise invalid(
                "command (a shell line), dir (a directory under /build) and env "
                "(an object) are required"
            )
        return 200, service.run_sandbox(
            found, lease, command, directory, {str(k): str(v) for k, v in env.items()}
        )

    def jobs_artifact(call: Call, job: str) -> Reply:
        found = own(call, job)
        lease = call.query_str("lease")
        with call.receive_body("artifact") as (sha, size, upload):
            return 201, service.store_artifact(found, lease, upload, sha, size)

    def own_stage(call: Call, key: str) -> dict[str, Any]:
        # each app has its own stage store: another app's stages do not exist for a
        # dyno; the platform's token sees them all
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise not_found("stage")
        app_id = call.principal.app_id
        if call.principal.platform:
            app = call.query_str("app")
            app_id = service.store.app(app)["id"] if app else None
        stage = jobs.stage(key, app_id)
        if stage is None:
            raise not_found("stage")
        return stage

    def stages_info(call: Call, key: str) -> Reply:
        stage = dict(own_stage(call, key))
        # the tests its job ran (a local bootstrap that fetches it records them)
        stage["tests"] = None
        if stage["job_id"]:
            result = jobs.get(stage["job_id"]).get("result") or {}
            stage["tests"] = result.get("tests")
        return 200, stage

    def stages_blob(call: Call, key: str) -> Reply:
        stage = own_stage(call, key)
        return 200, Stream(
            file_chunks(service.stage_blob(stage["blob_sha256"])), "application/gzip"
        )

    def stages_put(call: Call, key: str) -> Reply:
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise not_found("stage")
        q = {k: (v or [""])[0] for k, v in call.query.items()}
        digest, files = q.get("tree_digest", ""), q.get("files", "")
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not files.isdigit():
            raise invalid("tree_digest (64 hex) and files (a count) are required")
        if q.get("job"):
            job = own(call, q["job"])
            if job["state"] in FINAL:
                raise ApiError(409, "conflict", f"job {job['id']} is already {job['state']}")
            app, job_id = job["app"]["name"], job["id"]
        elif call.principal.platform and q.get("app"):  # a local bootstrap's stages
            app, job_id = service.store.app(q["app"])["name"], None
        else:
            raise invalid(
                "job (the stage job that built it) is required; the platform's "
                "token may give app instead"
            )
        with call.receive_body("stage") as (sha, size, upload):
            stage = service.store_stage(app, key, job_id, digest, int(files), upload, sha, size)
        return 201, stage

    return [
        Endpoint("POST", "/apps/{app}/jobs", jobs_create),
        Endpoint("GET", "/apps/{app}/jobs", jobs_list, DYNO),
        Endpoint("GET", "/apps/{app}/jobs/{job}", jobs_info, DYNO),
        Endpoint("POST", "/apps/{app}/jobs/{job}/actions/cancel", jobs_cancel),
        Endpoint("POST", "/jobs/{job}/claim", jobs_claim, DYNO),
        Endpoint("POST", "/jobs/{job}/heartbeat", jobs_heartbeat, DYNO),
        Endpoint("POST", "/jobs/{job}/finish", jobs_finish, DYNO),
        Endpoint("POST", "/jobs/{job}/requeue", jobs_requeue, DYNO),
        Endpoint("POST", "/jobs/{job}/sandbox", jobs_sandbox, DYNO),
        Endpoint("PUT", "/jobs/{job}/artifact", jobs_artifact, DYNO),
        Endpoint("GET", "/jobs/{job}/source", jobs_source, DYNO),
        Endpoint("GET", "/stages/{key}", stages_info, DYNO),
        Endpoint("GET", "/stages/{key}/blob", stages_blob, DYNO),
        Endpoint("PUT", "/stages/{key}", stages_put, DYNO),
    ]
