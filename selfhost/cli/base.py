"""Shared plumbing for tasks: the error-to-exit-code decorator and settings access."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import invoke
from invoke import Context, Exit

from selfhost.config import Settings
from selfhost.errors import Interrupted, SelfhostError, UsageError

if TYPE_CHECKING:
    from selfhost.stages.engine import Engine
    from selfhost.ui import UI


def task(*args: Any, **kwargs: Any) -> Any:
    """Like ``invoke.task``, but selfhost errors become a message and their exit code.

    A :class:`SelfhostError` prints its rendered text (what, where, expected, what to
    do) and exits with the class's code; Ctrl-C exits 130; an OSError about a path (a
    read-only or full file system) is a configuration error (exit 2). Anything else is
    a bug and keeps its traceback.
    """

    def decorate(body: Callable[..., Any]) -> Any:
        @functools.wraps(body)
        def wrapper(c: Context, *a: Any, **kw: Any) -> Any:
            try:
                return body(c, *a, **kw)
            except SelfhostError as exc:
                raise Exit(exc.render(), code=exc.exit_code) from None
            except OSError as exc:  # a path the environment made unusable (full, read-only)
                if exc.filename is None:
                    raise
                error = UsageError(
                    f"cannot use {exc.filename}: {exc.strerror}",
                    hint="check that the path exists, is writable and that "
                    "its file system has room; the paths come from the "
                    "selfhost settings (invoke.yaml, INVOKE_SELFHOST_*)",
                )
                raise Exit(error.render(), code=error.exit_code) from None
            except KeyboardInterrupt:
                raise Exit(
                    Interrupted("interrupted").render(), code=Interrupted.exit_code
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

    return sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []


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
    boolean = {
        name: {f"--{a.name.replace('_', '-')}" for a in task.get_arguments() if a.kind is bool}
        | {f"-{a.names[1]}" for a in task.get_arguments() if a.kind is bool and len(a.names) > 1}
        for name, task in tasks.items()
    }
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
            takes_value = current is not None and "=" not in word and word not in boolean[current]
        elif current is not None and ASSIGNMENT.match(word):
            out += ["--set", word]
        else:
            current = word if word in tasks else None
            out.append(word)
    unparsed[:] = out


def make_engine(s: Settings, ui: UI, name: str | None = None) -> Engine:
    """The sandbox engine of a task, locked down (its seccomp filter cached in the
    workspace)."""
    from selfhost.stages import engine, security
    from selfhost.workspace import unwritable

    try:
        locked = security.load(s.workspace / "security", s.sandbox_ids, log=ui.warn)
    except OSError as exc:
        raise unwritable(exc, s.workspace, "selfhost.workspace") from None
    return engine.make_engine(name or s.engine, locked, docker_url=s.docker_url, echo=ui.echo)


def make_ui(s: Settings, *, json: bool = False) -> UI:
    """The UI for a task: progress on stderr when the task prints JSON."""
    from selfhost.ui import UI

    return UI(json_mode=json, verbose=s.verbose)


class Executor(invoke.Executor):  # type: ignore[misc]
    """Invoke's executor, with bad ``INVOKE_SELFHOST_*`` values as clear errors.

    Invoke casts an environment variable to the type of the configured value before
    any task runs (``INVOKE_SELFHOST_JOBS=many`` would be ``int('many')``) and lets the
    ValueError escape as a traceback. invoke.yaml selects this class
    (``tasks.executor_class``); it loads the environment first and names the variable.
    """

    def execute(self, *tasks: Any) -> Any:
        from invoke.exceptions import UncastableEnvVar

        try:
            self.config.load_shell_env()
        except (ValueError, UncastableEnvVar):
            raise Exit(bad_environment(self.config).render(), code=UsageError.exit_code) from None
        return super().execute(*tasks)


def bad_environment(config: Any) -> UsageError:
    """The first ``INVOKE_SELFHOST_*`` variable that cannot take its setting's type."""
    import os

    section = config.get("selfhost") or {}
    for key, value in dict(section).items():
        name = f"INVOKE_SELFHOST_{key.upper()}"
        raw = os.environ.get(name)
        if raw is None or isinstance(value, bool | str) or value is None:
            continue
        kind = type(value)
        try:
            if kind in (list, tuple):
                raise TypeError("lists cannot come from the environment")
            kind(raw)
        except (TypeError, ValueError):
            expected = {
                int: "a whole number",
                float: "a number",
                list: "a list (set it in invoke.yaml: lists cannot come from the environment)",
            }.get(kind, kind.__name__)
            return UsageError(
                f"{name}={raw!r}: selfhost.{key} must be {expected}",
                hint=f"fix or unset {name} (the default is in invoke.yaml)",
            )
    return UsageError(
        "an INVOKE_* environment variable has a value of the wrong type",
        hint="compare them with the settings in invoke.yaml",
    )
