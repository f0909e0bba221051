"""Settings: the ``selfhost`` section of Invoke's configuration as a frozen dataclass.

Tasks read ``c.config.selfhost`` (from ``invoke.yaml``, ``INVOKE_SELFHOST_*`` environment
variables or ``-c`` files) and hand library code a :class:`Settings`; library code
never reads Invoke's config itself. The defaults below are the documented defaults of
``invoke.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfhost.errors import UsageError

if TYPE_CHECKING:
    from selfhost.stages.security import SandboxIds

ENGINES = ("bwrap", "docker")
SUITES = ("bullseye", "bookworm", "trixie")

DEFAULTS: dict[str, Any] = {
    "workspace": ".selfhost",
    "stacks_dir": None,
    "mirror": None,
    "engine": "bwrap",
    "suite": "bookworm",
    "variant": "minbase",
    "base_packages": ["build-essential", "python3", "distcc"],
    "jobs": 0,
    "lock_wait": 0,
    "verbose": False,
    "docker_url": None,
    "recipe_dirs": [],
    "default_compiler": "tcc",
    "slug_max_bytes": 500_000_000,
    "platform_dir": None,
    "platform_port": 0,
    "api_url": None,
    "api_token": None,
    "dyno_grace_seconds": 30,
    "dyno_boot_timeout": 60,
    "dyno_max_children": 32,
    "router_port": 5080,
    "router_timeout": 30,
    "router_workers": 0,
    "queue_url": None,
    "queues": None,
    "slug_max_unpacked_bytes": 2_000_000_000,
    "slug_max_files": 200_000,
    "dyno_disk_bytes": 1 << 30,
    "dyno_port_base": 20000,
    "sandbox_uid_base": 1_700_000_000,
    "sandbox_uid_count": 65536,
}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything configurable about a run, validated once."""

    workspace: Path = Path(DEFAULTS["workspace"])
    stacks_dir: Path | None = None
    mirror: str | None = None
    engine: str = "bwrap"
    suite: str = "bookworm"
    variant: str = "minbase"
    base_packages: tuple[str, ...] = ("build-essential", "python3", "distcc")
    jobs: int = 0
    lock_wait: float = 0
    verbose: bool = False
    docker_url: str | None = None
    recipe_dirs: tuple[Path, ...] = field(default=())
    default_compiler: str = "tcc"
    slug_max_bytes: int = 500_000_000
    platform_dir: Path | None = None
    platform_port: int = 0
    api_url: str | None = None
    api_token: str | None = None
    dyno_grace_seconds: float = 30
    dyno_boot_timeout: float = 60  # a web dyno binds $PORT within this, or crashes (R10)
    dyno_max_children: int = 32  # live child dynos per app (forked by its dynos)
    router_port: int = 5080  # http://APP.localhost:5080/ (0: a free port, in router.json)
    router_timeout: float = 30  # seconds until a response's headers (H12 after)
    router_workers: int = 0  # the router's worker processes (0: one per core, at most 4)
    queue_url: str | None = None
    queues: tuple[str, ...] = ()
    slug_max_unpacked_bytes: int = 2_000_000_000
    slug_max_files: int = 200_000
    dyno_disk_bytes: int = 1 << 30
    dyno_port_base: int = 20000  # app n's web dynos listen on dyno_port_base + 32 (n - 1) ...
    sandbox_uid_base: int = 1_700_000_000
    sandbox_uid_count: int = 65536

    @property
    def platform(self) -> Path:
        """The platform daemon's state directory."""
        return self.platform_dir if self.platform_dir else self.workspace / "platform"

    @property
    def stacks(self) -> Path:
        """Where stacks live; shared between workspaces when ``stacks_dir`` is set."""
        return self.stacks_dir if self.stacks_dir else self.workspace / "stacks"

    @property
    def sandbox_ids(self) -> SandboxIds:
        """The unprivileged host ids sandboxes run as (see selfhost.stages.security)."""
        from selfhost.stages.security import SandboxIds

        return SandboxIds(self.sandbox_uid_base, self.sandbox_uid_count)

    @property
    def parallel_jobs(self) -> int:
        """The number of parallel jobs given to builds (``$JOBS``)."""
        return self.jobs if self.jobs > 0 else (os.cpu_count() or 1)

    def with_overrides(self, **changes: Any) -> Settings:
        """Return a copy with the non-None keyword arguments applied and validated."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return validate(replace(self, **changes)) if changes else self

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> Settings:
        """Build settings from Invoke's ``selfhost`` config section."""
        raw = dict(DEFAULTS)
        if section:
            known = {f.name for f in fields(cls)}
            for key, value in dict(section).items():
                if key not in known:
                    raise UsageError(
                        f"unknown setting selfhost.{key} in the Invoke configuration",
                        hint=f"known settings: {', '.join(sorted(known))}",
                    )
                raw[key] = value
        try:
            settings = cls(
                workspace=_abs(raw["workspace"]),
                stacks_dir=_abs(raw["stacks_dir"]) if raw["stacks_dir"] else None,
                mirror=raw["mirror"] or None,
                engine=str(raw["engine"]),
                suite=str(raw["suite"]),
                variant=str(raw["variant"]),
                base_packages=tuple(str(p) for p in raw["base_packages"]),
                jobs=int(raw["jobs"]),
                lock_wait=float(raw["lock_wait"]),
                verbose=_as_bool(raw["verbose"]),
                docker_url=raw["docker_url"] or None,
                recipe_dirs=tuple(_abs(p) for p in raw["recipe_dirs"]),
                default_compiler=str(raw["default_compiler"]),
                slug_max_bytes=int(raw["slug_max_bytes"]),
                platform_dir=_abs(raw["platform_dir"]) if raw["platform_dir"] else None,
                platform_port=int(raw["platform_port"]),
                api_url=raw["api_url"] or None,
                api_token=raw["api_token"] or None,
                dyno_grace_seconds=float(raw["dyno_grace_seconds"]),
                dyno_boot_timeout=float(raw["dyno_boot_timeout"]),
                dyno_max_children=int(raw["dyno_max_children"]),
                router_port=int(raw["router_port"]),
                router_timeout=float(raw["router_timeout"]),
                router_workers=int(raw["router_workers"]),
                queue_url=raw["queue_url"] or None,
                queues=_words(raw["queues"]),
                slug_max_unpacked_bytes=int(raw["slug_max_unpacked_bytes"]),
                slug_max_files=int(raw["slug_max_files"]),
                dyno_disk_bytes=int(raw["dyno_disk_bytes"]),
                dyno_port_base=int(raw["dyno_port_base"]),
                sandbox_uid_base=int(raw["sandbox_uid_base"]),
                sandbox_uid_count=int(raw["sandbox_uid_count"]),
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"invalid value in the selfhost configuration: {exc}",
                hint="compare your settings with the documented defaults in invoke.yaml",
            ) from None
        return validate(settings)


