"""The platform API over real HTTP on loopback: Heroku's shapes, auth, errors, consistency."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest
import requests

from selfhost.errors import PlatformError
from selfhost.platform.api.server import PlatformServer, serve_in_thread
from selfhost.platform.client import ApiRequestError, PlatformClient
from selfhost.platform.paths import PlatformPaths

V3 = "application/vnd.heroku+json; version=3"


@pytest.fixture
def server(tmp_path):
    srv = PlatformServer(
        ("127.0.0.1", 0),
        PlatformPaths(tmp_path / "platform"),
        stack="bookworm",
        max_blob_bytes=200_000,
    )
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def client(server):
    return PlatformClient(server.url, server.token)


def make_slug(tmp_path: Path, text: str = "hello") -> tuple[Path, str, int]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("./app/hello.txt")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text.encode()))
    data = gzip.compress(buf.getvalue(), mtime=0)
    path = tmp_path / f"slug-{hashlib.sha256(text.encode()).hexdigest()[:12]}.tgz"
    path.write_bytes(data)
    return path, "SHA256:" + hashlib.sha256(data).hexdigest(), len(data)


def test_token_file_is_private_and_required(server):
    mode = stat.S_IMODE(os.stat(server.paths.token).st_mode)
    assert mode == 0o600
    r = requests.get(f"{server.url}/apps", headers={"Accept": V3})
    assert r.status_code == 401 and r.json() == {
        "id": "unauthorized",
        "message": "Invalid credentials provided.",
    }
    r = requests.get(f"{server.url}/apps", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = requests.get(f"{server.url}/apps", auth=("", server.token), headers={"Accept": V3})
    assert r.status_code == 200, "Heroku CLI style Basic auth works too"
    assert requests.get(f"{server.url}/health").status_code == 200


def test_release_flow_rollback_and_config(client, tmp_path):
    app = client.create_app("demo-app", "bookworm")
    assert app["name"] == "demo-app" and app["stack"]["name"] == "bookworm"
    path, checksum, size = make_slug(tmp_path)
    types = {"worker": "bin/worker", "web": "bin/web"}
    r1 = client.release_slug("demo-app", path, checksum=checksum, size=size, process_types=types)
    assert r1.version == 1 and not r1.app_created
    slug = client.slug("demo-app", r1.slug_id)
    assert slug["checksum"] == checksum and slug["size"] == size
    assert slug["process_types"] == types
    assert client.config("demo-app") == {}
    client.update_config("demo-app", {"A": "1", "B": "two words"})
    path2, checksum2, size2 = make_slug(tmp_path, "second")
    r2 = client.release_slug("demo-app", path2, checksum=checksum2, size=size2, process_types=types)
    assert r2.version == 3, "v2 was the config change"
    rb = client.rollback("demo-app", "v1")
    assert rb["version"] == 4 and rb["description"] == "Rollback to v1"
    assert rb["slug"]["id"] == r1.slug_id and rb["current"] is True
    assert client.config("demo-app") == {}, "a rollback restores the config of its target"
    versions = [(r["version"], r["current"]) for r in client.releases("demo-app")]
    assert versions == [(1, False), (2, False), (3, False), (4, True)]
    client.update_config("demo-app", {"A": "x"})
    assert client.update_config("demo-app", {"A": None}) == {}
    assert (
        client.request("GET", "/apps/demo-app/releases/v2")["description"] == "Set A, B config vars"
    )
    formation = {f["type"]: f for f in client.formation("demo-app")}
    assert formation["web"]["quantity"] == 1 and formation["worker"]["quantity"] == 0
    updated = client.update_formation("demo-app", [{"type": "worker", "quantity": 3}])
    assert updated[0]["quantity"] == 3 and updated[0]["command"] == "bin/worker"
    # as Heroku's CLI sends it: the quantity a string, the size in the schema's spelling
    cli = client.update_formation(
        "demo-app", [{"type": "worker", "quantity": "2", "size": "Standard-2X"}]
    )
    assert cli[0]["quantity"] == 2 and cli[0]["size"] == "standard-2x"
    assert (
        error_of(
            lambda: client.update_formation("demo-app", [{"type": "worker", "quantity": "two"}])
        ).status
        == 422
    )


def error_of(fn) -> ApiRequestError:
    with pytest.raises(ApiRequestError) as info:
        fn()
    return info.value


def test_errors_have_herokus_shape(client, server, tmp_path):
    err = error_of(lambda: client.app("missing"))
    assert (
        err.status == 404 and err.ident == "not_found" and "Couldn't find that app" in err.message
    )
    assert error_of(lambda: client.create_app("Bad_Name")).status == 422
    client.create_app("errs")
    assert "already taken" in error_of(lambda: client.create_app("errs")).message
    r = requests.post(
        f"{server.url}/apps/errs/slugs",
        data="{not json",
        headers={"Authorization": f"Bearer {server.token}", "Accept": V3},
    )
    assert r.status_code == 400 and r.json()["id"] == "bad_request"
    assert "Malformed JSON" in r.json()["message"]
    r = requests.get(
        f"{server.url}/apps",
        headers={
            "Authorization": f"Bearer {server.token}",
            "Accept": "application/vnd.heroku+json; version=2",
        },
    )
    assert r.status_code == 400 and "version=3" in r.json()["message"]
    bad_types = error_of(lambda: client.create_slug("errs", {"process_types": {"a b": "x"}}))
    assert bad_types.status == 422
    assert error_of(lambda: client.update_formation("errs", [{"type": "nope"}])).status == 404
    assert (
        requests.delete(
            f"{server.url}/apps", headers={"Authorization": f"Bearer {server.token}"}
        ).status_code
        == 405
    )


def test_wrong_checksum_is_rejected_and_never_released(client, server, tmp_path):
    client.create_app("check")
    path, checksum, _ = make_slug(tmp_path)
    wrong = "SHA256:" + "0" * 64
    slug = client.create_slug("check", {"process_types": {"w": "x"}, "checksum": wrong})
    err = error_of(lambda: client.upload(slug["blob"], path))
    assert err.status == 422 and err.ident == "checksum_mismatch"
    assert checksum.split(":")[1] in err.message
    assert not list(server.paths.blobs.iterdir()) and not list(server.paths.blob_tmp.iterdir())
    err = error_of(lambda: client.release("check", slug["id"]))
    assert err.status == 422 and "no verified blob" in err.message
    assert client.releases("check") == []
    # a forged blob URL token is refused
    forged = {"method": "put", "url": slug["blob"]["url"].split("?")[0] + "?token=guess"}
    assert error_of(lambda: client.upload(forged, path)).status == 403


def test_oversize_upload_is_refused(client, server, tmp_path):
    client.create_app("big")
    data = os.urandom(300_000)
    path = tmp_path / "big.tgz"
    path.write_bytes(data)
    slug = client.create_slug("big", {"process_types": {"w": "x"}})
    with pytest.raises(PlatformError) as info:
        client.upload(slug["blob"], path)
    assert "413" in info.value.message or "upload failed" in info.value.message
    assert client.slug("big", slug["id"])["size"] is None


def test_release_without_checksum_records_the_computed_one(client, tmp_path):
    client.create_app("nosum")
    path, checksum, _ = make_slug(tmp_path)
    slug = client.create_slug("nosum", {"process_types": {"w": "x"}})
    client.upload(slug["blob"], path)
    assert client.slug("nosum", slug["id"])["checksum"] == checksum


def test_database_schema_is_as_documented(server):
    db = sqlite3.connect(server.paths.db)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {
        "meta",
        "apps",
        "slugs",
        "releases",
        "config_vars",
        "formation",
        "jobs",
        "app_stages",
        "app_numbers",
        "tokens",
        "sqlite_sequence",
    }
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (
        json.loads(db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
        == 4
    )
    mode = server.paths.root.stat().st_mode & 0o777
    assert mode == 0o700, "the platform's state is private"
    assert server.paths.db.stat().st_mode & 0o777 == 0o600
    assert server.paths.token.stat().st_mode & 0o777 == 0o600


def test_a_version_3_stage_store_is_migrated_per_app(tmp_path):
    """Version 3 kept one stages table for every app; version 4 keys it by app, and an
    older database's stages stay with the app that stored them."""
    from selfhost.platform.jobs.service import JobStore
    from selfhost.platform.paths import PlatformPaths
    from selfhost.platform.store.db import Store

    paths = PlatformPaths(tmp_path / "platform")
    store = Store(paths)
    app = store.create_app("builders", "bookworm")
    other = store.create_app("others", "bookworm")
    db = sqlite3.connect(paths.db)
    db.executescript(
        "DROP TABLE app_stages; CREATE TABLE stages (input_hash TEXT PRIMARY KEY, "
        "app_id TEXT, tree_digest TEXT, files INTEGER, size INTEGER, blob_sha256 TEXT, "
        "job_id INTEGER, created_at TEXT);"
        f"INSERT INTO stages VALUES ('{'a' * 64}', '{app['id']}', '{'d' * 64}', 3, 10, "
        f"'{'b' * 64}', NULL, '2026-01-01T00:00:00Z');"
        "UPDATE meta SET value = '3' WHERE key = 'schema_version';"
    )
    db.close()
    jobs = JobStore(Store(paths))
    stage = jobs.stage("a" * 64, app["id"])
    assert stage is not None and stage["tree_digest"] == "d" * 64
    assert jobs.stage("a" * 64, other["id"]) is None, "another app's stage does not exist"
    assert jobs.stage("a" * 64) is not None, "the platform sees every app's"


