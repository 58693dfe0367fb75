"""The sample's transcript is read back by the base voice: it must say what was said."""

from __future__ import annotations

import re

import pytest

from engine.voice.reference import CpuReferenceBackend
from engine.voice.transcribe import Transcriber

pytestmark = pytest.mark.no_database


def test_numbers_are_written_as_the_words_that_were_spoken(
    reference_backend: CpuReferenceBackend,
) -> None:
    """Whisper writes "three three four six nine two" as "3-3-4-6-9-2" or "334692", which
    the base voice reads as "three hundred thirty-four thousand...": other words than the
    sample's, and the alignment pairs sounds that do not match."""
    speech = reference_backend.base_speech("Go forward ten meters. Three three four six nine two.")
    said = Transcriber().transcribe(speech.audio, speech.sample_rate)
    assert not re.search(r"\d", said), said
    heard = re.sub(r"[^a-z ]", " ", said.lower()).split()
    # Written as the words: each number is there as a word. (Not both "three"s: Piper
    # samples its speech, and Whisper once heard the first as "free" under load.)
    assert {"ten", "three", "four", "six", "nine", "two"} <= set(heard), said
