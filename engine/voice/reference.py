"""The CPU reference back end: Piper base speech converted toward the speaker with WORLD."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from engine.voice import parallel, world
from engine.voice.audio import Sample, SampleRejected, normalise
from engine.voice.backend import Progress, SpeakerProfile, Speech, pcm16_from_b64
from engine.voice.piper_base import BaseVoiceError, PiperBase
from engine.voice.settings import VoiceSettings
from engine.voice.similarity import SpeakerEncoder, cosine
from engine.voice.transcribe import Transcriber, TranscriberUnavailable

log = logging.getLogger(__name__)
NAME = "cpu-reference"
# Phonetically rich text (the Rainbow Passage) that the base voice reads once per process:
# its F0 statistics and long-term envelope are the "source" side of every conversion.
BASE_REFERENCE_TEXT = (
    "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow. "
    "The rainbow is a division of white light into many beautiful colors. These take the "
    "shape of a long round arch, with its path high above, and its two ends apparently "
    "beyond the horizon. There is, according to legend, a boiling pot of gold at one end. "
    "People look, but no one ever finds it."
)
SENTENCE_PAUSE_S = 0.18
SIMILARITY_SECONDS = 30.0
# Speech has voiced sounds in roughly half of its active time; noise and music do not.
MIN_VOICED_SHARE = 0.15
# A steady tone has almost no pitch movement; speech moves by semitones.
MIN_F0_SPREAD = 0.02
# Fewer heard words than this give too little parallel speech for a mapping.
MIN_TRANSCRIPT_WORDS = 4
# A sample shorter than this is read by the base voice several times (at most
# MAX_READINGS) for the parallel data: one reading of a few seconds is a noisy estimate.
PARALLEL_SECONDS = 12.0
MAX_READINGS = 3
# A part holding this much speech is read once (see parallel_readings).
ONE_READING_SECONDS = 9.0
# A longer sample gives the mapping its first this many seconds only (cut at the quietest
# moment of the last few seconds before it): the transcript, the base voice's reading, both
# analyses and the alignment then cost half of a 30 s sample's, and 15 s of one speaker's
# own words are more than a short sample's three readings of 5 s give.
PARALLEL_MAX_SECONDS = 15.0
_CUT_SEARCH_S = 3.0
# How much of a reading is resynthesised to choose between warps (costs ~0.1 s per second).
CHECK_SECONDS = 10.0
# Neighbours of the warp estimate that are tried as well (and no warp at all).
WARP_STEP = 1.06


# Profiles learnt from other back ends' kept clips, kept in memory.
KEPT_PROFILES = 32
# A streamed speech's first piece: a long first sentence is cut after about this many words
# (at a clause boundary when there is one), since its synthesis is what a listener waits for.
# Four words (about 1.5 s of speech) take ~0.2 s of CPU to make and convert, seven ~0.28 s,
# thirteen ~0.4 s (bench/voice_stream.py's sentence on this machine's cores); the first
# piece's playing time is what the rest of the sentence has to be made in.
FIRST_PIECE_WORDS = 4
# Words a cut never ends on: "climbed the | stairs" sounds broken, "climbed the stairs |" not.
_SHORT_WORD = 3
# The gap between the two parts of a cut first sentence (a breath, shorter than a sentence's).
CUT_PAUSE_S = 0.06
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])\s+")
_CLAUSE_END = re.compile(r"[,;:\u2013\u2014]$")


class KeptClipMissing(BaseVoiceError):
    """A voice another back end made, with no clip this back end can learn it from."""


def stream_pieces(text: str) -> list[tuple[str, bool]]:
    """``text`` as the pieces a streamed speech is made in: (piece, starts a sentence).

    Sentence by sentence, except that a first sentence longer than twice
    :data:`FIRST_PIECE_WORDS` words is cut in two: after the last clause mark (comma,
    semicolon, colon, dash) within that many words, else after :data:`FIRST_PIECE_WORDS`
    words, moved past short words so that the cut does not end on "the" or "to".
    """
    sentences = [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    if not sentences:
        return []
    pieces = [(s, True) for s in sentences]
    words = sentences[0].split()
    if len(words) <= 2 * FIRST_PIECE_WORDS:
        return pieces
    limit = 2 * FIRST_PIECE_WORDS
    clauses = [i + 1 for i, w in enumerate(words[:limit]) if _CLAUSE_END.search(w) and i >= 2]
    if clauses:
        cut = clauses[-1]
    else:
        cut = FIRST_PIECE_WORDS
        while cut < limit and len(words[cut - 1].strip(",.;:")) <= _SHORT_WORD:
            cut += 1
    head, tail = " ".join(words[:cut]), " ".join(words[cut:])
    return [(head, True), (tail, False), *pieces[1:]]


# A sample whose band ends below this is band-limited (a phone call, 3.4-4.6 kHz): what the
# voice has above its band is not learnt from it. Above it (wideband recordings reach 7.5 kHz
# and more, Piper's own 22 kHz voice 8.3 kHz) the whole spectrum is learnt, as before the
# band was measured: restricting a wideband sample moved the pitch of synthetic speakers'
# clones by up to 29% (tests/engine/voice/test_quality.py).
BAND_LIMITED_BELOW_HZ = 6000.0


def learnt_band(sample: Sample) -> tuple[float, float] | None:
    """The band the voice is learnt within: the sample's when it is band-limited, else all."""
    band = sample.band_hz
    if band is None or band[1] >= BAND_LIMITED_BELOW_HZ:
        return None
    return band


