"""Mirror discovery from apt sources, settings validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfhost.config import Settings
from selfhost.errors import UsageError
from selfhost.mirror import debian_mirror, read_apt_sources

# Example hosts only: .invalid never resolves.
DEB822 = """\
Types: deb
URIs: http://security.example.invalid/debian-security
Suites: bookworm-security
Components: main

# a comment between stanzas
Types: deb deb-src
URIs: http://archive.example.invalid/debian/
Suites: bookworm bookworm-updates
Components: main contrib
"""


def make_apt(tmp_path: Path, sources: str = "", lists: str = "", main: str = "") -> Path:
    d = tmp_path / "apt"
    (d / "sources.list.d").mkdir(parents=True)
    if sources:
        (d / "sources.list.d" / "debian.sources").write_text(sources)
    if lists:
        (d / "sources.list.d" / "other.list").write_text(lists)
    if main:
        (d / "sources.list").write_text(main)
    return d


def test_deb822_skips_security_and_strips_slash(tmp_path):
    apt = make_apt(tmp_path, sources=DEB822)
    assert debian_mirror(apt_dir=apt) == "http://archive.example.invalid/debian"
    entries = read_apt_sources(apt)
    assert entries[1].origin.endswith("debian.sources:6")


def test_one_line_format(tmp_path):
    apt = make_apt(
        tmp_path,
        main="# old style\ndeb [arch=amd64] http://m.example.invalid/debian bookworm main\n",
    )
    assert debian_mirror(apt_dir=apt) == "http://m.example.invalid/debian"


def test_disabled_entries_are_ignored(tmp_path):
    apt = make_apt(tmp_path, sources="Enabled: no\n" + DEB822.split("\n\n")[1])
    with pytest.raises(UsageError, match="no Debian archive entry"):
        debian_mirror(apt_dir=apt)


def test_override_wins_and_is_validated(tmp_path):
    apt = make_apt(tmp_path, sources=DEB822)
    assert debian_mirror("file:///srv/mirror/", apt_dir=apt) == "file:///srv/mirror"
    with pytest.raises(UsageError, match="not an http"):
        debian_mirror("ftp.example.invalid", apt_dir=apt)


def test_settings_defaults_and_validation(tmp_path):
    s = Settings.from_config({"workspace": str(tmp_path / "ws"), "jobs": 3})
    assert s.workspace.is_absolute() and s.stacks == s.workspace / "stacks"
    assert s.parallel_jobs == 3
    with pytest.raises(UsageError, match=r"unknown setting selfhost\.colour"):
        Settings.from_config({"colour": "blue"})
    with pytest.raises(UsageError, match="expected one of bwrap, docker"):
        Settings.from_config({"engine": "podman"})
    with pytest.raises(UsageError, match="suite"):
        Settings.from_config({"suite": "sid"})
    assert s.dyno_port_base == 20000
    assert Settings.from_config({"dyno_port_base": 30000}).dyno_port_base == 30000
    with pytest.raises(UsageError, match="dyno_port_base must be between 1024 and 64511"):
        Settings.from_config({"dyno_port_base": 80})
    assert s.with_overrides(engine="docker", verbose=None).engine == "docker"


def test_relative_workspace_becomes_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_config({"workspace": ".selfhost"})
    assert s.workspace == tmp_path / ".selfhost"
