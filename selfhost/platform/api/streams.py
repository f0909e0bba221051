"""Streamed response bodies: a dyno's output, a log, a file (a slug, a stage, a source)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Stream:
    """A streamed (chunked) response body; an empty chunk is a keep-alive tick."""

    chunks: Iterator[bytes]
    content_type: str = "text/plain; charset=utf-8"


def file_chunks(path: Path) -> Iterator[bytes]:
    """A file's bytes, a MiB at a time (opened now: a missing file fails the request)."""
    f = open(path, "rb")  # noqa: SIM115 - closed by the generator

    def chunks() -> Iterator[bytes]:
        with f:
            while chunk := f.read(1 << 20):
                yield chunk

    return chunks()
