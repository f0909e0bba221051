"""The slug routes, and the blob URLs a slug is uploaded to and downloaded from.

==========  ==========================================  ===================================
method      path                                        what
==========  ==========================================  ===================================
POST        /apps/{app}/slugs                           create; answers ``blob: {method, url}``
GET         /apps/{app}/slugs/{slug}                    slug info; once uploaded, ``blob`` is
                                                        its download URL
PUT         /blobs/{slug}?token=...                     upload the slug archive (the blob URL)
GET         /blobs/{slug}?token=...                     download it
==========  ==========================================  ===================================

The blob URLs carry their own per-slug secret, like Heroku's pre-signed URLs. An uploaded
blob is hashed while it streams to disk; if its sha256 differs from the slug's declared
checksum, or it would unpack outside ``/app`` or beyond the limits, it is discarded and
the slug stays unreleasable.
"""

from __future__ import annotations

import os

from selfhost.archive import Limits
from selfhost.errors import SlugError
from selfhost.platform.api.errors import ApiError
from selfhost.platform.api.streams import Stream, file_chunks
from selfhost.platform.api.web import URL, Call, Endpoint, Reply
from selfhost.platform.slugs.slug import UNPACK_LIMITS, check_slug


def endpoints(unpack_limits: Limits = UNPACK_LIMITS) -> list[Endpoint]:
    """The routes; ``unpack_limits`` is what an uploaded slug may unpack to."""

    def slugs_create(call: Call, app: str) -> Reply:
        slug, token = call.ctx.store.create_slug(app, call.json())
        slug["blob"] = {"method": "put", "url": f"{call.base_url}/blobs/{slug['id']}?token={token}"}
        return 201, slug

    def slugs_info(call: Call, app: str, slug: str) -> Reply:
        found = call.ctx.store.slug(app, slug)
        token = call.ctx.store.download_token(found["id"])
        if token:  # uploaded: its blob is a pre-signed GET URL, as Heroku's
            url = f"{call.base_url}/blobs/{found['id']}?token={token}"
            found["blob"] = {"method": "get", "url": url}
        return 200, found

    def blob_get(call: Call, slug: str) -> Reply:
        """The slug archive, streamed, from its download URL (its own secret)."""
        row = call.ctx.store.slug_for_download(slug, call.query_str("token"))
        return 200, Stream(file_chunks(call.ctx.paths.blob(row["blob_sha256"])), "application/gzip")

    def blob_put(call: Call, slug: str) -> Reply:
        store, paths = call.ctx.store, call.ctx.paths
        row = store.slug_for_upload(slug, call.query_str("token"))
        with call.receive_body("blob") as (digest, length, tmp):
            declared = row["checksum"]
            if declared and declared != f"SHA256:{digest}":
                raise ApiError(
                    422,
                    "checksum_mismatch",
                    f"The uploaded blob's checksum is SHA256:{digest} but the slug "
                    f"declares {declared}; the blob was discarded.",
                )
            try:
                # refuse escaping entries and bombs before anything could unpack them
                check_slug(tmp, unpack_limits)
            except SlugError as exc:
                raise ApiError(422, "invalid_slug", exc.message) from None
            os.chmod(tmp, 0o644)
            os.replace(tmp, paths.blob(digest))  # in place before it is recorded
            store.attach_blob(slug, digest, length)
            return 200, None

    return [
        Endpoint("POST", "/apps/{app}/slugs", slugs_create),
        Endpoint("GET", "/apps/{app}/slugs/{slug}", slugs_info),
        Endpoint("PUT", "/blobs/{slug}", blob_put, URL),
        Endpoint("GET", "/blobs/{slug}", blob_get, URL),
    ]
