"""Job handlers of the voice package: clone a voice from an upload, generate speech.

Both run in the job worker (blocking code). One :class:`VoiceHandlers` per engine (built by
the composition root, :mod:`engine.services`) owns the voice back end: built on first use
(so API-only processes never import the models), loaded by the worker's warm-up or the
first voice job, and shared by every worker thread of that engine.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from engine.jobs import Handler, JobContext, JobFailed
from engine.models import Upload, UploadKind, UploadStatus, new_id, utcnow
from engine.storage import NotStored, Storage, TooLarge
from engine.voice.audio import CONTENT_TYPES, SampleRejected, encode, load_sample
from engine.voice.backend import SpeakerProfile, Speech, VoiceBackend, stream_speech
from engine.voice.fingerprint import fingerprint
from engine.voice.language import LanguageCheck
from engine.voice.models import Voice, VoiceGeneration
from engine.voice.piper_base import BaseVoiceError
from engine.voice.settings import AudioFormat, VoiceBackendName, VoiceSettings
from engine.voice.trace import fingerprint_row
from engine.voice.watermark import Watermarker

log = logging.getLogger(__name__)

# An upload a clone may use: uploaded, or taken for this clone by the API (processing).
_USABLE = (UploadStatus.UPLOADED.value, UploadStatus.PROCESSING.value)
CLONE_KIND = "voice.clone"
GENERATE_KIND = "voice.generate"
# How often a generation checks for cancellation (a DB read), in seconds.
_CANCEL_CHECK_SECONDS = 1.0


def build_backend(settings: VoiceSettings, storage: Storage | None = None) -> VoiceBackend:
    """The back end ``settings`` name; its models load later (``warm_up`` or first use).
    ``storage``: where the pocket back end keeps voices' model states for every worker."""
    # Imported here: pyworld, Piper, torch and transformers load only where voice work runs.
    from engine.voice.choice import chosen_backend

    chosen = chosen_backend(settings)
    if chosen is VoiceBackendName.QWEN3:
        from engine.voice.qwen3 import Qwen3Backend

        return Qwen3Backend(settings)
    if settings.backend is VoiceBackendName.NEURAL:
        from engine.voice.neural import NeuralBackend

        return NeuralBackend(settings)
    if settings.backend in (VoiceBackendName.POCKET, VoiceBackendName.AUTO):
        from engine.voice.pocket import PocketBackend

        return PocketBackend(settings, storage=storage)
    from engine.voice.reference import CpuReferenceBackend

    return CpuReferenceBackend(settings)


def warm_up_voice(backend: VoiceBackend, stop: threading.Event | None = None) -> bool:
    """Load the voice models now (blocking), with a log line before and after.

    Returns whether they loaded; a broken install is logged here and fails each voice job
    with the reason later. ``stop`` (shutdown) ends it early, between models.
    """
    if backend.warm:
        return True
    log.info(
        "voice: loading the models in the background (a clone started meanwhile waits for them)"
    )
    started = time.monotonic()
    try:
        backend.warm_up(stop)
    except BaseVoiceError as exc:
        log.error("voice: the back end cannot start: %s", exc)
        return False
    if not backend.warm:  # stopped early
        return False
    log.info(
        "voice: models ready in %.1f s; clones and speech start at once", time.monotonic() - started
    )
    return True


def artifact_key(voice_id: str, generation_id: str, settings: VoiceSettings) -> str:
    """Where a generation's audio is stored."""
    return f"voices/{voice_id}/{generation_id}.{settings.audio_format.value}"


# Generation ids are derived from their job's id (uuid5 in this namespace).
_GENERATION_IDS = uuid.UUID("5e1d7a0c-6b2f-4a7e-9c1d-7ada00000001")


def stream_part_key(voice_id: str, generation_id: str, index: int) -> str:
    """Where the ``index``-th piece of a streamed generation waits for the API (a WAV)."""
    return f"voices/{voice_id}/{generation_id}.stream/{index:04d}.wav"


def generation_id_of(job_id: str) -> str:
    """The id of the generation a speech job records (the API knows it from the job's id)."""
    return str(uuid.uuid5(_GENERATION_IDS, job_id))


