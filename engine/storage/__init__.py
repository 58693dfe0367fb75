"""Where uploads and generated artifacts live, behind one interface (:class:`Storage`).

Two back ends, chosen by ``[engine.storage] backend`` (``engine.services.build_storage``):

- :class:`~engine.storage.local.LocalStorage` (default): files under the data directory;
  the engine itself receives uploads (its own pre-signed PUT URL) and serves artifacts
  (its own signed GET URL).
- :class:`~engine.storage.s3.S3Storage`: an S3-compatible bucket; clients PUT uploads to
  the store's own pre-signed URL and GET artifacts from its pre-signed URLs, so no upload
  byte passes through an API process. An upload is looked at (HEAD) and checked when it
  is first used, since the engine never saw it arrive.

Code that needs a file on disk (ffmpeg, Pillow, training) asks for one with
:meth:`Storage.local_upload` / :meth:`Storage.local_artifact`: the file itself on local
disk, a downloaded temporary copy on S3.

Errors::

    StorageError           the store cannot do what was asked
     ├── NotStored         no such object
     ├── TooLarge          a stream or object is past its size cap; nothing was kept
     └── Refused           bytes that arrived but cannot be used; nothing was kept
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class StorageError(Exception):
    """Root of the storage errors; the message says what happened."""


class NotStored(StorageError):
    """The upload or artifact does not exist in the store."""


class TooLarge(StorageError):
    """The stream or object went past its size cap; nothing was kept."""


class Refused(StorageError):
    """The bytes arrived but cannot be used (empty, or refused by a check); nothing was kept."""


Check = Callable[[Path], str | None]
"""A blocking check of a complete file: ``None`` when usable, else why not."""


@dataclass(frozen=True)
class StoredObject:
    """What the store says about an object without reading it (a HEAD)."""

    size: int
    content_type: str | None


class Storage(Protocol):
    """Uploads by upload id, artifacts by key (``voices/<id>/<gen>.mp3``, ``loras/<id>...``).

    The ``local_*``, ``write_*``, ``artifact_file`` and ``delete_*`` methods block (workers
    and threads call them); ``stat_upload`` is async for the API's event loop.
    """

    @property
    def direct_uploads(self) -> bool:
        """True when clients PUT uploads to the store itself (the engine never sees them)."""
        ...

    def presigned_put(self, upload_id: str, content_type: str, ttl: int) -> str | None:
        """The store's own pre-signed PUT URL for an upload, or None: the engine receives it."""
        ...

    def presigned_get(self, key: str, ttl: int) -> str | None:
        """The store's own pre-signed GET URL for an artifact, or None: the engine serves it."""
        ...

    async def stat_upload(self, upload_id: str) -> StoredObject | None:
        """Size and content type of an upload's bytes, or None when nothing was uploaded."""
        ...

    def local_upload(self, upload_id: str, max_bytes: int) -> AbstractContextManager[Path]:
        """The upload as a file on local disk for the length of the ``with`` block.

        Raises :class:`NotStored` when there is none and :class:`TooLarge` past ``max_bytes``
        (checked before anything is copied).
        """
        ...

    def local_artifact(self, key: str) -> AbstractContextManager[Path]:
        """An artifact as a file on local disk (a LoRA for the pipeline); NotStored if absent."""
        ...

    def artifact_file(self, key: str) -> AbstractContextManager[Path]:
        """A path to write an artifact to; it is stored when the block ends without error."""
        ...

    def write_artifact(self, key: str, data: bytes) -> None:
        """Store a generated artifact."""
        ...

    def delete_upload(self, upload_id: str) -> None:
        """Delete an upload's bytes (no error when there are none)."""
        ...

    def delete_artifact(self, key: str) -> None:
        """Delete a stored artifact (no error when there is none)."""
        ...

    def delete_artifacts(self, folder: str) -> None:
        """Delete every artifact under ``folder`` (``voice-states/<clip>``: the keys that
        start with ``folder + "/"``; no error when there are none)."""
        ...


__all__ = [
    "Check",
    "NotStored",
    "Refused",
    "Storage",
    "StorageError",
    "StoredObject",
    "TooLarge",
]
