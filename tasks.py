"""selfhost's Invoke entry point: assembles the task collections, nothing more.

Run ``invoke --list`` for the tasks and ``invoke --help TASK`` for their options.
Errors become exit codes in one place, ``selfhost.cli.base.task``.
"""

from invoke import Collection

from selfhost.cli import jobs, platform, stages
from selfhost.cli.base import accept_assignments
from selfhost.config import DEFAULTS

ns = Collection()
ns.add_task(stages.bootstrap)
ns.add_task(stages.stack)
ns.add_task(stages.diff_stages)
ns.add_task(stages.ddc)
ns.add_task(stages.challenge)
ns.add_task(stages.verify)
ns.add_task(platform.slug)
ns.add_task(platform.release)
ns.add_task(platform.releases)
ns.add_task(platform.rollback)
ns.add_task(platform.config)
ns.add_task(platform.run)
ns.add_task(platform.scale)
ns.add_task(platform.logs)
ns.add_task(platform.open_, "open")

ps = Collection("ps")
ps.add_task(platform.ps_list, "list", default=True)
ps.add_task(platform.ps_stop, "stop")
ns.add_collection(ps)

apps = Collection("apps")
apps.add_task(platform.apps_list, "list", default=True)
apps.add_task(platform.apps_create, "create")
ns.add_collection(apps)

work = Collection("jobs")
work.add_task(jobs.submit, "submit")
work.add_task(jobs.list_, "list", default=True)
work.add_task(jobs.show, "show")
work.add_task(jobs.cancel, "cancel")
ns.add_collection(work)

slugs = Collection("slugs")
slugs.add_task(platform.slugs_download, "download")
ns.add_collection(slugs)

stage_store = Collection("stages")
stage_store.add_task(platform.stages_download, "download")
ns.add_collection(stage_store)

daemon = Collection("platform")
daemon.add_task(platform.platform_up, "up")
daemon.add_task(platform.platform_down, "down")
daemon.add_task(platform.platform_status, "status")
ns.add_collection(daemon)

router = Collection("router")
router.add_task(platform.router_up, "up")
router.add_task(platform.router_down, "down")
ns.add_collection(router)
ns.configure({"selfhost": DEFAULTS})

# `invoke scale --app a web=1 worker=3`: Invoke would read web=1 as a task name.
accept_assignments({"scale": platform.scale, "config": platform.config})
