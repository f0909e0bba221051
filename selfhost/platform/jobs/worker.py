"""The compile worker: the ``worker`` process type of every compiler slug.

``bin/worker`` runs ``python3 -m selfhost.platform.jobs.worker`` in the dyno, on the stack's
Python, with huey, redis and requests vendored in the slug (``/app/vendor/python``). It
is a Huey consumer (one job at a time) on the app's queue (``SELFHOST_QUEUE_URL``) that
reports to the platform API (``SELFHOST_API_URL`` and ``SELFHOST_API_TOKEN``):

1. claim the message's ``(job, attempt)``; a 409 means another attempt owns the job,
   and the message is dropped (so duplicates and stale re-queues run nothing);
2. run the job's commands in their own process group, sending a heartbeat with the
   progress and new log lines every second; the answer says whether to cancel;
3. kill the whole process group on cancel, on timeout, when the lease is lost and
   when the worker is stopped (SIGTERM: the job is handed back to the queue first);
4. report the outcome with the lease: it is recorded once.

Job kinds are described in ``selfhost/platform/jobs/service.py``; everything is built under
``/build`` (the dyno's scratch space, as in stage builds), at the slug's prefix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selfhost.archive import ArchiveError
from selfhost.archive import extract as safe_extract
from selfhost.hashing import scan_tree, tree_digest
from selfhost.platform.slugs.slug import tar_tree
from selfhost.stages.builder import (
    BuilderRef,
    Outcome,
    OutputProblem,
    StageSpec,
    StepFailed,
    build,
)
from selfhost.stages.rebuild import dyno_work, slug_meta, slug_recipe, slug_sources
from selfhost.stages.runners import DynoRunner

APP = Path("/app")
BUILD = Path("/build")
HEARTBEAT_SECONDS = 1.0
KILL_GRACE = 1.0
log = logging.getLogger("selfhost.worker")


class JobEnded(Exception):
    """The job's commands were stopped: ``why`` is cancelled, timeout, lost or stopping."""

    def __init__(self, why: str, message: str):
        super().__init__(message)
        self.why = why


class JobFailed(Exception):
    """The job ran and failed; ``result`` is still reported."""

    def __init__(self, message: str, result: dict[str, Any] | None = None):
        super().__init__(message)
        self.result = result


class Api:
    """The few platform API calls a worker makes (JSON via PlatformClient, blobs raw)."""

    def __init__(self, url: str, token: str):
        import requests

        from selfhost.platform.client import PlatformClient

        self.client = PlatformClient(url, token, timeout=30)
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        return self.client.request(method, path, body, timeout=timeout)

    def download(self, path: str, target: Path) -> bool:
        """GET a blob to ``target``; False on 404."""
        with self.session.get(f"{self.url}{path}", stream=True, timeout=(10, 600)) as resp:
            if resp.status_code == 404:
                return False
            resp.raise_for_status()
            with open(target, "wb") as out:
                for chunk in resp.iter_content(1 << 20):
                    out.write(chunk)
        return True

    def upload(self, path: str, source: Path, params: dict[str, Any]) -> Any:
        with open(source, "rb") as f:
            resp = self.session.put(
                f"{self.url}{path}",
                data=f,
                params=params,
                timeout=600,
                headers={"Content-Length": str(source.stat().st_size)},
            )
        resp.raise_for_status()
        return resp.json()


