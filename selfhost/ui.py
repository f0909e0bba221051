"""All presentation, on top of rich: nested timed steps, echoed commands, tables.

On a terminal, steps are drawn as a live tree with a spinner and elapsed times. When
stdout is not a terminal (CI, pipes) every step start and end is one plain line, so
logs stay readable. In ``--json`` mode progress goes to stderr and stdout carries only
the JSON document.
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

STATUS_STYLE = {
    "running": ("…", "cyan"),
    "ok": ("✓", "green"),
    "cached": ("↺", "blue"),
    "failed": ("✗", "red"),
    "skipped": ("-", "dim"),
}


@dataclass
class Step:
    """A node of the step tree: a label, a status, timings and children."""

    label: str
    status: str = "running"
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    note: str = ""
    children: list[Step] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def finish(self, status: str, note: str | None = None) -> None:
        self.status = status
        self.ended = time.monotonic()
        if note is not None:
            self.note = note


class _StepTree:
    """Renders the step roots as a rich tree; rebuilt on every refresh of the Live."""

    def __init__(self, roots: list[Step]):
        self.roots = roots

    def __rich__(self) -> RenderableType:
        return Group(*(self._node(step) for step in self.roots))

    def _node(self, step: Step) -> Tree:
        tree = Tree(self._label(step), guide_style="dim")
        for child in step.children:
            tree.add(self._node(child))
        return tree

    @staticmethod
    def _label(step: Step) -> RenderableType:
        symbol, style = STATUS_STYLE.get(step.status, ("?", ""))
        text = Text.assemble(
            (f"{symbol} ", style),
            (step.label, "bold" if step.children else ""),
            (f"  {step.elapsed:6.1f}s", "dim"),
        )
        if step.note:
            text.append(f"  {step.note}", style="dim")
        if step.status == "running" and not step.children:
            return Group(Spinner("dots", text=text))
        return text


class UI:
    """The one place that writes to the terminal."""

    def __init__(
        self,
        *,
        json_mode: bool = False,
        verbose: bool = False,
        stream: IO[str] | None = None,
        force_plain: bool = False,
        force_terminal: bool | None = None,
    ):
        self.json_mode = json_mode
        self.verbose = verbose
        out = stream or (sys.stderr if json_mode else sys.stdout)
        self.console = Console(
            file=out, highlight=False, soft_wrap=True, force_terminal=force_terminal
        )
        self.plain = force_plain or not self.console.is_terminal
        self._roots: list[Step] = []
        self._stack: list[Step] = []
        self._lock = threading.Lock()
        self._live: Live | None = None

    # ---------------------------------------------------------------- messages
    def info(self, message: str) -> None:
        """A line of progress information."""
        self._print(message)

    def warn(self, message: str) -> None:
        """A warning: always shown, never fatal."""
        self._print(Text(f"warning: {message}", style="yellow"))

    def error(self, message: str) -> None:
        """An error message (the caller decides the exit code)."""
        self._print(Text(message, style="red"))

    def echo(self, argv: Sequence[str]) -> None:
        """Echo a command before it runs (verbose mode only), copy-pasteable."""
        if self.verbose:
            self._print(Text("+ " + shlex.join(argv), style="dim"))

    def _print(self, renderable: RenderableType) -> None:
        if self._live is not None:
            self._live.console.print(renderable)
        else:
            self.console.print(renderable)

    # ---------------------------------------------------------------- steps
    @contextmanager
    def live(self) -> Iterator[None]:
        """Show the step tree live while the block runs (terminals only)."""
        if self.plain or self._live is not None:
            yield
            return
        self._live = Live(
            _StepTree(self._roots), console=self.console, refresh_per_second=8, transient=False
        )
        with self._live:
            try:
                yield
            finally:
                self._live.refresh()
        self._live = None

    @contextmanager
    def step(self, label: str) -> Iterator[Step]:
        """A timed step, nested in the enclosing one; failed if the block raises."""
        step = Step(label)
        with self._lock:
            (self._stack[-1].children if self._stack else self._roots).append(step)
            self._stack.append(step)
        path = " › ".join(s.label for s in self._stack)
        if self.plain:
            self.console.print(f"==> {path}")
        try:
            yield step
        except BaseException:
            step.finish("failed")
            raise
        else:
            if step.status == "running":
                step.finish("ok")
        finally:
            with self._lock:
                self._stack.remove(step)
            if self.plain:
                note = f" {step.note}" if step.note else ""
                self.console.print(f"    {path}: {step.status} ({step.elapsed:.1f}s){note}")

    # ---------------------------------------------------------------- results
    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Print a table of results. Plain mode (not a terminal) prints aligned columns,
        never truncated or wrapped, under a ``=== title`` line, for scripts and logs."""
        if self.plain:
            cells = [list(columns)] + [[str(cell) for cell in row] for row in rows]
            widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
            lines = [f"=== {title}"] + [
                "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                for r in cells
            ]
            self.console.file.write("\n".join(lines) + "\n")
            self.console.file.flush()
            return
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(cell) for cell in row))
        self._print(table)

    def emit_json(self, document: Any) -> None:
        """Write a JSON document to stdout (the only thing on stdout in --json mode)."""
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
        sys.stdout.flush()
