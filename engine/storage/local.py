"""File storage on local disk: streamed uploads and generated artifacts.

Bytes stream to a temporary file in 1 MiB batches written off the event loop, are
checked there, then move into place atomically, so a failed, oversized, empty or refused
upload leaves nothing behind and whatever was stored before stays as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio.to_thread

from engine.storage import Check, NotStored, Refused, StoredObject, TooLarge

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")
_BATCH = 1024 * 1024


class LocalStorage:
    """Uploads under ``<root>/uploads/<id>``, artifacts under ``<root>/artifacts/<key>``.

    The engine is the target of both URLs: it receives uploads (``PUT /storage/uploads``)
    and serves artifacts (``GET /storage/artifacts``) itself.
    """

    direct_uploads = False

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "uploads").mkdir(parents=True, exist_ok=True)
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def upload_path(self, upload_id: str) -> Path:
        return self.root / "uploads" / str(uuid.UUID(upload_id))

    def artifact_path(self, key: str) -> Path:
        if not _KEY_RE.match(key) or ".." in key:
            raise ValueError(f"bad artifact key: {key!r}")
        return self.root / "artifacts" / key

    def presigned_put(self, upload_id: str, content_type: str, ttl: int) -> str | None:
        return None  # the engine's own signed URL (engine/api/upload_urls.py)

    def presigned_get(self, key: str, ttl: int) -> str | None:
        return None  # the engine's own signed URL (EngineServices.artifact_url)

    async def stat_upload(self, upload_id: str) -> StoredObject | None:
        path = self.upload_path(upload_id)
        try:
            size = (await anyio.to_thread.run_sync(path.stat)).st_size
        except FileNotFoundError:
            return None
        return StoredObject(size=size, content_type=None)

    @contextlib.contextmanager
    def local_upload(self, upload_id: str, max_bytes: int) -> Iterator[Path]:
        path = self.upload_path(upload_id)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise NotStored(f"upload {upload_id} has no bytes") from exc
        if size > max_bytes:
            raise TooLarge(f"more than {max_bytes} bytes")
        yield path

    @contextlib.contextmanager
    def local_artifact(self, key: str) -> Iterator[Path]:
        path = self.artifact_path(key)
        if not path.is_file():
            raise NotStored(f"artifact {key} is missing")
        yield path

    @contextlib.contextmanager
    def artifact_file(self, key: str) -> Iterator[Path]:
        # Written in place: the pipeline writes its own file atomically (tmp + replace).
        path = self.artifact_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        yield path

    def delete_upload(self, upload_id: str) -> None:
        self.upload_path(upload_id).unlink(missing_ok=True)

    def delete_artifact(self, key: str) -> None:
        self.artifact_path(key).unlink(missing_ok=True)

    def delete_artifacts(self, folder: str) -> None:
        path = self.artifact_path(folder)
        if path.is_dir():
            shutil.rmtree(path)

    async def write_stream(
        self,
        dest: Path,
        chunks: AsyncIterator[bytes],
        max_bytes: int,
        check: Check | None = None,
    ) -> int:
        """Stream ``chunks`` into ``dest``; raise :class:`TooLarge` past ``max_bytes``.

        An empty stream, or one that ``check`` (run in a thread on the complete temporary
        file) refuses, raises :class:`Refused`; ``dest`` is only replaced by bytes that pass.
        """
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}.part"
        fh = await anyio.to_thread.run_sync(open, tmp, "wb")
        total = 0
        buf = bytearray()
        try:
            async for chunk in chunks:
                total += len(chunk)
                if total > max_bytes:
                    raise TooLarge(f"more than {max_bytes} bytes")
                buf += chunk
                if len(buf) >= _BATCH:
                    data, buf = bytes(buf), bytearray()
                    await anyio.to_thread.run_sync(fh.write, data)
            if buf:
                await anyio.to_thread.run_sync(fh.write, bytes(buf))
            await anyio.to_thread.run_sync(fh.close)
            if total == 0:
                raise Refused("the file is empty")
            problem = await anyio.to_thread.run_sync(check, tmp) if check else None
            if problem is not None:
                raise Refused(problem)
            await anyio.to_thread.run_sync(os.replace, tmp, dest)
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
        return total

    def write_artifact(self, key: str, data: bytes) -> None:
        """Blocking write of a generated artifact (workers call this)."""
        path = self.artifact_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