class Job:
    """One claimed attempt: runs commands, keeps the heartbeat, reports once."""

    def __init__(self, worker: Worker, claim: dict[str, Any]):
        self.worker = worker
        self.api = worker.api
        self.data = claim["job"]
        self.lease = claim["lease"]
        self.claim = claim
        self.id = self.data["id"]
        self.params = self.data["params"]
        self.deadline = time.monotonic() + float(self.data["timeout"])
        self.progress_text = "starting"
        self.lines: list[str] = []
        self.lines_lock = threading.Lock()
        self.ended: JobEnded | None = None  # set by the heartbeat or the stop handler
        self.process: subprocess.Popen[bytes] | None = None
        self.done = threading.Event()
        self.handed_back = False

    # ------------------------------------------------------------------ reporting
    def say(self, line: str) -> None:
        with self.lines_lock:
            self.lines.append(line)

    def progress(self, text: str) -> None:
        self.progress_text = text
        self.say(f"==> {text}")

    def _beat(self) -> None:
        with self.lines_lock:
            lines, self.lines = self.lines, []
        try:
            answer = self.api.call(
                "POST",
                f"/jobs/{self.id}/heartbeat",
                {
                    "lease": self.lease,
                    "progress": self.progress_text,
                    "log": lines,
                    "worker": self.worker.name,
                },
            )
        except Exception as exc:  # decide below whether it is fatal
            if getattr(exc, "status", None) == 409:
                self.end("lost", "the platform took the job back (lease lost)")
            else:
                with self.lines_lock:
                    self.lines[:0] = lines  # the platform is unreachable: keep them
            return
        if answer.get("cancel"):
            self.end("cancelled", "cancelled")

    def heartbeat(self) -> None:
        while not self.done.wait(HEARTBEAT_SECONDS):
            self._beat()
            if time.monotonic() > self.deadline:
                self.end("timeout", f"timed out after {self.data['timeout']:g}s")

    def end(self, why: str, message: str) -> None:
        """Stop the job's commands (the whole process group)."""
        if self.ended is None:
            self.ended = JobEnded(why, message)
        self.kill()

    def kill(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(KILL_GRACE)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group

    def report(self, state: str, result: Any = None, error: str | None = None) -> None:
        self.done.set()
        self._beat()  # flush the log
        try:
            self.api.call(
                "POST",
                f"/jobs/{self.id}/finish",
                {"lease": self.lease, "state": state, "result": result, "error": error},
            )
        except Exception as exc:  # a lost lease: someone else owns the job
            log.warning("job %s: the outcome was not recorded: %s", self.id, exc)

    # ------------------------------------------------------------------ commands
    def sandbox(self, script: str, env: dict[str, str], cwd: Path, what: str) -> None:
        """Run untrusted commands (an app's build) in a sandbox the platform starts for
        this job: ``cwd`` (under /build) writable, /app read-only, no network and no
        token. Its output goes to the job's log on the platform's side."""
        if self.ended:
            raise self.ended
        answer = self.api.call(
            "POST",
            f"/jobs/{self.id}/sandbox",
            {"lease": self.lease, "command": script, "dir": str(cwd), "env": env},
            timeout=float(self.data["timeout"]) + 60,
        )
        if self.ended:  # cancelled or timed out meanwhile: the platform killed it
            raise self.ended
        stopped = answer.get("stopped")
        if stopped:  # the platform stopped it (a cancel, a timeout, a lost lease)
            self.end(
                stopped,
                {
                    "cancelled": "cancelled",
                    "timeout": f"timed out after {self.data['timeout']:g}s",
                }.get(stopped, "the platform took the job back"),
            )
            assert self.ended is not None
            raise self.ended
        if answer["exit_code"] != 0:
            raise JobFailed(f"{what} failed with exit code {answer['exit_code']}")

    def run(self, script: str, env: dict[str, str], cwd: Path, what: str) -> None:
        """Run a shell script in its own process group; its output goes to the job log."""
        if self.ended:
            raise self.ended
        # umask 022, as in stage sandboxes: modes are part of a tree's digest.
        self.process = subprocess.Popen(
            ["/bin/sh", "-ec", f"umask 022\n{script}"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.say(raw.decode("utf-8", "replace").rstrip("\n"))
        code = self.process.wait()
        if self.ended:  # killed on purpose
            raise self.ended
        if self.worker.stopping.is_set():  # SIGTERM reached the commands too
            raise JobEnded("stopping", "the worker is stopping")
        if code != 0:
            raise JobFailed(f"{what} failed with exit code {code}")


class Worker:
    """The Huey task's body: claim, run, report."""

    def __init__(self, api: Api, name: str, dyno_id: str):
        self.api = api
        self.name = name
        self.dyno_id = dyno_id
        self.current: Job | None = None
        self.stopping = threading.Event()
        #: Enqueue a message again (the registered Huey task), set by main().
        self.resend: Callable[[int, int], Any] | None = None
        self.park: Callable[[], Any] = threading.Event().wait

    def run_job(self, job_id: int, attempt: int) -> None:
        if self.stopping.is_set():
            # SIGTERM came while Huey's worker thread was already taking this message
            # (often the re-queue of the job this worker just handed back): send it again,
            # unclaimed, for another worker, and take no more messages (the thread parks
            # until the process exits; a re-queue that this thread would pop again at
            # once would be lost when it does).
            if self.resend is not None:
                self.resend(job_id, attempt)
                log.info("job %s attempt %s: sent back to the queue (stopping)", job_id, attempt)
            self.park()
            return
        try:
            claim = self.api.call(
                "POST",
                f"/jobs/{job_id}/claim",
                {"attempt": attempt, "worker": self.name, "dyno": self.dyno_id},
            )
        except Exception as exc:
            if getattr(exc, "status", None) == 409:
                log.info("job %s attempt %s: nothing to do (%s)", job_id, attempt, exc)
                return
            raise
        job = Job(self, claim)
        self.current = job
        beat = threading.Thread(target=job.heartbeat, daemon=True)
        beat.start()
        log.info("job %s (%s) attempt %s: started", job_id, job.data["kind"], attempt)
        try:
            result = RUNNERS[job.data["kind"]](job)
        except JobEnded as ended:
            if ended.why in ("cancelled", "timeout"):
                job.report("cancelled" if ended.why == "cancelled" else "failed", error=str(ended))
            elif ended.why == "stopping":
                self.hand_back(job)
            log.info("job %s: %s", job_id, ended)  # lost: not ours to report
        except JobFailed as exc:
            if self.stopping.is_set():  # SIGTERM killed the commands: not a failure
                self.hand_back(job)
                return
            job.say(f"failed: {exc}")
            job.report("failed", result=exc.result, error=str(exc))
        except Exception as exc:  # a bug or a broken input: report it
            log.exception("job %s: worker error", job_id)
            job.report("failed", error=f"worker error: {exc!r}")
        else:
            if self.stopping.is_set() or job.ended:
                self.hand_back(job)
            else:
                job.report("succeeded", result=result)
                log.info("job %s: succeeded", job_id)
        finally:
            job.done.set()
            self.current = None

    def stop(self) -> None:
        """SIGTERM, the job still running: give it back to the queue, kill its commands."""
        self.stopping.set()
        job = self.current
        if job is not None:
            self.hand_back(job)

    def hand_back(self, job: Job) -> None:
        """Give the job back to the queue (once), then make sure its commands are gone."""
        job.ended = job.ended or JobEnded("stopping", "the worker is stopping")
        if not job.handed_back:
            job.handed_back = True
            try:
                self.api.call(
                    "POST",
                    f"/jobs/{job.id}/requeue",
                    {"lease": job.lease, "reason": f"{self.name} stopping (SIGTERM)"},
                )
                log.info("job %s: handed back to the queue", job.id)
            except Exception as exc:  # the platform takes it back when the dyno exits
                log.warning("job %s: could not hand it back: %s", job.id, exc)
        job.kill()


# --------------------------------------------------------------------------- job kinds


def _jobs() -> str:
    return str(os.cpu_count() or 1)


def _distcc(job: Job, env: dict[str, str], variable: str) -> dict[str, str]:
    """Route the compiles of the compiler named by ``env[variable]`` (BUILDER) to the
    app's distccd dynos (plain mode, no fallback): a wrapper named like the compiler,
    first in PATH (and in ``variable`` when the compiler is named by path). ``JOBS`` is
    the hosts' total slots (so every host gets work), unless the job sets it."""
    builder = env[variable]
    hosts = job.claim.get("distcc_hosts") or []
    if not hosts:
        raise JobFailed(
            "distcc was asked for but the app has no running distccd dynos "
            "(invoke scale --app APP distccd=2)"
        )
    wrappers = BUILD / "distcc-bin"
    wrappers.mkdir(parents=True, exist_ok=True)
    (BUILD / "distcc").mkdir(parents=True, exist_ok=True)
    real = builder if builder.startswith("/") else shutil.which(builder) or builder
    wrapper = wrappers / Path(builder).name
    wrapper.write_text(f'#!/bin/sh\nexec distcc {real} "$@"\n')
    wrapper.chmod(0o755)
    slots = sum(int(h.rpartition("/")[2]) if "/" in h else 2 for h in hosts)
    env = dict(env)
    env.update(
        {
            "DISTCC_HOSTS": " ".join(hosts),
            "DISTCC_FALLBACK": "0",
            "DISTCC_DIR": str(BUILD / "distcc"),
            "DISTCC_SKIP_LOCAL_RETRY": "1",
            "PATH": f"{wrappers}:{env['PATH']}",
            "JOBS": str(job.params.get("jobs") or slots),
        }
    )
    if builder.startswith("/"):
        env[variable] = str(wrapper)
    job.say(f"distcc: {builder} compiles go to {' '.join(hosts)} (JOBS={env['JOBS']})")
    return env


def build_stage(job: Job, spec: StageSpec, builder_tree: Path, label: str) -> Outcome:
    """Build a stage with the one stage builder, this dyno being the runner; the job's
    cancel and timeout kill the running step's process group."""
    meta = slug_meta()
    sources = slug_sources(meta)
    missing = [str(p) for p in sources.values() if not p.is_dir()]
    if missing:
        raise JobFailed(
            f"this slug carries no source of {spec.recipe.name} (the recipe says "
            "[slug] source = false): it cannot rebuild itself"
        )
    work = dyno_work(sources)
    env = spec.environment(str(job.params.get("jobs") or _jobs()))
    if job.params.get("distcc"):
        env = _distcc(job, env, "BUILDER")

    def watch(process: subprocess.Popen[bytes] | None) -> None:
        job.process = process
        if job.ended and process is not None:  # cancelled while the step started
            job.kill()

    runner = DynoRunner(echo=job.say, started=watch)

    @contextlib.contextmanager
    def step(name: str) -> Iterator[None]:
        if job.ended:
            raise job.ended
        job.progress(f"{label}: {name}")
        yield

    try:
        outcome = build(
            spec,
            runner,
            work,
            sources,
            builder_tree,
            jobs=env["JOBS"],
            tests=bool(job.params.get("test", True)),
            patches=tuple(meta.get("patches", ())),
            step=step,
            env=env,
        )
    except StepFailed as exc:
        if job.ended:
            raise job.ended from None
        if job.worker.stopping.is_set():
            raise JobEnded("stopping", "the worker is stopping") from None
        raise JobFailed(f"{label} {exc.step} failed with exit code {exc.exit_code}") from None
    except OutputProblem as exc:
        raise JobFailed(f"{label}: {exc}") from None
    if job.ended:
        raise job.ended
    return outcome


def self_rebuild(job: Job) -> dict[str, Any]:
    """Rebuild the compiler with the slug's own compiler; compare with the slug's."""
    meta = slug_meta()
    recipe = slug_recipe(meta)
    started = time.monotonic()
    spec = StageSpec(
        recipe=recipe,
        stage=meta["stage"] + 1,
        sources=meta["sources"],
        stack=job.claim.get("stack") or meta["built_on"],
        builder=BuilderRef(
            tree_digest=meta["tree_digest"], stage=meta["stage"], input_hash=meta["input_hash"]
        ),
        distcc=bool(job.params.get("distcc")),
    )
    outcome = build_stage(job, spec, Path(recipe.prefix), "self-rebuild")
    job.progress("compare with the slug's compiler")
    rebuilt = {e.path: e.to_json() for e in outcome.files}
    original = {
        f"{recipe.prefix.lstrip('/')}/{e.path}": e.to_json() for e in scan_tree(Path(recipe.prefix))
    }
    prefix = recipe.prefix.lstrip("/") + "/"
    differing = sorted(
        p
        for p in set(rebuilt) | set(original)
        if p.startswith(prefix) and rebuilt.get(p) != original.get(p)
    )
    identical = outcome.tree_digest == meta["tree_digest"]
    job.say(
        "identical: the rebuilt compiler equals the slug's, byte for byte"
        if identical
        else f"DIFFERENT: tree digest {outcome.tree_digest[:12]} vs the slug's "
        f"{meta['tree_digest'][:12]}; {len(differing)} file(s) differ"
    )
    return {
        "identical": identical,
        "tree_digest": outcome.tree_digest,
        "slug_tree_digest": meta["tree_digest"],
        "input_hash": spec.key(),
        "slug_input_hash": meta["input_hash"],
        "files": len(outcome.files),
        "differences": differing[:50],
        "seconds": round(time.monotonic() - started, 2),
        "builder": f"{recipe.prefix} ({meta['compiler']} {meta['version']}, stage "
        f"{meta['stage']} of the slug)",
    }


def stage(job: Job) -> dict[str, Any]:
    """Build stage k with the given builder, unless its input hash is already stored."""
    meta = slug_meta()
    recipe = slug_recipe(meta)
    k, builder = job.params["stage"], job.params["builder"]
    builder_tree = Path(recipe.prefix)
    if builder == "stage0":
        ref = BuilderRef(stage0=recipe.stage0_builder)
    elif builder == "slug":
        ref = BuilderRef(
            tree_digest=meta["tree_digest"], stage=meta["stage"], input_hash=meta["input_hash"]
        )
    else:
        info = job.api.call("GET", f"/stages/{builder}")
        ref = BuilderRef(tree_digest=info["tree_digest"], input_hash=builder)
        job.progress(f"stage{k}: fetch the builder (stage {builder[:12]})")
        fetched = BUILD / "builder"
        shutil.rmtree(fetched, ignore_errors=True)
        archive = BUILD / "builder.tar.gz"
        job.api.download(f"/stages/{builder}/blob", archive)
        try:
            safe_extract(archive, fetched, what=f"stage {builder[:12]}")
        except ArchiveError as exc:
            raise JobFailed(f"the stored builder stage is unusable: {exc}") from None
        archive.unlink()
        actual = tree_digest(scan_tree(fetched))  # the whole DESTDIR, as recorded
        if actual != info["tree_digest"]:
            raise JobFailed(
                f"the stored builder stage {builder[:12]} has tree digest "
                f"{actual[:16]}, not the recorded {info['tree_digest'][:16]}: "
                "refused"
            )
        builder_tree = fetched / recipe.prefix.lstrip("/")
    spec = StageSpec(
        recipe=recipe,
        stage=k,
        sources=meta["sources"],
        stack=job.claim.get("stack") or meta["built_on"],
        builder=ref,
        distcc=bool(job.params.get("distcc")),
    )
    key = spec.key()
    base = {
        "stage": k,
        "input_hash": key,
        "builder": builder,
        "slug_tree_digest": meta["tree_digest"],
    }
    stored = None
    if not job.params.get("force"):
        try:
            stored = job.api.call("GET", f"/stages/{key}")
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
    if stored:
        job.say(
            f"stage{k}: cache hit ({key[:12]}, stored by "
            f"{'job ' + str(stored['job_id']) if stored['job_id'] else 'a bootstrap'})"
        )
        return {
            **base,
            "cache": "hit",
            "tree_digest": stored["tree_digest"],
            "files": stored["files"],
            "built_by": stored["job_id"],
        }
    started = time.monotonic()
    outcome = build_stage(job, spec, builder_tree, f"stage{k}")
    job.progress(f"stage{k}: store {key[:12]}")
    archive = BUILD / "stage.tar.gz"
    tar_tree(BUILD / "out", archive)  # the whole DESTDIR: the platform checks it
    job.api.upload(
        f"/stages/{key}",
        archive,
        {"job": job.id, "tree_digest": outcome.tree_digest, "files": len(outcome.files)},
    )
    archive.unlink()
    return {
        **base,
        "cache": "miss",
        "tree_digest": outcome.tree_digest,
        "files": len(outcome.files),
        "tests": outcome.tests,
        "seconds": round(time.monotonic() - started, 2),
    }


def app_compile(job: Job) -> dict[str, Any]:
    """Compile an app with the slug's compiler into a slug; release it to the target."""
    from selfhost.errors import SlugError
    from selfhost.platform.slugs.shipped import add_shipped
    from selfhost.platform.slugs.slug import SlugContents, pack, parse_procfile, read_slugignore
    from selfhost.platform.slugs.slug import unpack as unpack_slug

    meta = slug_meta()
    started = time.monotonic()
    work = BUILD / "app-compile"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    job.progress("fetch the app")
    archive = work / "source.tar.gz"
    if not job.api.download(f"/jobs/{job.id}/source", archive):
        raise JobFailed("the platform has no source for this job")
    app_dir = unpack_slug(archive, work / "src")
    procfile = app_dir / "Procfile"
    try:
        process_types = parse_procfile(procfile.read_text(), "Procfile")
    except Exception as exc:  # SlugError or a missing file
        raise JobFailed(f"the app's Procfile: {getattr(exc, 'message', exc)}") from None
    compiler = meta.get("compiler_command") or f"{meta['prefix']}/bin/{meta['compiler']}"
    env = {
        "PATH": f"{meta['prefix']}/bin:/usr/local/bin:/usr/bin:/bin",
        "CC": compiler,
        "SOURCE_DATE_EPOCH": "0",
        "JOBS": str(job.params.get("jobs") or _jobs()),
    }
    if job.params.get("distcc"):
        raise JobFailed(
            "app-compile builds run without network (the app's build is "
            "untrusted), so they cannot use distcc; distcc serves stage builds"
        )
    for name in ("Makefile", "makefile", "GNUmakefile"):
        if (app_dir / name).is_file():
            job.progress(f"make CC={compiler} (in a sandbox of its own)")
            job.sandbox('make -j"$JOBS" CC="$CC"', env, app_dir, "make")
            break
    else:
        job.say("no Makefile: nothing to compile, the app is packed as it is")
    job.progress("pack the slug")
    contents = SlugContents()
    contents.add_tree(app_dir, ignore=[*read_slugignore(app_dir), ".slugignore"])
    try:
        add_shipped(contents)  # bin/fork, as in every slug
    except SlugError as exc:
        raise JobFailed(exc.message) from None
    slug_path = work / "slug.tgz"
    info = pack(contents, slug_path, mtime=0, process_types=process_types)
    job.progress(f"upload the slug ({info.size} bytes); the platform releases it")
    job.api.upload(f"/jobs/{job.id}/artifact", slug_path, {"lease": job.lease})
    return {
        "checksum": info.checksum,
        "size": info.size,
        "compiler": compiler,
        "process_types": process_types,
        "seconds": round(time.monotonic() - started, 2),
    }


def bootstrap(job: Job) -> dict[str, Any]:  # pragma: no cover - the platform fans it out
    raise JobFailed("bootstrap jobs are run by the platform as stage jobs")


RUNNERS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "self-rebuild": self_rebuild,
    "stage": stage,
    "app-compile": app_compile,
    "bootstrap": bootstrap,
}


# --------------------------------------------------------------------------- consumer


def main() -> int:
    from huey.consumer import Consumer
    from huey.signals import SIGNAL_INTERRUPTED

    from selfhost.platform.jobs.queue import make_huey, register

    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s"
    )
    missing = [
        v
        for v in ("SELFHOST_API_URL", "SELFHOST_API_TOKEN", "SELFHOST_QUEUE_URL", "SELFHOST_APP")
        if not os.environ.get(v)
    ]
    if missing:
        print(
            f"worker: {', '.join(missing)} not set: workers run as the worker process "
            "type of a released compiler slug (invoke scale --app APP worker=1)",
            file=sys.stderr,
        )
        return 2
    name = os.environ.get("DYNO", "worker")
    api = Api(os.environ["SELFHOST_API_URL"], os.environ["SELFHOST_API_TOKEN"])
    worker = Worker(api, name, os.environ.get("SELFHOST_DYNO_ID", name))
    huey = make_huey(os.environ["SELFHOST_QUEUE_URL"], os.environ["SELFHOST_APP"])
    worker.resend = register(huey, worker.run_job)

    @huey.signal(SIGNAL_INTERRUPTED)
    def interrupted(signal_name: str, task: Any, *args: Any) -> None:
        worker.stop()

    class WorkerConsumer(Consumer):  # type: ignore[misc]
        def _handle_signal(self, signum: int, frame: Any) -> None:
            worker.stopping.set()  # before anything else: no report from a killed job
            super()._handle_signal(signum, frame)

    tempfile.tempdir = str(BUILD)
    consumer = WorkerConsumer(
        huey,
        workers=1,
        periodic=False,
        initial_delay=0.05,
        backoff=1.5,
        max_delay=0.5,
        check_worker_health=True,
    )
    scheme = os.environ["SELFHOST_QUEUE_URL"].split(":", 1)[0]
    log.info(
        "worker %s: %s %s from %s, queue %s",
        name,
        os.environ.get("SELFHOST_COMPILER"),
        slug_meta().get("version"),
        os.environ.get("SELFHOST_PREFIX"),
        scheme,
    )
    consumer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
