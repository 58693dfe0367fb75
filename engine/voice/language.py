"""The member's language: which languages the voice back end speaks, and the text's.

A voice model speaks the languages it was trained on; given another, it reads the letters
as if they were its own language (gibberish in the member's voice). Before a speech job is
queued, the API detects the text's language (lingua, in its low-accuracy mode: trigram
models shipped in the wheel, about 60 MB of memory for the candidates below, nothing
downloaded) with the member's locale (``Accept-Language``; the bot sends the member's
Discord locale) as a hint, and refuses a text in a language the back end does not speak
with a 400 that says so.

What each back end speaks:
- Pocket TTS: one language per model (``pocket_language``: english, french, german,
  spanish, italian, portuguese or dutch; a ``_24l`` variant speaks the same language);
- the CPU reference: its Piper voice's language (the packaged en_US-joe-medium: English);
- VibeVoice 1.5B: English and Chinese (its model card);
- ``auto``: Pocket TTS's language once pulled, else the CPU reference's;
- a community model (``pocket_config``): unknown, nothing is refused unless the operator
  names its languages (``[engine.voice] languages``).

Only a text the detector is sure of is refused: short texts (a greeting, "gg", a name)
are spoken, unless they are written in a script none of the spoken languages use.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.voice.settings import VoiceBackendName, VoiceSettings

# pocket-tts's language configs -> ISO 639-1.
POCKET_LANGUAGES = {
    "english": "en",
    "french": "fr",
    "german": "de",
    "spanish": "es",
    "italian": "it",
    "portuguese": "pt",
    "dutch": "nl",
}
# VibeVoice 1.5B's model card: English and Chinese.
VIBEVOICE_LANGUAGES = frozenset({"en", "zh"})
# Qwen3-TTS's model card: ten languages.
QWEN3_LANGUAGES = frozenset({"zh", "en", "ja", "ko", "de", "fr", "ru", "pt", "es", "it"})
# What the detector chooses from: the languages of Discord's locales (Norwegian as Bokmål),
# a few widely written ones Discord has no locale for, and whatever the back end speaks.
_DISCORD_LOCALES = "bg cs da de el en es fi fr hi hr hu id it ja ko lt nb nl pl pt ro ru sv th tr"
CANDIDATES = frozenset([*_DISCORD_LOCALES.split(), "uk", "vi", "zh", "ar", "fa", "he"])
# Fewer letters than this: too short to tell (a greeting, a name); only the script counts.
MIN_LETTERS = 12
# How much the member's locale weighs: its language's confidence is multiplied by this.
HINT_WEIGHT = 2.0
# A text is refused when its language is not spoken, the detector gives it at least this
# confidence (0..1, after the hint), and the spoken languages together get less than
# NOT_SPOKEN_BELOW.
SURE = 0.7
NOT_SPOKEN_BELOW = 0.15
# The scripts each language is written in (for short texts).
_SCRIPTS = {
    "zh": {"CJK"},
    "ja": {"CJK", "HIRAGANA", "KATAKANA"},
    "ko": {"HANGUL", "CJK"},
    "ru": {"CYRILLIC"},
    "uk": {"CYRILLIC"},
    "bg": {"CYRILLIC"},
    "el": {"GREEK"},
    "hi": {"DEVANAGARI"},
    "th": {"THAI"},
    "ar": {"ARABIC"},
    "fa": {"ARABIC"},
    "he": {"HEBREW"},
}
# What is not text in the language: links, Discord mentions and custom emoji, code.
_NOT_WORDS = re.compile(r"https?://\S+|<a?:\w+:\d+>|<[@#][!&]?\d+>|`[^`]*`")
_TAG = re.compile(r"[A-Za-z]{2,3}")


def scripts_of(language: str) -> set[str]:
    return _SCRIPTS.get(language, {"LATIN"})


def hint_language(locale: str | None) -> str | None:
    """The ISO 639-1 code of a locale or ``Accept-Language`` value ("de", "pt-BR",
    "fr-CH, fr;q=0.9"); ``None`` when it names none (anything else is ignored, not refused)."""
    if not locale:
        return None
    first = locale.split(",", 1)[0].split(";", 1)[0].strip()
    primary = first.replace("_", "-").split("-", 1)[0]
    if not _TAG.fullmatch(primary):
        return None
    code = primary.lower()
    return "nb" if code in ("no", "nn") else code


def _piper_language(settings: VoiceSettings) -> frozenset[str] | None:
    """The Piper voice's language, from its .onnx.json (the packaged voice: English)."""
    if settings.piper_config is None:
        return frozenset({"en"})
    try:
        config: dict[str, Any] = json.loads(Path(settings.piper_config).read_text("utf-8"))
    except (OSError, ValueError):
        return None  # the worker says what is wrong with the file
    code = (config.get("language") or {}).get("code") or (config.get("espeak") or {}).get("voice")
    found = hint_language(str(code)) if code else None
    return frozenset({found}) if found else None


def pocket_pulled(settings: VoiceSettings) -> bool:
    """Whether the pocket model's folder is on this host (the engine's settings name the
    pulled folder once ``models pull`` made it; a hub id otherwise)."""
    return Path(settings.pocket_model).expanduser().is_dir()


