"""selfhost's Invoke entry point: assembles the task collections, nothing more.

Run ``invoke --list`` for the tasks and ``invoke --help TASK`` for their options.
Errors become exit codes in one place, ``selfhost.cli.base.task``.
"""

from invoke import Collection

from selfhost.cli import platform, stages
from selfhost.config import DEFAULTS

ns = Collection()
ns.add_task(stages.bootstrap)
ns.add_task(stages.stack)
ns.add_task(stages.diff_stages)
ns.add_task(platform.slug)
ns.configure({"selfhost": DEFAULTS})
