"""Object storage on an S3-compatible service (AWS S3, SeaweedFS, MinIO, R2...), via boto3.

Clients PUT uploads straight to the bucket through pre-signed URLs and GET artifacts from
it the same way; the engine only signs, HEADs, and (workers) downloads what they work on.
boto3 blocks: the one async method runs it in a thread, the others are called from
threads (workers, ``anyio.to_thread``). Signing a URL is local computation once the
credentials are resolved, which happens here at construction, not on a request.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from engine.settings import StorageSettings
from engine.storage import NotStored, StorageError, StoredObject, TooLarge

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")
_CHUNK = 1024 * 1024
_ABSENT = frozenset({"404", "NoSuchKey", "NotFound"})


class S3Storage:
    """Uploads at ``<prefix>uploads/<id>``, artifacts at ``<prefix>artifacts/<key>``.

    ``scratch`` holds temporary copies of uploads being worked on; ``cache`` keeps
    artifacts a worker reads again and again (LoRA files), refreshed when their ETag
    changes (a retrained LoRA).
    """

    direct_uploads = True

    def __init__(self, settings: StorageSettings, *, scratch: Path, cache: Path) -> None:
        if not settings.bucket:
            raise ValueError("S3 storage needs a bucket")
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.scratch = scratch
        self.cache = cache
        scratch.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        secret = settings.secret_access_key
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            region_name=settings.region,
        )
        if session.get_credentials() is None:
            raise ValueError(
                "S3 storage has no credentials: set storage.access_key_id and "
                "TADA_ENGINE_S3_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
        self.client: Any = session.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": settings.addressing_style},
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )

    # ------------------------------------------------------------------ keys

    def upload_key(self, upload_id: str) -> str:
        return f"{self.prefix}uploads/{uuid.UUID(upload_id)}"

    def artifact_key(self, key: str) -> str:
        if not _KEY_RE.match(key) or ".." in key:
            raise ValueError(f"bad artifact key: {key!r}")
        return f"{self.prefix}artifacts/{key}"

    # ------------------------------------------------------------------ URLs

    def presigned_put(self, upload_id: str, content_type: str, ttl: int) -> str | None:
        # Content-Type is a signed header: a PUT with another type is refused by the store.
        # A length range cannot be signed into a PUT (only POST policies have one), so the
        # size is checked by HEAD when the upload is used.
        url: str = self.client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.upload_key(upload_id),
                "ContentType": content_type,
            },
            ExpiresIn=ttl,
            HttpMethod="PUT",
        )
        return url

    def presigned_get(self, key: str, ttl: int) -> str | None:
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.artifact_key(key)},
            ExpiresIn=ttl,
        )
        return url

    # ------------------------------------------------------------------ reads

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _ABSENT:
                return None
            raise StorageError(f"object storage refused a HEAD of {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"object storage cannot be reached: {exc}") from exc
        return head

    def stat_upload_blocking(self, upload_id: str) -> StoredObject | None:
        head = self._head(self.upload_key(upload_id))
        if head is None:
            return None
        return StoredObject(size=int(head["ContentLength"]), content_type=head.get("ContentType"))

    async def stat_upload(self, upload_id: str) -> StoredObject | None:
        return await anyio.to_thread.run_sync(self.stat_upload_blocking, upload_id)

    def _download(self, key: str, dest: Path, max_bytes: int | None) -> str:
        """Stream ``key`` into ``dest`` (past ``max_bytes``: TooLarge, nothing kept); its ETag."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _ABSENT:
                raise NotStored(f"{key} is not in the bucket") from exc
            raise StorageError(f"object storage refused a GET of {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"object storage cannot be reached: {exc}") from exc
        body = resp["Body"]
        try:
            if max_bytes is not None and int(resp["ContentLength"]) > max_bytes:
                raise TooLarge(f"more than {max_bytes} bytes")
            total = 0
            with dest.open("wb") as fh:
                for chunk in body.iter_chunks(_CHUNK):
                    total += len(chunk)
                    if max_bytes is not None and total > max_bytes:
                        raise TooLarge(f"more than {max_bytes} bytes")
                    fh.write(chunk)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            body.close()
        return str(resp.get("ETag", ""))

    @contextlib.contextmanager
    def local_upload(self, upload_id: str, max_bytes: int) -> Iterator[Path]:
        tmp = self.scratch / f"{uuid.uuid4().hex}.upload"
        self._download(self.upload_key(upload_id), tmp, max_bytes)
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def local_artifact(self, key: str) -> Iterator[Path]:
        object_key = self.artifact_key(key)
        head = self._head(object_key)
        if head is None:
            raise NotStored(f"artifact {key} is missing")
        path = self.cache / key
        tag_file = path.with_name(path.name + ".etag")
        etag = str(head.get("ETag", ""))
        fresh = path.is_file() and tag_file.is_file() and tag_file.read_text() == etag
        if not fresh:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.scratch / f"{uuid.uuid4().hex}.artifact"
            etag = self._download(object_key, tmp, None)
            os.replace(tmp, path)
            tag_file.write_text(etag)
        yield path

    # ------------------------------------------------------------------ writes

    def write_artifact(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.artifact_key(key), Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"object storage refused to store {key}: {exc}") from exc

    @contextlib.contextmanager
    def artifact_file(self, key: str) -> Iterator[Path]:
        object_key = self.artifact_key(key)
        folder = self.scratch / uuid.uuid4().hex
        folder.mkdir()
        path = folder / Path(key).name
        try:
            yield path
            try:
                self.client.upload_file(str(path), self.bucket, object_key)
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"object storage refused to store {key}: {exc}") from exc
        finally:
            for leftover in folder.iterdir():
                leftover.unlink(missing_ok=True)
            folder.rmdir()

    def delete_upload(self, upload_id: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.upload_key(upload_id))
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"object storage refused to delete an upload: {exc}") from exc

    def delete_artifact(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.artifact_key(key))
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"object storage refused to delete an artifact: {exc}") from exc
        (self.cache / key).unlink(missing_ok=True)

    def delete_artifacts(self, folder: str) -> None:
        prefix = self.artifact_key(folder) + "/"
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                # One DELETE each: a folder holds a few objects, and every S3-compatible
                # store has DeleteObject (not all take DeleteObjects' checksum).
                for item in page.get("Contents", []):
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"object storage refused to delete artifacts: {exc}") from exc
        shutil.rmtree(self.cache / folder, ignore_errors=True)