def spoken_languages(settings: VoiceSettings) -> frozenset[str] | None:
    """ISO 639-1 codes of what the configured back end speaks; ``None``: not known."""
    if settings.languages:
        return frozenset(settings.languages)
    backend = settings.backend
    if backend is VoiceBackendName.AUTO:
        from engine.voice.choice import chosen_backend

        backend = chosen_backend(settings)
        if backend is VoiceBackendName.POCKET and not pocket_pulled(settings):
            backend = VoiceBackendName.CPU_REFERENCE
    if backend is VoiceBackendName.QWEN3:
        return QWEN3_LANGUAGES
    if backend is VoiceBackendName.POCKET:
        if settings.pocket_config is not None:
            return None
        code = POCKET_LANGUAGES.get(settings.pocket_language.split("_", 1)[0])
        return frozenset({code}) if code else None
    if backend is VoiceBackendName.NEURAL:
        return VIBEVOICE_LANGUAGES
    return _piper_language(settings)


def language_name(code: str) -> str:
    """ "German" for "de" (the code itself when lingua does not know it)."""
    from lingua import IsoCode639_1, Language

    try:
        return str(Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())).name).title()
    except (AttributeError, ValueError):
        return code


def names_of(codes: frozenset[str]) -> str:
    """ "English", "English or Chinese", "English, French or German"."""
    names = sorted(language_name(c) for c in codes)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@functools.lru_cache(maxsize=4)
def detector(codes: frozenset[str]) -> Any:
    """A lingua detector choosing among ``codes`` (ISO 639-1; those lingua lacks are left
    out). Its models are read-only data (about 2 s to load): one per set of languages for
    the whole process, shared by its engines. Thread-safe."""
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    known = [
        getattr(IsoCode639_1, c.upper()) for c in sorted(codes) if hasattr(IsoCode639_1, c.upper())
    ]
    return (
        LanguageDetectorBuilder.from_iso_codes_639_1(*known)
        .with_low_accuracy_mode()
        .with_preloaded_language_models()
        .build()
    )


@dataclass(frozen=True)
class Verdict:
    """Whether the back end can speak a text, and what language it was read as."""

    language: str | None  # ISO 639-1, None when too short or unsure
    spoken: bool
    reason: str | None = None  # for the member, when not spoken


def _letters_and_scripts(text: str) -> tuple[int, set[str]]:
    letters = 0
    scripts: set[str] = set()
    for char in text:
        if char.isalpha():
            letters += 1
            name = unicodedata.name(char, "")
            scripts.add(name.split(" ", 1)[0] if name else "UNKNOWN")
    return letters, scripts


class LanguageCheck:
    """The back end's languages and a detector built on first use (thread-safe; blocking:
    call it off the event loop). One per engine (:class:`engine.voice.handlers.VoiceHandlers`)."""

    def __init__(self, settings: VoiceSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._spoken: frozenset[str] | None = None
        self._known = False

    @property
    def spoken(self) -> frozenset[str] | None:
        """What the back end speaks (looked up once: ``auto`` reads whether it was pulled)."""
        with self._lock:
            if not self._known:
                self._spoken = spoken_languages(self.settings)
                self._known = True
            return self._spoken

    def warm_up(self) -> None:
        """Load the detector now (blocking), not at the first text long enough to judge."""
        spoken = self.spoken
        if spoken:
            self._detector_for(spoken)

    def _detector_for(self, spoken: frozenset[str]) -> Any:
        return detector(CANDIDATES | spoken)

    def judge(self, text: str, locale: str | None = None) -> Verdict:
        """Whether the back end speaks ``text``'s language (``locale``: the member's, a hint)."""
        spoken = self.spoken
        if not spoken:
            return Verdict(None, True)
        words = _NOT_WORDS.sub(" ", text)
        letters, scripts = _letters_and_scripts(words)
        written = set().union(*(scripts_of(c) for c in spoken))
        if letters and not scripts & written:
            # Not one letter in a script the model reads: no detector needed.
            return Verdict(None, False, self._reason(spoken, None))
        if letters < MIN_LETTERS:
            return Verdict(None, True)
        detector = self._detector_for(spoken)
        confidence = {
            str(v.language.iso_code_639_1.name).lower(): float(v.value)
            for v in detector.compute_language_confidence_values(words)
        }
        hint = hint_language(locale)
        if hint in confidence:
            confidence[hint] *= HINT_WEIGHT
        total = sum(confidence.values()) or 1.0
        confidence = {code: value / total for code, value in confidence.items()}
        top = max(confidence, key=lambda code: confidence[code])
        if top in spoken:
            return Verdict(top, True)
        spoken_share = sum(confidence.get(code, 0.0) for code in spoken)
        if confidence[top] >= SURE and spoken_share < NOT_SPOKEN_BELOW:
            return Verdict(top, False, self._reason(spoken, top))
        return Verdict(None, True)

    @staticmethod
    def _reason(spoken: frozenset[str], read_as: str | None) -> str:
        speaks = names_of(spoken) + (" only" if len(spoken) == 1 else "")
        if read_as is None:
            return f"this voice speaks {speaks}; your text is written in another alphabet"
        return f"this voice speaks {speaks}; your text reads as {language_name(read_as)}"
