"""The API's request and response models, after Heroku's Platform API schema.

**Requests** are frozen dataclasses. :func:`parse` checks a JSON body against one, field
by field, with the field's annotation: a wrong type is a 422 ``invalid_params`` that names
the field, what was expected and what came. Fields the model does not know are ignored,
as Heroku ignores them (its CLI sends some this platform has no use for). What a value
means (a known size, a free app name) is the store's and the runtime's to check.

**Responses** are ``TypedDict`` s of the schema's shapes: ids are UUIDs, times ISO 8601
in UTC (``2026-12-02T06:15:40Z``), references nested ``{id, name}`` objects.
:func:`conforms` checks a value against one (the tests hold every answer to them).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
import uuid
from typing import Any, NotRequired, TypedDict, TypeVar, Union

from selfhost.platform.errors import Refused

# ---------------------------------------------------------------------- requests


@dataclasses.dataclass(frozen=True)
class AppCreate:
    name: str | None = None
    stack: str | None = None
    region: str | None = None


@dataclasses.dataclass(frozen=True)
class AppUpdate:
    name: str | None = None
    maintenance: bool | None = None
    build_stack: str | None = None


@dataclasses.dataclass(frozen=True)
class ReleaseCreate:
    """A release of a slug, or (Heroku's rollback) ``release``: an id or a version."""

    slug: str | None = None
    release: str | int | None = None
    description: str | None = None


@dataclasses.dataclass(frozen=True)
class FormationChange:
    type: str
    quantity: int | str | None = None  # Heroku's CLI sends "2"
    size: str | None = None


@dataclasses.dataclass(frozen=True)
class FormationOne:
    quantity: int | str | None = None
    size: str | None = None


@dataclasses.dataclass(frozen=True)
class FormationBatch:
    updates: list[FormationChange]


@dataclasses.dataclass(frozen=True)
class DynoCreate:
    command: str
    attach: bool = False
    env: dict[str, str | int] | None = None  # Heroku's CLI sends COLUMNS and LINES as numbers
    size: str | None = None
    type: str | None = None
    time_to_live: int | float | None = None
    engine: str | None = None
    tty: bool | None = None
    force_no_tty: bool | None = None  # heroku run --no-tty
    parent: str | None = None


@dataclasses.dataclass(frozen=True)
class LogSessionCreate:
    lines: int = 100
    tail: bool = False
    dyno: str | None = None
    source: str | None = None


M = TypeVar("M")


def parse(model: type[M], body: Any, where: str = "") -> M:
    """``body`` as a ``model``, or 422 naming the field that is wrong."""
    name = where or model.__name__
    if not isinstance(body, dict):
        raise Refused("invalid_params", f"{name} must be a JSON object, not {_kind(body)}.")
    hints = typing.get_type_hints(model)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(model):  # type: ignore[arg-type]
        path = f"{where}.{field.name}" if where else field.name
        if field.name not in body:
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            if required:
                raise Refused("invalid_params", f"{path} is required.")
            continue
        values[field.name] = _value(hints[field.name], body[field.name], path)
    return model(**values)


def given(model: Any) -> dict[str, Any]:
    """A parsed request's fields that the client gave (not None)."""
    return {k: v for k, v in dataclasses.asdict(model).items() if v is not None}


def _value(annotation: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        problems = []
        for option in typing.get_args(annotation):
            try:
                return _value(option, value, path)
            except Refused as exc:
                problems.append(exc)
        expected = " or ".join(_name(o) for o in typing.get_args(annotation))
        raise Refused("invalid_params", f"{path} must be {expected}, not {_kind(value)}.")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is type(None) and value is None:
        return None
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(annotation)
        return [_value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        key, item = typing.get_args(annotation)
        return {_value(key, k, path): _value(item, v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return parse(annotation, value, path)
    if (
        (annotation is bool and isinstance(value, bool))
        or (annotation is float and number)
        or (annotation is int and number and isinstance(value, int))
        or (annotation is str and isinstance(value, str))
    ):
        return value
    raise Refused("invalid_params", f"{path} must be {_name(annotation)}, not {_kind(value)}.")


def _name(annotation: Any) -> str:
    names = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
    if annotation in names:
        return names[annotation]
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin is list:
        return "a list"
    if origin is dict:
        return "an object"
    return f"an object ({getattr(annotation, '__name__', annotation)})"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return "a list" if isinstance(value, list) else "an object"


# ---------------------------------------------------------------------- responses


class Ref(TypedDict):
    id: str
    name: str


class Account(TypedDict):
    id: str
    email: str
    name: str
    allow_tracking: bool
    beta: bool
    created_at: str
    updated_at: str


class Owner(TypedDict):
    id: str
    email: str


class App(TypedDict):
    id: str
    name: str
    stack: Ref
    build_stack: Ref
    created_at: str
    updated_at: str
    released_at: str | None
    maintenance: bool
    owner: Owner
    repo_size: int
    slug_size: int | None
    region: dict[str, str]
    web_url: str | None
    git_url: str | None


class Release(TypedDict):
    id: str
    version: int
    description: str
    status: str
    current: bool
    created_at: str
    updated_at: str
    app: Ref
    slug: NotRequired[dict[str, str] | None]


class Slug(TypedDict):
    id: str
    checksum: str | None
    size: int | None
    process_types: dict[str, str]
    commit: str | None
    stack: Ref
    created_at: str
    updated_at: str


class Formation(TypedDict):
    id: str
    type: str
    quantity: int
    size: str
    command: str
    created_at: str
    updated_at: str
    app: Ref


class Dyno(TypedDict):
    id: str
    name: str
    type: str
    state: str
    command: str
    size: str
    created_at: str
    updated_at: str
    attach_url: str | None
    release: dict[str, Any]
    app: Ref


UUID_FIELDS = {"id"}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def conforms(model: Any, value: Any, path: str = "") -> list[str]:
    """What in ``value`` does not follow ``model`` (a TypedDict or a type): missing
    fields, wrong types, ids that are not UUIDs, times that are not ISO 8601 UTC."""
    problems: list[str] = []
    origin = typing.get_origin(model)
    if origin in (Union, types.UnionType):
        options = [conforms(option, value, path) for option in typing.get_args(model)]
        return [] if any(not o for o in options) else min(options, key=len)
    if model is type(None):
        return [] if value is None else [f"{path}: not null"]
    if typing.is_typeddict(model):
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        hints = typing.get_type_hints(model)
        for key, hint in hints.items():
            where = f"{path}.{key}" if path else key
            if key not in value:
                if key in model.__required_keys__:
                    problems.append(f"{where}: missing")
                continue
            problems += conforms(hint, value[key], where)
            if key in UUID_FIELDS and isinstance(value[key], str) and path.count(".") < 1:
                try:
                    uuid.UUID(value[key])
                except ValueError:
                    if model is not Ref:  # a stack's or region's id is its name
                        problems.append(f"{where}: not a UUID")
            if key.endswith("_at") and isinstance(value[key], str) and not TIME.match(value[key]):
                problems.append(f"{where}: not an ISO 8601 UTC time")
        return problems
    if origin is dict:
        return [] if isinstance(value, dict) else [f"{path}: not an object"]
    if model is Any:
        return []
    if model is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: not a whole number"]
    if isinstance(model, type) and not isinstance(value, model):
        return [f"{path}: not {model.__name__}"]
    return problems