def test_malformed_requests_get_400_never_500(client, server):
    """What a broken or hostile client sends is a 400 (with Heroku's error shape once
    the request is HTTP at all), and the server stays up."""
    import socket

    client.create_app("malformed")
    auth = {"Authorization": f"Bearer {server.token}", "Accept": V3}
    host, port = server.url.removeprefix("http://").split(":")
    for length in ("abc", "-5"):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                f"POST /apps/malformed/slugs HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {auth['Authorization']}\r\nContent-Length: {length}\r\n\r\n{{}}".encode()
            )
            head = b""
            while chunk := s.recv(65536):  # the server closes: where the body ended is unknown
                head += chunk
        assert head.decode("latin-1").startswith("HTTP/1.1 400"), (length, head)
        # the HTTP parser refuses it before any route runs, and closes the connection
        assert b"connection: close" in head.lower() and b" 500 " not in head
    deep = "[" * 100_000 + "]" * 100_000
    r = requests.post(f"{server.url}/apps/malformed/slugs", data=deep, headers=auth)
    assert r.status_code == 400 and r.json()["id"] == "bad_request", r.text
    r = requests.get(f"{server.url}/apps/malformed/jobs/1?log=x", headers=auth)
    assert r.status_code in (400, 404, 501), r.text
    assert requests.get(f"{server.url}/health").status_code == 200