def _speech_result(row: VoiceGeneration, stream_parts: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = {
        "generation_id": row.id,
        "content_type": CONTENT_TYPES[AudioFormat(row.audio_format)],
        "similarity": row.similarity,
    }
    if stream_parts:
        # How many pieces a streamed job stored: the API takes away any left unsent.
        result["stream_parts"] = stream_parts
    return result


class VoiceHandlers:
    """The worker side of voices: the back end and the two handlers, on one instance."""

    def __init__(
        self,
        settings: VoiceSettings,
        *,
        backend: VoiceBackend | None = None,
        watermarker: Watermarker | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        self._backend = backend
        # The engine's storage, for the back end it builds (voices' model states).
        self._storage = storage
        self._backend_lock = threading.Lock()
        # PerTh's net ([engine.voice] watermark): loaded by the warm-up or first use.
        self._watermarker = watermarker if settings.watermark else None
        if settings.watermark and self._watermarker is None:
            self._watermarker = Watermarker()
        # What the back end speaks, and the text's language (the API asks before queueing).
        self.languages = LanguageCheck(settings)

    @property
    def backend(self) -> VoiceBackend:
        """The back end of ``[engine.voice] backend``, built on first use and kept."""
        with self._backend_lock:
            if self._backend is None:
                self._backend = build_backend(self.settings, self._storage)
            return self._backend

    @property
    def watermarker(self) -> Watermarker | None:
        """The watermark's net, or ``None`` when ``[engine.voice] watermark`` is off."""
        return self._watermarker

    def _mark(self, speech: Speech) -> Speech:
        """``speech`` with the watermark (the setting on); a net that cannot load fails
        the job with the reason, so no speech leaves unmarked."""
        if self._watermarker is None:
            return speech
        return Speech(self._watermarker.apply(speech.audio, speech.sample_rate), speech.sample_rate)

    def handlers(self) -> dict[str, Handler]:
        """Job kind -> handler."""
        return {CLONE_KIND: self.clone, GENERATE_KIND: self.generate}

    def warm_up(self, stop: threading.Event | None = None) -> bool:
        """Load the back end's models now (see :func:`warm_up_voice`), and the watermark's."""
        if not warm_up_voice(self.backend, stop):
            return False
        if self._watermarker is not None and not (stop is not None and stop.is_set()):
            try:
                self._watermarker.load()
            except BaseVoiceError as exc:
                log.error("voice: the watermark cannot start: %s", exc)
                return False
        return True

    def _ready_backend(self) -> VoiceBackend:
        """The back end with its models loaded; a broken install fails the job at once."""
        backend = self.backend
        try:
            _ = backend.sample_rate  # loads the base voice
        except BaseVoiceError as exc:
            # Retrying cannot fix a missing or wrong model file: fail with the reason.
            raise JobFailed(f"the voice back end cannot start: {exc}") from exc
        return backend

    def clone(self, ctx: JobContext) -> dict[str, Any]:
        """Decode, judge and analyse the upload; store the voice; mark the upload used."""
        upload_id = str(ctx.payload["upload_id"])
        with ctx.sessions() as s:
            upload = s.get(Upload, upload_id)
            if (
                upload is None
                or upload.user_id != ctx.user_id
                or upload.kind != UploadKind.VOICE.value
            ):
                raise JobFailed("upload not found")
            # The queue is at-least-once (a stalled worker's job is handed to another): a
            # run after one that finished finds its voice instead of failing.
            done = s.scalar(
                select(Voice.id).where(Voice.upload_id == upload_id, Voice.user_id == ctx.user_id)
            )
            if done is not None:
                return {"voice_id": done}
            if upload.status not in _USABLE:
                raise JobFailed(f"upload is {upload.status}, not uploaded")
            name = upload.name
        s_ = self.settings
        backend = self._ready_backend()
        try:
            # On object storage a downloaded copy, deleted when the block ends.
            with ctx.storage.local_upload(upload_id, ctx.settings.uploads.max_audio_bytes) as path:
                sample = load_sample(
                    path,
                    sample_rate=backend.sample_rate,
                    min_seconds=s_.min_sample_seconds,
                    max_seconds=s_.max_sample_seconds,
                    target_dbfs=s_.target_dbfs,
                    # Two voices in one sample are refused (the back end's speaker encoder).
                    encoder=getattr(backend, "encoder", None),
                )
            ctx.report(30)
            profile = backend.analyse(sample)
        except NotStored as exc:
            raise JobFailed("the uploaded sample is gone; upload it again") from exc
        except (SampleRejected, TooLarge) as exc:
            with ctx.sessions.begin() as s:
                s.execute(
                    update(Upload)
                    .where(Upload.id == upload_id, Upload.status.in_(_USABLE))
                    .values(status=UploadStatus.FAILED.value, error=str(exc), updated_at=utcnow())
                )
            # A refused sample is not kept: nothing can use it, and it counts against no one.
            ctx.storage.delete_upload(upload_id)
            raise JobFailed(str(exc)) from exc
        ctx.report(90)
        voice_id = new_id()
        with ctx.sessions.begin() as s:
            taken = s.execute(
                update(Upload)
                .where(Upload.id == upload_id, Upload.status.in_(_USABLE))
                .values(status=UploadStatus.PROCESSED.value, error=None, updated_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]
            if not taken:
                # Another request used this upload meanwhile; the transaction rolls back.
                raise JobFailed("this upload was already used to clone a voice")
            s.add(
                Voice(
                    id=voice_id,
                    user_id=ctx.user_id,
                    upload_id=upload_id,
                    name=name,
                    backend=profile.backend,
                    sample_seconds=round(sample.original_seconds, 3),
                    speech_seconds=round(sample.speech_seconds, 3),
                    median_f0_hz=profile.median_f0_hz,
                    base_similarity=profile.base_similarity,
                    profile=profile.model_dump(mode="json"),
                )
            )
        return {"voice_id": voice_id}

    def generate(self, ctx: JobContext) -> dict[str, Any]:
        """Speak the text in the voice, store the audio, record the generation.

        A streamed job (``stream`` in its payload, the speech stream extension) also stores
        each piece as soon as it is made (:func:`stream_part_key`), for the API to send on;
        its recorded audio is those pieces back to back, what the listener heard.
        """
        voice_id = str(ctx.payload["voice_id"])
        text = str(ctx.payload["text"])
        with ctx.sessions() as s:
            done = s.scalar(select(VoiceGeneration).where(VoiceGeneration.job_id == ctx.job_id))
            if done is not None:  # an earlier run of this job finished (at-least-once queue)
                return _speech_result(done)
            voice = s.get(Voice, voice_id)
            if voice is None or voice.user_id != ctx.user_id:
                raise JobFailed("voice not found")
            profile = SpeakerProfile.model_validate(voice.profile)
        backend = self._ready_backend()
        last_check = time.monotonic()

        def progress(done: float) -> None:
            nonlocal last_check
            ctx.report(round(5 + 80 * done))
            # A canceled job stops mid-speech (JobCanceled comes out of synthesise).
            if time.monotonic() - last_check >= _CANCEL_CHECK_SECONDS:
                last_check = time.monotonic()
                ctx.check_canceled()

        generation_id = generation_id_of(ctx.job_id)
        parts: list[Speech] = []
        try:
            if ctx.payload.get("stream"):
                speech = self._stream(
                    ctx, backend, voice_id, generation_id, text, profile, progress, parts
                )
            else:
                # Marked before anything measures, encodes or fingerprints it.
                speech = self._mark(backend.synthesise(text, profile, progress))
        except BaseVoiceError as exc:
            raise JobFailed(str(exc)) from exc
        if speech.audio.size == 0:
            raise JobFailed("the text has nothing to say aloud")
        ctx.check_canceled()
        similarity = backend.similarity(speech, profile)
        s_ = self.settings
        data = encode(speech.audio, speech.sample_rate, s_.audio_format, s_.mp3_bitrate_kbps)
        # Traceable from the start: a clip of it found later leads back here (a failure
        # raises, and the job is tried again: no speech leaves untraced).
        trace_fp = fingerprint(speech.audio, speech.sample_rate)
        # One generation per job, whichever run records it: two runs of one job (a stalled
        # worker's and its replacement's) write the same row, and the second insert fails.
        key = artifact_key(voice_id, generation_id, s_)
        ctx.storage.write_artifact(key, data)
        row = VoiceGeneration(
            id=generation_id,
            user_id=ctx.user_id,
            voice_id=voice_id,
            job_id=ctx.job_id,
            text=text,
            audio_key=key,
            audio_format=s_.audio_format.value,
            duration_seconds=round(speech.seconds, 3),
            similarity=round(similarity, 4),
        )
        try:
            with ctx.sessions.begin() as s:
                s.add(row)
                s.flush()  # the generation's row before the fingerprint's, which points at it
                s.add(fingerprint_row(row, trace_fp))
        except IntegrityError:
            with ctx.sessions() as s:
                first = s.get(VoiceGeneration, generation_id)
            if first is None:
                raise
            return _speech_result(first, len(parts))
        return _speech_result(row, len(parts))

    def _stream(
        self,
        ctx: JobContext,
        backend: VoiceBackend,
        voice_id: str,
        generation_id: str,
        text: str,
        profile: SpeakerProfile,
        progress: Callable[[float], None],
        pieces: list[Speech],
    ) -> Speech:
        """Make the speech piece by piece, storing each piece as it comes (and adding it to
        ``pieces``); the whole."""
        for made in stream_speech(backend, text, profile, progress):
            # Each piece is marked as it is made (the whole is these pieces, so it is too).
            piece = self._mark(made)
            data = encode(piece.audio, piece.sample_rate, AudioFormat.WAV, 0)
            ctx.storage.write_artifact(stream_part_key(voice_id, generation_id, len(pieces)), data)
            pieces.append(piece)
        if not pieces:
            return Speech(np.zeros(0, dtype=np.float32), backend.sample_rate)
        audio = np.concatenate([p.audio for p in pieces]).astype(np.float32)
        return Speech(audio, pieces[0].sample_rate)
