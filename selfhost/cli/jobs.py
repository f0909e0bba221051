"""Tasks of the compile-job domain: submit, list, show and cancel jobs (see jobs.py)."""

from __future__ import annotations

import time
from typing import Any

from invoke import Context

from selfhost.cli.base import make_ui, settings, task
from selfhost.cli.platform import API_HELP, client_for
from selfhost.errors import JobError, UsageError

POLL_SECONDS = 0.5


def _params(
    kind: str,
    *,
    stage: int | None,
    builder: str | None,
    stages: int | None,
    source: str | None,
    target: str | None,
    ref: str | None,
    no_test: bool,
    distcc: bool,
    force: bool = False,
    jobs: int | None = None,
) -> dict[str, Any]:
    """The job's parameters from the options, refusing those its kind does not take."""
    given = {
        "--stage": stage,
        "--builder": builder,
        "--stages": stages,
        "--source": source,
        "--target": target,
        "--ref": ref,
    }
    takes = {
        "self-rebuild": set(),
        "stage": {"--stage", "--builder"},
        "bootstrap": {"--stages"},
        "app-compile": {"--source", "--target", "--ref"},
    }[kind]
    wrong = [k for k, v in given.items() if v is not None and k not in takes]
    if wrong:
        raise UsageError(
            f"--kind {kind} does not take {', '.join(wrong)}",
            hint=f"{kind} takes {', '.join(sorted(takes)) or 'no such options'}",
        )
    params: dict[str, Any] = {k.lstrip("-"): v for k, v in given.items() if v is not None}
    if kind == "app-compile" and not (source and target):
        raise UsageError(
            "--kind app-compile needs --source (a git URL, a tarball URL or a "
            "directory with a Procfile) and --target (the app to release to)"
        )
    if kind != "app-compile" and no_test:
        params["test"] = False
    if distcc:
        params["distcc"] = True
    if force:
        if kind not in ("stage", "bootstrap"):
            raise UsageError(
                f"--kind {kind} does not take --force",
                hint="--force rebuilds stages the platform has stored: stage and bootstrap jobs",
            )
        params["force"] = True
    if jobs is not None:
        params["jobs"] = jobs
    return params


def _number(option: str, value: Any) -> int | None:
    """Invoke passes untyped options as strings: a whole number, or a clear error."""
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{option} is {value!r}; expected a whole number") from None


def describe(job: dict[str, Any]) -> str:
    """``job 12 (stage 2, child of 10)``: how a job is named in tables and messages."""
    text = f"job {job['id']} ({job['kind']}"
    if job["kind"] == "stage":
        text += f" {job['params'].get('stage')}"
    if job.get("parent"):
        text += f", child of {job['parent']}"
    return text + ")"


@task(
    help={
        "app": "the compiler app whose workers run the job",
        "kind": "self-rebuild, stage, app-compile or bootstrap (stage jobs 1..N, fanned out)",
        "stage": "stage: the stage number k (default 1)",
        "builder": "stage: stage0 (default for k=1), slug, or a stored stage's input hash",
        "stages": "bootstrap: how many stages (default 3)",
        "source": "app-compile: a git URL, a tarball URL or a directory with a Procfile",
        "target": "app-compile: the app to release the compiled slug to (created if needed)",
        "ref": "app-compile: a git branch, tag or commit",
        "no_test": "skip the recipe's test step",
        "distcc": "send compiles to the app's distccd dynos (plain mode, no fallback)",
        "force": "stage/bootstrap: build again even if the platform has the stage stored",
        "jobs": "make -j for the build (default: every slot of the worker and its distcc hosts)",
        "timeout": "seconds before the job's processes are killed (default 1800)",
        "wait": "follow the job's progress; exit 0 only if it succeeds",
        "json": "print the job as JSON (with --wait: when it has ended)",
        "api": API_HELP,
    }
)
def submit(
    c: Context,
    app: str,
    kind: str,
    stage: int | None = None,
    builder: str | None = None,
    stages: int | None = None,
    source: str | None = None,
    target: str | None = None,
    ref: str | None = None,
    no_test: bool = False,
    distcc: bool = False,
    force: bool = False,
    jobs: int | None = None,
    timeout: float | None = None,
    wait: bool = False,
    json: bool = False,
    api: str | None = None,
) -> None:
    """Submit a compile job to the app's workers (duplicates of a queued job are merged)."""
    import os

    s = settings(c)
    ui = make_ui(s, json=json)
    stage, stages = _number("--stage", stage), _number("--stages", stages)
    jobs = _number("--jobs", jobs)
    timeout = None if timeout is None else float(_number("--timeout", timeout) or 0)
    from selfhost.platform.jobs.service import KINDS  # imported here: `invoke` starts faster

    if kind not in KINDS:
        raise UsageError(f"--kind is {kind!r}; expected one of {', '.join(KINDS)}")
    params = _params(
        kind,
        stage=stage,
        builder=builder,
        stages=stages,
        source=source,
        target=target,
        ref=ref,
        no_test=no_test,
        distcc=distcc,
        force=force,
        jobs=jobs,
    )
    if source and os.path.isdir(source):
        params["source"] = os.path.abspath(source)
    body: dict[str, Any] = {"kind": kind, "params": params}
    if timeout is not None:
        body["timeout"] = timeout
    client = client_for(s, ui, api)[0]
    job = client.submit_job(app, body)
    if job.get("duplicate"):
        ui.info(
            f"{describe(job)} is already {job['state']} with the same input: not submitted again"
        )
    elif not json or wait:
        ui.info(f"{describe(job)} submitted: {job['state']}")
    if not wait:
        if json:
            ui.emit_json(job)
        return
    try:
        job = follow(client, ui, app, job, quiet=json)
    except KeyboardInterrupt:
        ui.info(
            f"stopped following; job {job['id']} goes on (invoke jobs.cancel --app "
            f"{app} {job['id']})"
        )
        raise
    if json:
        ui.emit_json(job)
    else:
        show_result(ui, job)
    if job["state"] != "succeeded":
        raise JobError(
            f"{describe(job)} {job['state']}: {job.get('error') or 'no reason given'}",
            hint=f"invoke jobs.show --app {app} --log 100 {job['id']}",
        )