def _abs(value: Any) -> Path:
    """Paths are made absolute once, here: sandboxes and daemons need absolute paths."""
    return Path(str(value)).expanduser().absolute()


def _words(value: Any) -> tuple[str, ...]:
    """A list, or a string of words separated by spaces or commas (from the environment:
    Invoke cannot read a list there)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(w for w in value.replace(",", " ").split() if w)
    return tuple(str(v) for v in value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def validate(settings: Settings) -> Settings:
    """Check value ranges; raise :class:`UsageError` naming the setting."""
    if settings.engine not in ENGINES:
        raise UsageError(
            f"engine is {settings.engine!r}; expected one of {', '.join(ENGINES)}",
            hint="pass --engine bwrap or --engine docker, or set selfhost.engine",
        )
    if settings.suite not in SUITES:
        raise UsageError(
            f"suite is {settings.suite!r}; expected one of {', '.join(SUITES)}",
            hint="set selfhost.suite in invoke.yaml",
        )
    for key in ("platform_port", "router_port"):
        if not 0 <= getattr(settings, key) <= 65535:
            raise UsageError(f"selfhost.{key} is {getattr(settings, key)}; expected 0-65535")
    if not 0 <= settings.router_workers <= 64:
        raise UsageError(
            f"selfhost.router_workers is {settings.router_workers}; expected 0-64",
            hint="0 runs one worker per core (at most 4)",
        )
    for key in ("dyno_boot_timeout", "router_timeout"):
        if not getattr(settings, key) > 0:
            raise UsageError(f"selfhost.{key} must be positive (seconds)")
    for url in filter(None, (settings.queue_url, *settings.queues)):
        from selfhost.platform.jobs.queue import QueueUrlError, check_url

        try:
            check_url(url)
        except QueueUrlError as exc:
            raise UsageError(
                f"selfhost.queue_url: {exc}",
                hint="set it in invoke.yaml, or null for the embedded SQLite queue",
            ) from None
    for key in (
        "slug_max_bytes",
        "slug_max_unpacked_bytes",
        "slug_max_files",
        "dyno_disk_bytes",
        "sandbox_uid_count",
        "dyno_max_children",
    ):
        if getattr(settings, key) <= 0:
            raise UsageError(f"selfhost.{key} must be positive")
    if not 1024 <= settings.dyno_port_base <= 65535 - 1024:
        raise UsageError(
            f"selfhost.dyno_port_base must be between 1024 and {65535 - 1024}",
            hint="app n's listening dynos use ports dyno_port_base + 32 (n - 1) ...",
        )
    if settings.jobs < 0 or settings.lock_wait < 0:
        raise UsageError("selfhost.jobs and selfhost.lock_wait must not be negative")
    return settings
