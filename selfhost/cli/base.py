"""Shared plumbing for tasks: the error-to-exit-code decorator and settings access."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import invoke
from invoke import Context, Exit

from selfhost.config import Settings
from selfhost.errors import Interrupted, SelfhostError

if TYPE_CHECKING:
    from selfhost.ui import UI


def task(*args: Any, **kwargs: Any) -> Any:
    """Like ``invoke.task``, but selfhost errors become a message and their exit code.

    A :class:`SelfhostError` prints its rendered text (what, where, expected, what to
    do) and exits with the class's code; Ctrl-C exits 130. Anything else is a bug and
    keeps its traceback.
    """

    def decorate(body: Callable[..., Any]) -> Any:
        @functools.wraps(body)
        def wrapper(c: Context, *a: Any, **kw: Any) -> Any:
            try:
                return body(c, *a, **kw)
            except SelfhostError as exc:
                raise Exit(exc.render(), code=exc.exit_code) from None
            except KeyboardInterrupt:
                raise Exit(Interrupted("interrupted").render(), code=Interrupted.exit_code
                           ) from None

        return invoke.task(**kwargs)(wrapper)

    if len(args) == 1 and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate


def settings(c: Context, **overrides: Any) -> Settings:
    """The validated settings of this invocation, with command-line overrides applied."""
    section = c.config.get("selfhost")
    base = Settings.from_config(dict(section) if section is not None else None)
    return base.with_overrides(**overrides)


def argv_after_dashdash() -> list[str]:
    """The words after the first ``--`` on the command line, quoting intact.

    Invoke joins ``c.remainder`` with spaces and loses the quoting, so
    ``-- sh -c 'exit 3'`` would arrive as ``sh -c exit 3``; sys.argv keeps the words.
    """
    import sys

    return sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []


ASSIGNMENT = re.compile(r"^[A-Za-z_][\w.-]*=")


def accept_assignments(tasks: dict[str, Any]) -> None:
    """Let ``invoke scale --app a web=1 worker=3`` and ``invoke config --app a K=V L=W`` work.

    Invoke reads a bare word after a task's options as the next task's name, so the
    second assignment would be an unknown task. Before Invoke parses the tasks' own
    arguments, this turns each bare ``K=V`` word that follows one of ``tasks`` into
    ``--set K=V`` (their repeatable option). Option values and words after ``--`` are
    left alone. Without Invoke's program object (another entry point) it does nothing,
    and ``--set K=V`` or ``-- K=V`` still work.
    """
    try:
        from invoke.main import program

        unparsed = program.core.unparsed
    except (ImportError, AttributeError):
        return
    if not isinstance(unparsed, list):
        return
    boolean = {name: {f"--{a.name.replace('_', '-')}" for a in task.get_arguments()
                      if a.kind is bool} | {f"-{a.names[1]}" for a in task.get_arguments()
                                            if a.kind is bool and len(a.names) > 1}
               for name, task in tasks.items()}
    out: list[str] = []
    current: str | None = None
    takes_value = False
    for i, word in enumerate(unparsed):
        if word == "--":
            out += unparsed[i:]
            break
        if takes_value:
            out.append(word)
            takes_value = False
        elif word.startswith("-"):
            out.append(word)
            takes_value = current is not None and "=" not in word and \
                word not in boolean[current]
        elif current is not None and ASSIGNMENT.match(word):
            out += ["--set", word]
        else:
            current = word if word in tasks else None
            out.append(word)
    unparsed[:] = out


def make_ui(s: Settings, *, json: bool = False) -> UI:
    """The UI for a task: progress on stderr when the task prints JSON."""
    from selfhost.ui import UI

    return UI(json_mode=json, verbose=s.verbose)