def test_herokus_http_conventions(client, server):
    """Range/Next-Range (206), ETag with If-None-Match (304), Request-Id, rate limits,
    /account, /users/~/apps and add-ons: what Heroku's CLI asks for."""
    client.create_app("ranged")
    for n in range(3):
        slug, _ = server.store.create_slug("ranged", {"process_types": {"web": "x"}})
        server.store.attach_blob(slug["id"], f"{n:064x}", 1)
        server.store.create_release("ranged", slug["id"], None)
    auth = {"Authorization": f"Bearer {server.token}", "Accept": V3}
    url = f"{server.url}/apps/ranged/releases"
    newest = requests.get(url, headers={**auth, "Range": "version ..; max=1, order=desc"})
    assert newest.status_code == 206 and [r["version"] for r in newest.json()] == [3]
    assert newest.headers["Next-Range"] == "version 2..; max=1, order=desc"
    rest = requests.get(url, headers={**auth, "Range": newest.headers["Next-Range"]})
    assert [r["version"] for r in rest.json()] == [2]
    everything = requests.get(url, headers=auth)
    assert everything.status_code == 200 and len(everything.json()) == 3
    assert "Next-Range" not in everything.headers
    bad = requests.get(url, headers={**auth, "Range": "color ..; max=1"})
    assert bad.status_code == 400 and bad.json()["id"] == "bad_request"
    # ETag: the same answer again is a 304 with no body
    etag = everything.headers["ETag"]
    again = requests.get(url, headers={**auth, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert everything.headers["RateLimit-Remaining"].isdigit()
    assert (
        requests.get(url, headers={**auth, "Request-Id": "abc-1"}).headers["Request-Id"] == "abc-1"
    )
    assert everything.headers["Request-Id"] != again.headers["Request-Id"]
    # the account, its apps, add-ons
    account = requests.get(f"{server.url}/account", headers=auth).json()
    assert account["email"] and account["id"]
    mine = requests.get(f"{server.url}/users/~/apps", headers=auth).json()
    assert "ranged" in [a["name"] for a in mine]
    assert all(a["owner"]["id"] == account["id"] for a in mine), "apps have an owner"
    assert requests.get(f"{server.url}/apps/ranged/addons", headers=auth).json() == []
    assert requests.get(f"{server.url}/account/rate-limits", headers=auth).json()["remaining"] > 0
    assert requests.get(f"{server.url}/users/someone/apps", headers=auth).status_code == 404


def test_log_lines_as_server_sent_events():
    from selfhost.platform.api.dynos import server_sent_events

    chunks = iter([b"2026 app[web.1]: one\n2026 app[web.1]: tw", b"", b"o\nrest"])
    assert list(server_sent_events(chunks)) == [
        b"data: 2026 app[web.1]: one\n\n",
        b"",
        b"data: 2026 app[web.1]: two\n\n",
        b"data: rest\n\n",
    ]


def test_formation_by_type_and_a_release_s_config(client, server):
    client.create_app("bytype")
    slug, _ = server.store.create_slug("bytype", {"process_types": {"web": "x", "worker": "y"}})
    server.store.attach_blob(slug["id"], "1" * 64, 1)
    server.store.create_release("bytype", slug["id"], None)
    client.update_config("bytype", {"K": "v1"})
    client.update_config("bytype", {"K": "v2"})
    assert client.request("GET", "/apps/bytype/releases/2/config-vars") == {"K": "v1"}
    assert client.request("GET", "/apps/bytype/releases/v3/config-vars") == {"K": "v2"}
    one = client.request("GET", "/apps/bytype/formation/worker")
    assert one["type"] == "worker" and one["quantity"] == 0
    scaled = client.request("PATCH", "/apps/bytype/formation/worker", {"quantity": "2"})
    assert scaled["quantity"] == 2, "ps:scale's PATCH, with the quantity as a string"
    assert error_of(lambda: client.request("GET", "/apps/bytype/formation/nope")).status == 404


def test_the_documented_route_table_is_the_servers():
    """docs/platform.md lists every route, with who may call it, and nothing else."""
    import re
    from types import SimpleNamespace

    from selfhost.platform.api import apps, dynos, jobs, slugs
    from selfhost.platform.api.web import DYNO, URL

    served = [
        *apps.endpoints(),
        *slugs.endpoints(),
        *dynos.endpoints(None, None),  # type: ignore[arg-type]
        *jobs.endpoints(SimpleNamespace(jobs=None)),  # type: ignore[arg-type]
    ]
    who = {DYNO: "D", URL: "U"}
    expected = {(e.method, e.path, who.get(e.access, "P")) for e in served}
    doc = (Path(__file__).parents[2] / "docs" / "platform.md").read_text()
    documented = set(
        re.findall(r"^\| (GET|POST|PUT|PATCH|DELETE) \| `([^`]+)` \| ([PDU]) \|", doc, re.M)
    )
    assert len(served) == len(expected), "no route is served twice"
    assert documented == expected, (
        f"undocumented: {sorted(expected - documented)}; not served: {sorted(documented - expected)}"
    )


def test_app_destroy_forgets_everything_and_never_reuses_its_sandbox_number(client, server):
    client.create_app("doomed")
    client.create_app("kept")
    store = server.store
    assert (store.app_number("doomed"), store.app_number("kept")) == (1, 2)
    slug, _ = store.create_slug("doomed", {"process_types": {"web": "x"}})
    store.attach_blob(slug["id"], "2" * 64, 1)
    store.create_release("doomed", slug["id"], None)
    client.update_config("doomed", {"K": "v"})
    auth = {"Authorization": f"Bearer {server.token}", "Accept": V3}
    refused = requests.patch(f"{server.url}/apps/doomed", json={"name": "other"}, headers=auth)
    assert refused.status_code == 422 and "Renaming" in refused.json()["message"]
    same = requests.patch(f"{server.url}/apps/doomed", json={"name": "doomed"}, headers=auth)
    assert same.status_code == 200 and same.json()["name"] == "doomed"
    gone = requests.delete(f"{server.url}/apps/kept", headers=auth)
    assert gone.status_code == 200 and gone.json()["name"] == "kept"
    gone = requests.delete(f"{server.url}/apps/doomed", headers=auth)
    assert gone.status_code == 200
    assert [a["name"] for a in client.apps()] == []
    with sqlite3.connect(server.paths.db) as db:
        for table in ("slugs", "releases", "config_vars", "formation", "app_numbers"):
            assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table
    client.create_app("reborn")
    assert store.app_number("reborn") == 3, "a destroyed app's host id is never given again"
    again = requests.delete(f"{server.url}/apps/doomed", headers=auth)
    assert again.status_code == 404 and again.json()["id"] == "not_found"


def test_a_dyno_gets_a_terminal_when_its_client_has_one():
    from selfhost.platform.runtime.dynos import terminal_of

    attached = {"attach": True}
    assert terminal_of(attached, {"COLUMNS": "120", "LINES": "40"}) == (120, 40)
    assert terminal_of(attached, {}) is None, "piped input: no terminal"
    assert terminal_of({"attach": False}, {"COLUMNS": "120", "LINES": "40"}) is None
    assert terminal_of({**attached, "tty": False}, {"COLUMNS": "1", "LINES": "1"}) is None
    assert terminal_of({**attached, "tty": True}, {}) == (80, 24)
    assert terminal_of({**attached, "force_no_tty": True}, {"COLUMNS": "9", "LINES": "9"}) is None
    assert terminal_of(attached, {"COLUMNS": "0", "LINES": "x"}) is None


def test_request_models_name_the_wrong_field(client, server):
    """A body of the wrong shape is a 422 that says which field, what was expected and
    what came; fields the platform does not know are ignored, as Heroku ignores them."""
    auth = {"Authorization": f"Bearer {server.token}", "Accept": V3}
    client.create_app("shapes")

    def refused(method: str, path: str, body: object) -> str:
        r = requests.request(method, f"{server.url}{path}", json=body, headers=auth)
        assert r.status_code == 422 and r.json()["id"] == "invalid_params", r.text
        return r.json()["message"]

    assert (
        refused("POST", "/apps", {"name": 5}) == "name must be a string or null, not the number 5."
    )
    assert "updates[0].type is required" in refused(
        "PATCH", "/apps/shapes/formation", {"updates": [{"quantity": 1}]}
    )
    assert "updates must be a list" in refused("PATCH", "/apps/shapes/formation", {"updates": 3})
    assert "quantity must be" in refused("PATCH", "/apps/shapes/formation/web", {"quantity": [1]})
    message = refused("POST", "/apps/shapes/releases", {"release": True})
    assert message.startswith("release must be a string or a whole number or null"), message
    assert "not true" in message
    made = requests.post(
        f"{server.url}/apps", json={"name": "lenient", "region": "eu", "extra": 1}, headers=auth
    )
    assert made.status_code == 201 and made.json()["name"] == "lenient"


def test_responses_follow_herokus_schema(client, server, tmp_path):
    """Every answer of a release flow follows the schema's shapes: UUID ids, ISO 8601
    UTC times, nested {id, name} references (selfhost.platform.api.models)."""
    from selfhost.platform.api import models

    app = client.create_app("schema-app")
    path, checksum, size = make_slug(tmp_path)
    client.release_slug(
        "schema-app", path, checksum=checksum, size=size, process_types={"web": "x"}
    )
    client.update_config("schema-app", {"K": "v"})
    auth = {"Authorization": f"Bearer {server.token}", "Accept": V3}

    def get(path: str) -> object:
        r = requests.get(f"{server.url}{path}", headers=auth)
        assert r.status_code == 200, r.text
        return r.json()

    assert models.conforms(models.App, app) == []
    assert models.conforms(models.App, get("/apps/schema-app")) == []
    assert models.conforms(models.Account, get("/account")) == []
    releases = get("/apps/schema-app/releases")
    assert isinstance(releases, list) and len(releases) == 2
    for release in releases:
        assert models.conforms(models.Release, release) == [], release
    slug_id = releases[0]["slug"]["id"]
    assert models.conforms(models.Slug, get(f"/apps/schema-app/slugs/{slug_id}")) == []
    for entry in get("/apps/schema-app/formation"):  # type: ignore[union-attr]
        assert models.conforms(models.Formation, entry) == [], entry
    # the checker itself finds what is wrong
    broken = {**app, "id": "app-1", "created_at": "yesterday"}
    del broken["owner"]
    assert sorted(models.conforms(models.App, broken)) == [
        "created_at: not an ISO 8601 UTC time",
        "id: not a UUID",
        "owner: missing",
    ]
