"""The speech stream (an engine extension): a generation's audio sent while it is made.

The worker stores each piece of a streamed job as soon as it is made
(:func:`engine.voice.handlers.stream_part_key`, one small WAV each, in the artifact storage
that every API replica and worker shares); the API sends the pieces on, in order, as one
WAV whose length is left open (the RIFF and data sizes are ``0xFFFFFFFF``, as live encoders
write them), and deletes each piece once sent. The response starts only with the first
piece: a job that fails before it answers with its reason like the synchronous route.

Async code only: the model runs in the job worker, as for every speech.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncSession

from engine.errors import JobOutcomeError, StillRunning
from engine.models import Job, JobStatus
from engine.storage import NotStored, Storage
from engine.voice.handlers import GENERATE_KIND, generation_id_of, stream_part_key
from engine.voice.service import VoiceServices, check_language, clean_text, owned_voice

log = logging.getLogger(__name__)

# How often the API looks for the next piece while the worker makes it.
POLL_SECONDS = 0.03
# How often it reads the job's state meanwhile (a database read).
STATE_SECONDS = 0.25
# The open-ended size of a live WAV's RIFF and data chunks.
_OPEN = 0xFFFFFFFF


def wav_header(sample_rate: int) -> bytes:
    """The header of a 16-bit mono WAV of unknown length."""
    return (
        b"RIFF"
        + struct.pack("<I", _OPEN)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", _OPEN)
    )


def _pcm_of(data: bytes) -> tuple[int, bytes]:
    """A stored piece's (sample rate, 16-bit mono PCM)."""
    with wave.open(io.BytesIO(data), "rb") as fh:
        return fh.getframerate(), fh.readframes(fh.getnframes())


def _take_blocking(storage: Storage, key: str, wait: float) -> bytes | None:
    """A stored piece's bytes, deleted once read; ``None`` if it is not there within
    ``wait`` seconds (looked for every :data:`POLL_SECONDS`, in this thread: the event loop
    schedules no timer per look). The looks are counted, not timed: a test's virtual clock
    may stand still while this thread sleeps."""
    looks = max(1, math.ceil(wait / POLL_SECONDS) + 1)
    for look in range(looks):
        try:
            with storage.local_artifact(key) as path:
                data = path.read_bytes()
        except NotStored:
            if look < looks - 1:
                time.sleep(POLL_SECONDS)
            continue
        storage.delete_artifact(key)
        return data
    return None


@dataclass
class SpeechStream:
    """One streamed generation, its first piece already made."""

    services: VoiceServices
    job_id: str
    voice_id: str
    sample_rate: int
    first: bytes
    deadline: float
    sent: int = 1
    _final: Job | None = field(default=None, repr=False)

    @property
    def generation_id(self) -> str:
        """The generation the job records (``GET /api/voices/generations/{id}`` once done)."""
        return generation_id_of(self.job_id)

    async def _take(self, index: int, wait: float = 0.0) -> bytes | None:
        """Piece ``index`` once stored (waiting up to ``wait`` seconds for it), or ``None``."""
        key = stream_part_key(self.voice_id, self.generation_id, index)
        return await anyio.to_thread.run_sync(_take_blocking, self.services.storage, key, wait)

    async def next_piece(self, index: int) -> bytes | None:
        """Piece ``index``, waited for while the job runs; ``None`` once the job has ended
        without it (or the wait limit passed)."""
        while time.monotonic() < self.deadline:
            # Final before the look: every piece was stored before the job ended.
            final = self._final is not None
            data = await self._take(index, 0.0 if final else STATE_SECONDS)
            if data is not None or final:
                return data
            await self._job()
        return None

    async def _job(self) -> Job | None:
        """The job once final (kept), else ``None``."""
        if self._final is None:
            job = await self.services.jobs.get(self.job_id)
            if job is None or JobStatus(job.status).is_final:
                self._final = job or Job(status=JobStatus.FAILED.value)
        return self._final

    async def body(self) -> AsyncIterator[bytes]:
        """The WAV: its header, then each piece's samples as the worker stores them."""
        try:
            yield wav_header(self.sample_rate) + self.first
            while (data := await self.next_piece(self.sent)) is not None:
                self.sent += 1
                yield _pcm_of(data)[1]
            if self._final is None:
                log.warning("speech stream of job %s: cut off at the wait limit", self.job_id)
        finally:
            # A listener gone (or the wait over) leaves the worker's later pieces: they are
            # taken away once it ends, within the wait limit.
            with anyio.CancelScope(shield=True):
                await self._tidy()

    async def _tidy(self) -> None:
        while await self._job() is None and time.monotonic() < self.deadline:
            await anyio.to_thread.run_sync(time.sleep, STATE_SECONDS)
        job = self._final
        stored = (job.result or {}).get("stream_parts") if job is not None else None
        last = int(stored) if isinstance(stored, int) else self.sent
        for index in range(self.sent, last):
            await self._take(index)


async def open_stream(
    services: VoiceServices,
    session: AsyncSession,
    user_id: str,
    voice_id: str,
    text: str,
    locale: str | None = None,
) -> SpeechStream:
    """Queue a streamed speech of ``text`` in the caller's voice and wait for its first
    piece (same checks as the synchronous route: text, ownership, language, the member's
    job cap)."""
    text = clean_text(text, services.settings.limits.max_speech_chars)
    await owned_voice(session, user_id, voice_id)
    await check_language(services, text, locale)
    # Give the connection back while the job runs: waiters must not starve the pool.
    await session.commit()
    job = await services.jobs.submit(
        GENERATE_KIND, {"voice_id": voice_id, "text": text, "stream": True}, user_id
    )
    wait = services.settings.jobs.wait_timeout_seconds
    stream = SpeechStream(
        services, job.id, voice_id, 0, b"", deadline=time.monotonic() + wait, sent=0
    )
    data = await stream.next_piece(0)
    if data is not None:
        stream.sample_rate, stream.first = _pcm_of(data)
        stream.sent = 1
        return stream
    if stream._final is not None:
        done = stream._final
        raise JobOutcomeError(f"generation failed: {done.error or done.status}")
    # Nobody listens to a speech that has not started by now: it is stopped.
    await services.jobs.cancel(job.id)
    with anyio.CancelScope(shield=True):
        await stream._tidy()
    raise StillRunning(
        f"the speech did not start within {wait:.0f} s, so it was stopped; try again shortly",
        job.id,
    )