def parallel_part(audio: NDArray[np.float32], sample_rate: int) -> NDArray[np.float32]:
    """What of a sample the spectral mapping learns from: all of it up to
    :data:`PARALLEL_MAX_SECONDS`, else its start, cut at the quietest 30 ms of the last
    :data:`_CUT_SEARCH_S` seconds before that (a pause, not the middle of a word)."""
    limit = int(PARALLEL_MAX_SECONDS * sample_rate)
    if len(audio) <= limit:
        return audio
    frame = max(1, int(0.03 * sample_rate))
    start = limit - int(_CUT_SEARCH_S * sample_rate)
    window = audio[start:limit].astype(np.float64)
    n = len(window) // frame
    energy = (window[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    cut = start + int(np.argmin(energy)) * frame + frame // 2
    return audio[:cut]


def parallel_readings(sample: Sample, part_samples: int) -> int:
    """How many times the base voice reads the transcript of the mapping's first
    ``part_samples`` of the sample.

    Up to :data:`MAX_READINGS` times, until the readings hold about
    :data:`PARALLEL_SECONDS` of speech; but a part that holds :data:`ONE_READING_SECONDS`
    of speech is read once. Without that, a part cut from a 30 s sample
    (:func:`parallel_part`) with 10-12 s of speech was read twice, which doubled the cost
    of the mapping's half of the clone (bench/voice_clone_speed.py: half the 30 s samples).
    A part with little speech in it (the ALSA channel names: 7 s in 12 s) is still read
    twice: read once, it gave too few aligned voiced frames for a mapping.
    """
    speech_seconds = sample.speech_seconds * part_samples / max(len(sample.audio), 1)
    if speech_seconds >= ONE_READING_SECONDS:
        return 1
    return int(np.clip(np.ceil(PARALLEL_SECONDS / max(speech_seconds, 1.0)), 1, MAX_READINGS))


def warp_candidates(estimate: float, max_warp: float) -> list[float]:
    """The estimate, one step either side of it, and 1.0; within the limits, no repeats."""
    out: list[float] = []
    for w in (estimate, estimate * WARP_STEP, estimate / WARP_STEP, 1.0):
        w = round(float(np.clip(w, 1.0 / max_warp, max_warp)), 3)
        if all(abs(w - o) > 0.015 for o in out):
            out.append(w)
    return out


def join_sentences(chunks: list[NDArray[np.float32]], sample_rate: int) -> NDArray[np.float32]:
    """Sentences one after another with a short pause between them (how Piper's are read)."""
    pause = np.zeros(int(SENTENCE_PAUSE_S * sample_rate), dtype=np.float32)
    parts: list[NDArray[np.float32]] = []
    for i, chunk in enumerate(chunks):
        if i:
            parts.append(pause)
        parts.append(chunk)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


class CpuReferenceBackend:
    """Piper + WORLD + resemblyzer, all on the CPU. Thread-safe; models load on first use."""

    name = NAME

    def __init__(
        self,
        settings: VoiceSettings,
        encoder: SpeakerEncoder | None = None,
        transcriber: Transcriber | None = None,
    ) -> None:
        self.settings = settings
        self.encoder = encoder or SpeakerEncoder()
        self.transcriber = transcriber or Transcriber()
        self.f0_method = settings.f0_method
        self._lock = threading.Lock()
        # Held while the base voice is analysed: a job arriving during warm_up() waits for
        # it instead of doing the same work again.
        self._base_lock = threading.Lock()
        self._piper: PiperBase | None = None
        self._base_stats: world.VoiceStats | None = None
        self._base_embedding: NDArray[np.float32] | None = None
        self._kept: dict[str, SpeakerProfile] = {}
        self._kept_lock = threading.Lock()

    @property
    def piper(self) -> PiperBase:
        with self._lock:
            if self._piper is None:
                self._piper = PiperBase(self.settings)
            return self._piper

    @property
    def sample_rate(self) -> int:
        return self.piper.sample_rate

    def base_speech(self, text: str) -> Speech:
        """``text`` in the unconverted base voice (sentences joined by short pauses)."""
        return Speech(self._join(self.piper.sentences(text)), self.sample_rate)

    def _join(self, chunks: list[NDArray[np.float32]]) -> NDArray[np.float32]:
        return join_sentences(chunks, self.sample_rate)

    def _base(self) -> tuple[world.VoiceStats, NDArray[np.float32]]:
        """The base voice's statistics and embedding, computed once."""
        with self._base_lock:
            if self._base_stats is None or self._base_embedding is None:
                speech = self.base_speech(BASE_REFERENCE_TEXT)
                stats = world.speaker_stats(
                    speech.audio, speech.sample_rate, self.f0_method, octave_check=True
                )
                embedding = self.encoder.embed(speech.audio, speech.sample_rate)
                self._base_stats, self._base_embedding = stats, embedding
            return self._base_stats, self._base_embedding

    @property
    def warm(self) -> bool:
        """Whether every model is loaded (a clone or a speech then starts at once)."""
        return self._base_stats is not None and self._base_embedding is not None

    def warm_up(self, stop: threading.Event | None = None) -> None:
        """Load Piper, the speaker encoder and the base voice's analysis now, not on the
        first clone (tens of seconds on a cold machine). Between steps it returns early
        once ``stop`` is set: the process is shutting down."""
        steps: list[Callable[[], object]] = [
            lambda: self.piper,
            self.encoder.load,
            self._base,
        ]
        for step in steps:
            if stop is not None and stop.is_set():
                return
            step()

    def describe(self) -> str:
        """What runs, and where, for the start-up report."""
        voice = self.settings.piper_model.name if self.settings.piper_model else "en_US-joe-medium"
        return (
            f"{self.name} (Piper {voice} + WORLD conversion, resemblyzer similarity) "
            "on cpu, float32"
        )

    def analyse(self, sample: Sample) -> SpeakerProfile:
        """F0 statistics, long-term envelope and speaker embedding of a sample."""
        # One pitch track of the sample serves its statistics and the mapping's target.
        track = world.pitch(sample.audio, sample.sample_rate, self.f0_method, octave_check=True)
        try:
            stats = world.speaker_stats(
                sample.audio,
                sample.sample_rate,
                self.f0_method,
                octave_check=True,
                band_hz=learnt_band(sample),
                f0_track=track,
            )
        except ValueError as exc:
            raise SampleRejected("no voice found in the sample; record yourself speaking") from exc
        active_seconds = max(0.001, sample.speech_seconds)
        if stats.voiced_seconds / active_seconds < MIN_VOICED_SHARE:
            raise SampleRejected(
                "no voice found in the sample (it sounds like noise or music); "
                "record yourself speaking"
            )
        if stats.log_f0_std < MIN_F0_SPREAD:
            raise SampleRejected(
                "the sample is a steady tone, not speech; record yourself speaking"
            )
        embedding = self._embedding(sample)
        _, base_embedding = self._base()
        params: dict[str, object] = {"stats": stats.to_json()}
        if self.settings.spectral_mapping:
            learnt = self._learn_mapping(sample, stats, embedding, track)
            if learnt is not None:
                warp, mapping = learnt
                params["warp"] = warp
                params["mapping"] = mapping.to_json()
        return SpeakerProfile(
            backend=self.name,
            embedding=[round(float(v), 6) for v in embedding],
            median_f0_hz=round(stats.median_f0_hz, 2),
            base_similarity=round(cosine(embedding, base_embedding), 4),
            params=params,
        )

    def _embedding(self, sample: Sample) -> NDArray[np.float32]:
        """The sample's speaker embedding. The speaker check already embedded its windows
        (:meth:`SpeakerEncoder.partials`, on the same audio): resemblyzer's utterance
        embedding is their mean, normalised, so it is taken from them, not computed again."""
        partials = sample.partials
        if partials is not None and len(partials):
            mean = np.asarray(partials, dtype=np.float32).mean(axis=0)
            return np.asarray(mean / max(float(np.linalg.norm(mean)), 1e-12), dtype=np.float32)
        return self.encoder.embed(sample.audio, sample.sample_rate)

    def _learn_mapping(
        self,
        sample: Sample,
        stats: world.VoiceStats,
        embedding: NDArray[np.float32],
        track: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
    ) -> tuple[float, parallel.SpectralMapping] | None:
        """The base voice reads the sample's transcript; learn base-to-speaker envelopes.

        The two readings, aligned, first give the formant warp (frame by frame, which a
        recording's channel cannot fake as the long-term envelope lets it); the mapping is
        then learnt on top of the long-term conversion with that warp (its "change nothing"
        is that conversion). Without a transcript or enough aligned voicing, there is none.

        A few voicings' worth of aligned frames leave the warp loosely pinned down (a flat
        error around the estimate), so the estimate, its neighbours and "no warp" are each
        tried on the first reading, converted and resynthesised, and the one the speaker
        encoder finds closest to the sample is kept: a choice made on the sample alone.
        """
        rate = sample.sample_rate
        audio = parallel_part(sample.audio, rate)
        try:
            said = self.transcriber.transcribe(audio, rate)
        except TranscriberUnavailable as exc:
            log.warning("voice: no spectral mapping, long-term envelope only: %s", exc)
            return None
        if len(said.split()) < MIN_TRANSCRIPT_WORDS:
            log.info("voice: too few words heard in the sample for a spectral mapping")
            return None
        if track is not None:
            frames = world.frames_of(len(audio), rate)
            target = world.analyse(
                audio, rate, aperiodicity=False, f0_track=(track[0][:frames], track[1][:frames])
            )
        else:
            target = world.analyse(
                audio, rate, aperiodicity=False, method=self.f0_method, octave_check=True
            )
        # Piper reads differently each time: a short sample gets a few readings, pooled, so
        # its warp and mapping do not hang on one reading's timing (the sample is the same
        # in each: the ridge grows with the readings and the mapping stays as regularised).
        readings = parallel_readings(sample, len(audio))
        sources: list[world.WorldFeatures] = []
        src_idx: list[NDArray[np.int64]] = []
        tgt_idx: list[NDArray[np.int64]] = []
        offset = 0
        read_audio: list[NDArray[np.float32]] = []
        for _ in range(readings):
            read = self.base_speech(said)
            read_audio.append(read.audio)
            source = world.analyse(
                read.audio, rate, aperiodicity=False, method=self.f0_method, octave_check=True
            )
            i, j = parallel.voiced_pairs(source.sp, source.f0, target.sp, target.f0, rate)
            sources.append(source)
            src_idx.append(i + offset)
            tgt_idx.append(j)
            offset += len(source.f0)
        pooled = world.WorldFeatures(
            f0=np.concatenate([f.f0 for f in sources]),
            sp=np.vstack([f.sp for f in sources]),
            ap=np.zeros((0, target.sp.shape[1])),
            sample_rate=rate,
        )
        pairs = (np.concatenate(src_idx), np.concatenate(tgt_idx))
        if len(pairs[0]) < 4 * parallel.DIM * readings:
            log.info("voice: no spectral mapping: too little aligned speech")
            return None
        i, j = pairs
        band = learnt_band(sample)
        estimate = world.estimate_warp_parallel(
            pooled.sp[i], target.sp[j], rate, self.settings.max_warp, band
        )
        check = self._check_features(sources[0], readings=read_audio)
        best: tuple[float, float, parallel.SpectralMapping] | None = None
        # Only the paired frames train the mapping: convert those, not every reading.
        paired = world.WorldFeatures(
            f0=pooled.f0[i], sp=pooled.sp[i], ap=pooled.ap, sample_rate=rate
        )
        for warp in warp_candidates(estimate, self.settings.max_warp):
            converted = world.convert(paired, self._plan(stats, warp))
            # Outside the sample's band the mapping is taught to change nothing.
            goal = parallel.outside_band_from(target.sp[j], converted.sp, rate, band)
            try:
                mapping = parallel.fit(
                    converted.sp,
                    paired.f0,
                    goal,
                    target.f0[j],
                    rate,
                    ridge=self.settings.mapping_ridge * readings,
                    pairs=(np.arange(len(i), dtype=np.int64), np.arange(len(j), dtype=np.int64)),
                )
            except ValueError as exc:
                log.info("voice: no spectral mapping: %s", exc)
                return None
            heard = world.synthesise(
                parallel.apply_voiced(world.convert(check, self._plan(stats, warp)), mapping)
            )
            # Compared as the sample was heard: through the same band.
            heard = parallel.band_limited(heard, rate, band)
            score = cosine(self.encoder.embed(heard, rate), embedding)
            if best is None or score > best[0]:
                best = (score, warp, mapping)
        assert best is not None
        _, warp, mapping = best
        return warp, mapping

    def _check_features(
        self, first: world.WorldFeatures, readings: list[NDArray[np.float32]]
    ) -> world.WorldFeatures:
        """WORLD features (with aperiodicity) of up to CHECK_SECONDS of the first reading."""
        rate = first.sample_rate
        audio = readings[0][: int(CHECK_SECONDS * rate)]
        frames = min(len(first.f0), int(len(audio) / rate * 1000 / world.FRAME_PERIOD_MS) + 1)
        f0 = first.f0[:frames]
        t = np.arange(frames, dtype=np.float64) * (world.FRAME_PERIOD_MS / 1000.0)
        return world.analyse(audio, rate, f0_track=(f0, t))

    def conversion(self, profile: SpeakerProfile) -> world.Conversion:
        """The base-to-speaker mapping for ``profile`` under the current settings."""
        warp = profile.params.get("warp")
        return self._plan(
            world.VoiceStats.from_json(profile.params["stats"]),
            float(warp) if isinstance(warp, int | float) else None,
        )

    def _plan(self, target: world.VoiceStats, warp: float | None = None) -> world.Conversion:
        base_stats, _ = self._base()
        s = self.settings
        return world.plan_conversion(
            base_stats,
            target,
            self.sample_rate,
            f0_spread_weight=s.f0_spread_weight,
            warp_weight=s.warp_weight,
            envelope_weight=s.envelope_weight,
            max_warp=s.max_warp,
            max_envelope_db=s.max_envelope_db,
            warp_estimate=warp,
        )

    def synthesise(
        self, text: str, profile: SpeakerProfile, progress: Progress | None = None
    ) -> Speech:
        """Piper speaks each sentence, WORLD moves it to the speaker, sentence by sentence.

        Converting per sentence keeps memory flat for long texts (WORLD's matrices grow
        with the audio) and lets progress move.
        """
        if profile.backend != self.name:
            profile = self.from_kept_clip(profile)
        base_stats, _ = self._base()
        plan = self.conversion(profile)
        chunks = self.piper.sentences(text)
        tracks = [
            world.pitch(chunk, self.sample_rate, self.f0_method, octave_check=True)
            for chunk in chunks
        ]
        mean, std = world.utterance_f0([f0 for f0, _ in tracks], base_stats)
        plan = replace(plan, source_log_f0_mean=mean, source_log_f0_std=std)
        raw_mapping = profile.params.get("mapping") if self.settings.spectral_mapping else None
        mapping = parallel.SpectralMapping.from_json(raw_mapping) if raw_mapping else None
        converted: list[NDArray[np.float32]] = []
        for i, (chunk, track) in enumerate(zip(chunks, tracks, strict=True)):
            features = world.convert(world.analyse(chunk, self.sample_rate, f0_track=track), plan)
            if mapping is not None:
                features = parallel.apply_voiced(features, mapping)
            converted.append(world.synthesise(features))
            if progress is not None:
                progress((i + 1) / len(chunks))
        audio = normalise(self._join(converted), self.sample_rate, self.settings.target_dbfs)
        return Speech(audio, self.sample_rate)

    def stream(
        self, text: str, profile: SpeakerProfile, progress: Progress | None = None
    ) -> Iterator[Speech]:
        """The speech of ``text`` piece by piece (:func:`stream_pieces`), each as soon as it
        is made: the first one reaches a listener while the rest are still being made.

        Each piece is converted with the text's pitch statistics so far (the whole text's
        are not known yet) and brought to the target level on its own; a piece after the
        first starts with its pause, so the pieces played back to back are the speech.
        """
        if profile.backend != self.name:
            profile = self.from_kept_clip(profile)
        base_stats, _ = self._base()
        plan = self.conversion(profile)
        raw_mapping = profile.params.get("mapping") if self.settings.spectral_mapping else None
        mapping = parallel.SpectralMapping.from_json(raw_mapping) if raw_mapping else None
        rate = self.sample_rate
        pieces = stream_pieces(text)
        tracks: list[NDArray[np.float64]] = []
        spoken = False
        for i, (piece, new_sentence) in enumerate(pieces):
            audio = self._join(self.piper.sentences(piece))
            if audio.size:
                track = world.pitch(audio, rate, self.f0_method, octave_check=True)
                tracks.append(track[0])
                mean, std = world.utterance_f0(tracks, base_stats)
                step = replace(plan, source_log_f0_mean=mean, source_log_f0_std=std)
                features = world.convert(world.analyse(audio, rate, f0_track=track), step)
                if mapping is not None:
                    features = parallel.apply_voiced(features, mapping)
                out = normalise(world.synthesise(features), rate, self.settings.target_dbfs)
                if spoken:
                    gap = SENTENCE_PAUSE_S if new_sentence else CUT_PAUSE_S
                    out = np.concatenate([np.zeros(int(gap * rate), dtype=np.float32), out])
                spoken = True
                yield Speech(out.astype(np.float32), rate)
            if progress is not None:
                progress((i + 1) / len(pieces))

    def from_kept_clip(self, profile: SpeakerProfile) -> SpeakerProfile:
        """This back end's profile of a voice another back end cloned, learnt from the clip
        that voice keeps (a zero-shot model's voice prompt): once per clip, kept in memory.

        So a voice cloned by the neural or pocket back end keeps speaking when the operator
        switches to the CPU reference, or when that model cannot load here.
        """
        data = profile.params.get("reference_pcm16")
        if not isinstance(data, str):
            raise KeptClipMissing(
                f"this voice was cloned by the {profile.backend!r} back end and keeps no "
                "sample the CPU reference can learn it from; clone it again"
            )
        key = hashlib.sha256(data.encode("ascii")).hexdigest()
        with self._kept_lock:
            learnt = self._kept.get(key)
        if learnt is not None:
            return learnt
        import librosa

        clip = pcm16_from_b64(data)
        rate = int(profile.params.get("sample_rate", self.sample_rate))
        if rate != self.sample_rate:
            clip = np.asarray(
                librosa.resample(clip, orig_sr=rate, target_sr=self.sample_rate), dtype=np.float32
            )
        seconds = len(clip) / self.sample_rate
        try:
            learnt = self.analyse(Sample(clip, self.sample_rate, seconds, seconds))
        except SampleRejected as exc:
            raise KeptClipMissing(
                f"the CPU reference cannot learn this {profile.backend!r} voice from its kept "
                f"clip ({exc}); clone it again"
            ) from exc
        with self._kept_lock:
            self._kept[key] = learnt
            while len(self._kept) > KEPT_PROFILES:
                self._kept.pop(next(iter(self._kept)))
        return learnt

    def similarity(self, speech: Speech, profile: SpeakerProfile) -> float:
        # 30 s of speech pins a speaker embedding down; more only costs time.
        head = speech.audio[: int(SIMILARITY_SECONDS * speech.sample_rate)]
        embedding = self.encoder.embed(head, speech.sample_rate)
        return cosine(embedding, profile.embedding_array())
