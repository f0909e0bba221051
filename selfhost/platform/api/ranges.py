"""Heroku's list ranges: ``Range``, ``Content-Range``, ``Next-Range`` (HTTP 206).

A client asks for part of a list with ``Range: <field> [first]..[last][; max=N][,
order=asc|desc]`` (Heroku's CLI: ``Range: version ..; max=1, order=desc`` for the newest
release). The answer is the items sorted by that field, from ``first`` to ``last``
inclusive, at most ``max`` (default and upper bound :data:`MAX_PAGE`), with
``Content-Range`` saying which, and ``Next-Range`` (status 206) when more follow: the
client sends it back as its next ``Range``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from selfhost.platform.api.errors import ApiError

MAX_PAGE = 1000

_RANGE = re.compile(
    r"^\s*(?P<field>[a-z_]+)\s*(?:(?P<first>[^.;\s]*)\s*\.\.\s*(?P<last>[^;\s]*))?\s*"
    r"(?:;\s*(?P<options>.*))?$"
)


@dataclass(frozen=True)
class Page:
    """One page of a list, and the headers that say so."""

    items: list[dict[str, Any]]
    status: int
    headers: dict[str, str]


def paginate(items: Sequence[dict[str, Any]], header: str | None, fields: Sequence[str]) -> Page:
    """The page of ``items`` that the ``Range`` header asks for (all of them, in the
    first field's order, when there is none). ``fields`` are the sortable ones."""
    field, first, last, order, limit = fields[0], "", "", "asc", MAX_PAGE
    if header:
        m = _RANGE.match(header)
        if not m or m.group("field") not in fields:
            raise ApiError(
                400,
                "bad_request",
                f"Range must look like '<field> [first]..[last][; max=N, order=asc|desc]' "
                f"with a field among {', '.join(fields)}: {header!r}.",
            )
        field, first, last = m.group("field"), m.group("first") or "", m.group("last") or ""
        # Heroku's CLI separates options with ", "; heroku3 with "," or " ", and ends with ";"
        for option in re.split(r"[,;\s]+", m.group("options") or ""):
            if not option:
                continue
            name, _, value = option.partition("=")
            if name == "max" and value.isdigit() and int(value) > 0:
                limit = min(int(value), MAX_PAGE)
            elif name == "order" and value in ("asc", "desc"):
                order = value
            else:
                raise ApiError(400, "bad_request", f"Unknown Range option {option!r}.")

    def key(item: dict[str, Any]) -> Any:
        value = item.get(field)
        return (0, value) if isinstance(value, int | float) else (1, str(value))

    def bound(text: str) -> Any:
        return (0, int(text)) if text.isdigit() else (1, text)

    ordered = sorted(items, key=key, reverse=order == "desc")
    if first:
        start = bound(first)
        ordered = [i for i in ordered if (key(i) <= start if order == "desc" else key(i) >= start)]
    if last:
        end = bound(last)
        ordered = [i for i in ordered if (key(i) >= end if order == "desc" else key(i) <= end)]
    page, rest = ordered[:limit], ordered[limit:]
    headers = {"Accept-Ranges": ", ".join(fields)}
    if page:
        headers["Content-Range"] = (
            f"{field} {page[0].get(field)}..{page[-1].get(field)}; max={limit}, order={order}"
        )
    if rest:
        headers["Next-Range"] = f"{field} {rest[0].get(field)}..; max={limit}, order={order}"
    return Page(page, 206 if rest else 200, headers)
