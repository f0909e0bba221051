"""A Platform API client: the same code talks to our daemon or to any Heroku-compatible API.

The release flow is Heroku's own: create the slug (``POST /apps/{app}/slugs`` with its
``process_types`` and ``SHA256:`` checksum), ``PUT`` the archive to the returned blob
URL (no ``Expect`` header), read the slug back to verify what the server recorded, then
``POST /apps/{app}/releases {"slug": id}``.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfhost.errors import PlatformError

ACCEPT = "application/vnd.heroku+json; version=3"


CHUNK = 1 << 20


class ApiRequestError(PlatformError):
    """The API answered with an error (Heroku's ``{"id", "message"}``)."""

    def __init__(self, message: str, *, status: int, ident: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status
        self.ident = ident


@dataclass
class ReleaseResult:
    """What ``invoke release`` did."""

    app: str
    app_created: bool
    slug_id: str
    checksum: str
    size: int
    version: int
    release_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "app_created": self.app_created,
            "slug": self.slug_id,
            "checksum": self.checksum,
            "size": self.size,
            "version": self.version,
            "release": self.release_id,
        }


class PlatformClient:
    """A thin, typed wrapper over the Platform API endpoints selfhost uses."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 60):
        import requests

        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update(
            {"Accept": ACCEPT, "Authorization": f"Bearer {token}", "User-Agent": "selfhost"}
        )

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Any:
        """Call the API; a Heroku-style error becomes a PlatformError with its message."""
        import requests

        url = f"{self.base_url}{path}"
        try:
            resp = self.session.request(method, url, json=body, timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            raise PlatformError(
                f"cannot reach the platform API at {self.base_url}: {exc}",
                hint="is the platform up? (`invoke platform.status`), or check --api",
            ) from None
        if resp.status_code >= 400:
            raise api_error(method, path, resp.status_code, resp.text)
        return resp.json() if resp.content else None

    # ------------------------------------------------------------------ endpoints
    def app(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/apps/{name}")

    def apps(self) -> list[dict[str, Any]]:
        return self.request("GET", "/apps")

    def create_app(self, name: str, stack: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name}
        if stack:
            body["stack"] = stack
        return self.request("POST", "/apps", body)

    def create_slug(self, app: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"/apps/{app}/slugs", body)

    def slug(self, app: str, slug_id: str) -> dict[str, Any]:
        return self.request("GET", f"/apps/{app}/slugs/{slug_id}")

    def upload(self, blob: dict[str, Any], path: Path) -> None:
        """PUT the archive to the blob URL, streamed, with its Content-Length."""
        import requests

        if blob.get("method", "put").lower() != "put":
            raise PlatformError(f"unsupported blob method {blob.get('method')!r}")
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                # A bare requests.put: the blob URL carries its own credentials, and an
                # empty Content-Type matches what pre-signed URLs were signed with.
                resp = requests.put(
                    blob["url"],
                    data=f,
                    timeout=max(self.timeout, 600),
                    headers={"Content-Type": "", "Content-Length": str(size)},
                )
        except requests.RequestException as exc:
            raise PlatformError(
                f"the slug upload failed: {exc}", hint="nothing was released; run the release again"
            ) from None
        if resp.status_code >= 400:
            raise api_error("PUT", "<blob url>", resp.status_code, resp.text)

    def put_file(self, path: str, source: Path, params: dict[str, Any]) -> Any:
        """PUT a file to an API path (with the token), streamed with its length."""
        import requests

        try:
            with open(source, "rb") as f:
                resp = self.session.put(
                    f"{self.base_url}{path}",
                    data=f,
                    params=params,
                    timeout=max(self.timeout, 600),
                    headers={
                        "Content-Length": str(source.stat().st_size),
                        "Content-Type": "application/gzip",
                    },
                )
        except requests.RequestException as exc:
            raise PlatformError(f"the upload to {path} failed: {exc}") from None
        if resp.status_code >= 400:
            raise api_error("PUT", path, resp.status_code, resp.text)
        return resp.json() if resp.content else None

    def download(self, path: str, target: Path) -> bool:
        """GET a blob of the API to ``target``, streamed; False on 404."""
        import requests

        try:
            with self.session.get(
                f"{self.base_url}{path}", stream=True, timeout=(self.timeout, 600)
            ) as resp:
                if resp.status_code == 404:
                    return False
                if resp.status_code >= 400:
                    raise api_error("GET", path, resp.status_code, resp.text)
                with open(target, "wb") as out:
                    for chunk in resp.iter_content(CHUNK):
                        out.write(chunk)
        except requests.RequestException as exc:
            raise PlatformError(f"the download of {path} failed: {exc}") from None
        return True

    def current_slug_id(self, app: str) -> str:
        """The id of the slug the app's current release runs."""
        current = [r for r in self.releases(app) if r.get("current")]
        if not current or not current[-1].get("slug"):
            raise PlatformError(f"{app} has no release with a slug", hint="give the slug's id")
        return str(current[-1]["slug"]["id"])

    def download_slug(self, app: str, slug_id: str | None, target: Path) -> dict[str, Any]:
        """The slug's archive (the current release's if ``slug_id`` is None) at
        ``target``, checked against its checksum; nothing is left if it does not match."""
        import hashlib

        import requests

        slug_id = slug_id or self.current_slug_id(app)
        slug = self.slug(app, slug_id)
        url = (slug.get("blob") or {}).get("url")
        if not url:
            raise PlatformError(f"slug {slug_id} of {app} has no archive yet (never uploaded)")
        partial = target.with_name(f".{target.name}.part")
        sha = hashlib.sha256()
        try:
            with requests.get(url, stream=True, timeout=(self.timeout, 600)) as resp:
                if resp.status_code >= 400:
                    raise api_error("GET", "<slug blob url>", resp.status_code, resp.text)
                with open(partial, "wb") as out:
                    for chunk in resp.iter_content(CHUNK):
                        sha.update(chunk)
                        out.write(chunk)
            if f"SHA256:{sha.hexdigest()}" != slug["checksum"]:
                raise PlatformError(
                    f"the downloaded slug {slug_id} has checksum SHA256:{sha.hexdigest()}, "
                    f"not {slug['checksum']}: it was discarded",
                    hint="the platform's copy is damaged; release the slug again",
                )
            os.replace(partial, target)
        except requests.RequestException as exc:
            raise PlatformError(f"the download of slug {slug_id} failed: {exc}") from None
        finally:
            partial.unlink(missing_ok=True)
        return slug

    def download_stage(self, app: str, input_hash: str, target: Path) -> dict[str, Any]:
        """An app's stage tree, unpacked (safely) at ``target`` (a new directory) and
        checked against its recorded tree digest; nothing is left if it does not match."""
        import shutil
        import tempfile

        from selfhost import archive
        from selfhost.hashing import scan_tree, tree_digest

        if target.exists():
            raise PlatformError(f"{target} exists: give a new directory")
        query = f"?app={urllib.parse.quote(app)}"
        info = self.request("GET", f"/stages/{input_hash}{query}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".stage-") as tmp:
            blob, tree = Path(tmp) / "stage.tar.gz", Path(tmp) / "tree"
            if not self.download(f"/stages/{input_hash}/blob{query}", blob):
                raise PlatformError(f"{app} has no stage {input_hash[:12]}")
            try:
                archive.extract(blob, tree, what="stage")
            except archive.ArchiveError as exc:
                raise PlatformError(f"the platform's stage {input_hash[:12]}: {exc}") from None
            actual = tree_digest(scan_tree(tree))
            if actual != info["tree_digest"]:
                raise PlatformError(
                    f"the downloaded stage {input_hash[:12]} has tree digest {actual[:16]}, "
                    f"not {info['tree_digest'][:16]} as recorded: it was discarded"
                )
            shutil.move(str(tree), target)
        return info

    def fetch_stage(self, input_hash: str, dest: Path) -> dict[str, Any] | None:
        """A stage of the platform's stage store, unpacked (safely) at ``dest``: its
        record plus ``origin``; None if the store has no stage with that input hash."""
        import tempfile

        from selfhost import archive

        try:
            info = self.request("GET", f"/stages/{input_hash}")
        except PlatformError as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            blob = Path(tmp) / "stage.tar.gz"
            if not self.download(f"/stages/{input_hash}/blob", blob):
                return None
            try:
                archive.extract(blob, dest, what="stage")
            except archive.ArchiveError as exc:
                raise PlatformError(f"the platform's stage {input_hash[:12]}: {exc}") from None
        built = f"job {info['job_id']}" if info.get("job_id") else "a bootstrap's release"
        return {**info, "origin": f"{self.base_url}, built by {built}"}

    def release(self, app: str, slug_id: str, description: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"slug": slug_id}
        if description:
            body["description"] = description
        return self.request("POST", f"/apps/{app}/releases", body)

    def releases(self, app: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/apps/{app}/releases")

    def rollback(self, app: str, version: str) -> dict[str, Any]:
        return self.request("POST", f"/apps/{app}/releases", {"release": version})

    def config(self, app: str) -> dict[str, str]:
        return self.request("GET", f"/apps/{app}/config-vars")

    def update_config(self, app: str, changes: dict[str, str | None]) -> dict[str, str]:
        return self.request("PATCH", f"/apps/{app}/config-vars", changes)

    def formation(self, app: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/apps/{app}/formation")

    def update_formation(self, app: str, updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.request("PATCH", f"/apps/{app}/formation", {"updates": updates})

    def create_dyno(self, app: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"/apps/{app}/dynos", body)

    def dynos(self, app: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/apps/{app}/dynos")

    def dyno(self, app: str, ident: str) -> dict[str, Any]:
        return self.request("GET", f"/apps/{app}/dynos/{ident}")

    def stop_dyno(self, app: str, ident: str) -> dict[str, Any]:
        return self.request("POST", f"/apps/{app}/dynos/{ident}/actions/stop")

    def submit_job(self, app: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"/apps/{app}/jobs", body)

    def jobs(self, app: str, states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        query = "&".join(f"state={s}" for s in states)
        return self.request("GET", f"/apps/{app}/jobs" + (f"?{query}" if query else ""))

    def job(self, app: str, job: int | str, log: int = 0) -> dict[str, Any]:
        return self.request("GET", f"/apps/{app}/jobs/{job}" + (f"?log={log}" if log else ""))

    def cancel_job(self, app: str, job: int | str) -> dict[str, Any]:
        return self.request("POST", f"/apps/{app}/jobs/{job}/actions/cancel")

    def log_session(self, app: str, *, tail: bool, lines: int) -> str:
        return self.request("POST", f"/apps/{app}/log-sessions", {"tail": tail, "lines": lines})[
            "logplex_url"
        ]

    def stream(self, url: str) -> Iterator[bytes]:
        """The body of a streamed URL (a dyno's attach URL, a log URL), as it comes."""
        import requests

        try:
            with requests.get(url, stream=True, timeout=(10, None)) as resp:
                if resp.status_code >= 400:
                    raise api_error("GET", "<stream url>", resp.status_code, resp.text)
                yield from resp.iter_content(chunk_size=None)
        except requests.RequestException as exc:
            raise PlatformError(f"the stream from the platform broke off: {exc}") from None

    # ------------------------------------------------------------------ the flow
    def release_slug(
        self,
        app: str,
        slug_path: Path,
        *,
        checksum: str,
        size: int,
        process_types: dict[str, str],
        stack: str | None = None,
        commit: str | None = None,
        description: str | None = None,
        create_app: bool = False,
    ) -> ReleaseResult:
        """Create, upload, verify and release a slug; create the app first if asked to."""
        created = False
        try:
            self.app(app)
        except ApiRequestError as exc:
            if exc.status != 404 or not create_app:
                raise
            self.create_app(app, stack)
            created = True
        body: dict[str, Any] = {"process_types": process_types, "checksum": checksum}
        if stack:
            body["stack"] = stack
        if commit:
            body["commit"] = commit
        if description:
            body["buildpack_provided_description"] = description
        slug = self.create_slug(app, body)
        self.upload(slug["blob"], slug_path)
        recorded = self.slug(app, slug["id"])
        if recorded.get("checksum") not in (None, checksum) or recorded.get("size") not in (
            None,
            size,
        ):
            raise PlatformError(
                f"the platform recorded checksum {recorded.get('checksum')} and size "
                f"{recorded.get('size')} for slug {slug['id']}, expected {checksum} and {size}",
                hint="the slug was not released; try again",
            )
        release = self.release(app, slug["id"], description)
        return ReleaseResult(
            app, created, slug["id"], checksum, size, int(release["version"]), release["id"]
        )


def api_error(method: str, path: str, status: int, text: str) -> ApiRequestError:
    """Turn a Heroku-style error answer into an ApiRequestError (with its id and status)."""
    try:
        body = json.loads(text)
        ident, message = body.get("id", "error"), body.get("message", text)
    except ValueError:
        ident, message = "error", text.strip()[:300]
    hint = {
        401: "check the API token (HEROKU_API_KEY or selfhost.api_token)",
        404: "check the app name (`invoke apps`)",
    }.get(status)
    return ApiRequestError(
        f"{method} {path}: {status} {ident}: {message}", status=status, ident=ident, hint=hint
    )


def token_for(api_url: str | None, local_token_file: Path, configured: str | None) -> str:
    """The token to use: configured, else HEROKU_API_KEY for a remote API, else ours."""
    if configured:
        return configured
    if api_url and os.environ.get("HEROKU_API_KEY"):
        return os.environ["HEROKU_API_KEY"]
    try:
        return local_token_file.read_text().strip()
    except OSError:
        raise PlatformError(
            f"no API token: {local_token_file} does not exist",
            hint="set HEROKU_API_KEY or selfhost.api_token for a remote API",
        ) from None
