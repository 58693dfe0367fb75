"""The member's language: what each back end speaks, the text's language (the member's
locale as a hint), and the API's 400 for a text the voice cannot speak, before any job."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from engine.voice.language import LanguageCheck, hint_language, spoken_languages
from engine.voice.settings import VoiceSettings
from tests.engine.voice.conftest import Speaker, clone, h

ENGLISH = "The morning train was late again, so Maria walked the long way to the office."
GERMAN = "Der Zug kam heute wieder zu spät, also ist Maria den langen Weg ins Büro gelaufen."
FRENCH = "Le train du matin était encore en retard, alors Maria a pris le long chemin."
RUSSIAN = "Привет, как дела?"


def settings(**values: object) -> VoiceSettings:
    return VoiceSettings.model_validate(values)


@pytest.mark.no_database
def test_what_each_back_end_speaks(tmp_path: Path) -> None:
    # The default (auto) before the pull: the CPU reference's packaged English Piper voice.
    assert spoken_languages(VoiceSettings()) == {"en"}
    assert spoken_languages(settings(backend="cpu-reference")) == {"en"}
    assert spoken_languages(settings(backend="pocket")) == {"en"}
    assert spoken_languages(settings(backend="pocket", pocket_language="french")) == {"fr"}
    assert spoken_languages(settings(backend="pocket", pocket_language="german_24l")) == {"de"}
    assert spoken_languages(settings(backend="neural")) == {"en", "zh"}
    # A community pocket config: not known, unless the operator says.
    community = tmp_path / "czech.yaml"
    assert spoken_languages(settings(backend="pocket", pocket_config=community)) is None
    named = settings(backend="pocket", pocket_config=community, languages=["cs"])
    assert spoken_languages(named) == {"cs"}
    # auto once pulled: the pocket model's language.
    pulled = tmp_path / "models" / "kyutai--pocket-tts"
    pulled.mkdir(parents=True)
    auto = settings(pocket_model=str(pulled), pocket_language="spanish")
    assert spoken_languages(auto) == {"es"}
    # Another Piper voice: its .onnx.json says.
    model, config = tmp_path / "de.onnx", tmp_path / "de.onnx.json"
    config.write_text(json.dumps({"language": {"code": "de_DE"}}))
    piper = settings(backend="cpu-reference", piper_model=model, piper_config=config)
    assert spoken_languages(piper) == {"de"}


@pytest.mark.no_database
@pytest.mark.parametrize("bad", [["english"], ["EN"], ["e"]])
def test_languages_are_iso_codes(bad: list[str]) -> None:
    with pytest.raises(ValueError, match="ISO 639-1"):
        settings(languages=bad)


@pytest.mark.no_database
@pytest.mark.parametrize(
    ("locale", "code"),
    [
        ("en-US", "en"),
        ("pt-BR", "pt"),
        ("fr-CH, fr;q=0.9, en;q=0.8", "fr"),
        ("de", "de"),
        ("no", "nb"),
        ("zh_TW", "zh"),
        ("*", None),
        ("", None),
        (None, None),
        ("12-34", None),
        ("x" * 300, None),
    ],
)
def test_the_locale_hint_is_read_leniently(locale: str | None, code: str | None) -> None:
    assert hint_language(locale) == code


@pytest.fixture(scope="module")
def english() -> LanguageCheck:
    return LanguageCheck(settings(backend="cpu-reference"))


@pytest.mark.no_database
@pytest.mark.parametrize("locale", [None, "en-US", "de", "ja"])
def test_english_is_spoken_whatever_the_members_locale(
    english: LanguageCheck, locale: str | None
) -> None:
    verdict = english.judge(ENGLISH, locale)
    assert verdict.spoken and verdict.language == "en"


@pytest.mark.no_database
@pytest.mark.parametrize("locale", [None, "en-US", "de"])
def test_another_language_is_refused_saying_which(
    english: LanguageCheck, locale: str | None
) -> None:
    verdict = english.judge(GERMAN, locale)
    assert not verdict.spoken and verdict.language == "de"
    assert verdict.reason == "this voice speaks English only; your text reads as German"


@pytest.mark.no_database
def test_another_alphabet_is_refused_however_short(english: LanguageCheck) -> None:
    for text in (RUSSIAN, "こんにちは", "你好"):
        verdict = english.judge(text)
        assert not verdict.spoken, text
        assert verdict.reason == (
            "this voice speaks English only; your text is written in another alphabet"
        )


@pytest.mark.no_database
@pytest.mark.parametrize("text", ["Ciao!", "gg wp", "lol", "Je suis", "OK", "Danke!", "12345"])
def test_short_texts_are_spoken(english: LanguageCheck, text: str) -> None:
    assert english.judge(text, "de").spoken


@pytest.mark.no_database
def test_links_mentions_and_emoji_are_not_read_as_words(english: LanguageCheck) -> None:
    text = "<@123456789012345678> see https://example.com/ein/langer/pfad/hier <:wave:1234> ok"
    assert english.judge(text, "de").spoken


@pytest.mark.no_database
def test_a_model_of_another_language_speaks_it_and_refuses_english() -> None:
    french = LanguageCheck(settings(backend="pocket", pocket_language="french"))
    assert french.judge(FRENCH, "en-US").spoken
    refused = french.judge(ENGLISH, "fr")
    assert not refused.spoken
    assert refused.reason == "this voice speaks French only; your text reads as English"


@pytest.mark.no_database
def test_vibevoice_speaks_english_and_chinese() -> None:
    both = LanguageCheck(settings(backend="neural"))
    assert both.judge("今天早上的火车又晚点了，所以玛丽亚走了很长的路去办公室。").spoken
    assert both.judge(ENGLISH).spoken
    refused = both.judge(GERMAN)
    assert refused.reason == "this voice speaks Chinese or English; your text reads as German"


@pytest.mark.no_database
def test_an_unknown_model_refuses_nothing(tmp_path: Path) -> None:
    unknown = LanguageCheck(settings(backend="pocket", pocket_config=tmp_path / "x.yaml"))
    assert unknown.judge(GERMAN).spoken and unknown.judge(RUSSIAN).spoken


async def test_the_api_refuses_a_text_the_voice_cannot_speak_before_any_job(
    vapi: httpx.AsyncClient, alice: str, speakers: dict[str, Speaker]
) -> None:
    resp = await clone(vapi, alice, speakers["low"].wav())
    assert resp.status_code == 200, resp.text
    voice_id = resp.json()["id"]
    url = f"/api/voices/{voice_id}/generations"
    refused = await vapi.post(url, json={"text": GERMAN}, headers=h(alice))
    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"] == ("this voice speaks English only; your text reads as German")
    hinted = await vapi.post(
        url, json={"text": RUSSIAN}, headers={**h(alice), "Accept-Language": "ru-RU"}
    )
    assert hinted.status_code == 400, hinted.text
    # Nothing was queued or spoken for either.
    listed = await vapi.get(url, headers=h(alice))
    assert listed.json()["total"] == 0
    # English, with any locale (or a header that names none), is spoken.
    for header in ("de-DE", "x" * 300):
        spoken = await vapi.post(
            url, json={"text": "Hello there."}, headers={**h(alice), "Accept-Language": header}
        )
        assert spoken.status_code == 200, spoken.text


def test_the_engine_start_loads_the_detector_not_the_first_speech(tmp_path: Path) -> None:
    """With ``preload``, the warm-up where the API answers loads the detector: the first
    member's ``/voice say`` does not wait 1-2 s for it before its job is even queued."""
    from engine.services import warm_up
    from engine.voice.handlers import VoiceHandlers
    from engine.voice.language import detector
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, voice={"backend": "cpu-reference", "preload": True})
    voice = VoiceHandlers(VoiceSettings(backend="cpu-reference", preload=True))
    asked = detector.cache_info()
    warm_up(settings, voice, models=False)
    now = detector.cache_info()
    assert now.hits + now.misses == asked.hits + asked.misses + 1
    assert voice._backend is None  # an API process loads no voice model