def follow(client: Any, ui: Any, app: str, job: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    """Poll until the job ends; print its progress and new log lines as they come."""
    from selfhost.platform.jobs.service import FINAL

    seen = 0
    progress = None
    while True:
        job = client.job(app, job["id"], log=5000)
        lines = job.pop("log", [])
        if not quiet:
            for line in lines[seen:]:
                ui.info(f"  {line}")
            if job["progress"] != progress and job["state"] == "running":
                worker = (job.get("worker") or {}).get("name", "?")
                ui.info(f"[{job['id']}] {job['progress']} (on {worker}, attempt {job['attempt']})")
        seen = len(lines)
        progress = job["progress"]
        if job["state"] in FINAL:
            return job
        time.sleep(POLL_SECONDS)


def show_result(ui: Any, job: dict[str, Any]) -> None:
    result = job.get("result") or {}
    took = (
        f" in {job['finished'] - job['created']:.1f}s"
        if job.get("finished") and job.get("created")
        else ""
    )
    ui.info(
        f"{describe(job)} {job['state']}{took}" + (f": {job['error']}" if job.get("error") else "")
    )
    for key in ("identical", "fixpoint", "cache", "input_hash", "tree_digest", "target", "version"):
        if key in result:
            ui.info(f"  {key}: {result[key]}")


@task(
    help={
        "app": "the app",
        "state": "only jobs in this state (queued, running, ...)",
        "json": "print the jobs as JSON",
        "api": API_HELP,
    }
)
def list_(
    c: Context, app: str, state: str | None = None, json: bool = False, api: str | None = None
) -> None:
    """List an app's jobs, newest first, with their parent/child links."""
    s = settings(c)
    ui = make_ui(s, json=json)
    jobs = client_for(s, ui, api)[0].jobs(app, (state,) if state else ())
    if json:
        ui.emit_json(jobs)
        return
    rows = []
    for j in jobs:
        links = []
        if j.get("parent"):
            links.append(f"← {j['parent']}")
        if j.get("children"):
            links.append("→ " + ",".join(str(x) for x in j["children"]))
        took = ""
        if j.get("started"):
            took = f"{(j.get('finished') or time.time()) - j['started']:.1f}s"
        rows.append(
            (
                j["id"],
                j["kind"] + (f" {j['params']['stage']}" if j["kind"] == "stage" else ""),
                j["state"],
                " ".join(links) or "-",
                (j.get("worker") or {}).get("name", "-"),
                j["attempt"],
                took,
                (j.get("error") or j.get("progress") or "")[:40],
            )
        )
    ui.table(
        f"jobs of {app}",
        ["job", "kind", "state", "links", "worker", "attempt", "time", "progress"],
        rows,
    )


@task(
    positional=["job"],
    help={
        "app": "the app",
        "job": "the job's number",
        "log": "how many log lines to show (default 20)",
        "json": "print the job as JSON",
        "api": API_HELP,
    },
)
def show(
    c: Context, app: str, job: str, log: int = 20, json: bool = False, api: str | None = None
) -> None:
    """Show one job: state, progress, parent/children, result and its last log lines."""
    s = settings(c)
    ui = make_ui(s, json=json)
    found = client_for(s, ui, api)[0].job(app, job, log=log)
    if json:
        ui.emit_json(found)
        return
    show_result(ui, found)
    worker = found.get("worker") or {}
    ui.info(
        f"  progress: {found.get('progress')}  attempt: {found['attempt']}  worker: "
        f"{worker.get('name', '-')}"
    )
    if found.get("parent"):
        ui.info(f"  parent: job {found['parent']}")
    if found.get("children"):
        ui.info(f"  children: {', '.join(f'job {x}' for x in found['children'])}")
    for line in found.get("log", []):
        ui.info(f"  | {line}")


@task(positional=["job"], help={"app": "the app", "job": "the job's number", "api": API_HELP})
def cancel(c: Context, app: str, job: str, api: str | None = None) -> None:
    """Cancel a job: a queued one at once, a running one within a second (its whole
    process group is killed), a bootstrap with its stage jobs."""
    s = settings(c)
    ui = make_ui(s)
    found = client_for(s, ui, api)[0].cancel_job(app, job)
    if found["state"] == "running":
        ui.info(f"{describe(found)}: cancel requested; its worker stops it within a second")
    else:
        ui.info(f"{describe(found)}: {found['state']}")
