"""``/voice`` as a member uses it, in SimCord, against the real engine (CPU voice back end)."""

from __future__ import annotations

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices, create_bot
from bot.jobs import JobKind, JobState
from bot.store import LinkedVia
from bot.store.models import utcnow
from tests.bot.media_samples import speech_wav
from tests.bot.worker_world import bot_config, engine_settings  # noqa: F401
from tests.conftest import register

pytestmark = pytest.mark.simcord(settle_timeout=120)


async def linked(env: simcord.Env, services: BotServices, api: httpx.AsyncClient):
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    key = await register(api, "alice@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)
    return channel, alice


async def test_clone_then_speak_posts_the_audio_in_the_channel(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    wav = await speech_wav()

    asked = await alice.slash(channel, "voice clone", name="Alice", sample=("alice.wav", wav))
    assert asked.ephemeral and asked.response is not None
    assert "permission" in asked.response.content
    cloned = await alice.click(asked.response, label="It's my voice, or I have permission")
    card = cloned.followups[-1]
    assert card.embeds and card.embeds[0].title == "🎙️ Alice"
    voice_id = card.embeds[0].fields[-1].value.strip("`")

    shown = await alice.click(card, label="Speak")
    assert shown.modal is not None
    spoken = await alice.submit_modal(shown, {"text": "Hello from Discord."})
    posted = spoken.followups[-1]
    assert "Alice" in posted.content and "Hello from Discord." in posted.content
    # The calibrated likeness (not the raw cosine), next to the base voice's.
    account = await services.members.get(alice.id)
    assert account is not None
    key = {"X-API-Key": account.api_key.get_secret_value()}
    voice_base_score = (await api.get(f"/api/voices/{voice_id}", headers=key)).json()[
        "base_similarity_score"
    ]
    [made] = (await api.get("/api/voices/generations", headers=key)).json()["generations"]
    # The new voice's card: the base voice's figure, worded as the starting point (a low
    # figure there is not the clone's result).
    base = next(f.value for f in card.embeds[0].fields if f.name == "Before cloning")
    assert base.startswith(f"The base voice was {voice_base_score}%")
    assert "Each speech shows how close the clone sounds" in base
    assert (
        f"Likeness to your sample: **{made['similarity_score']}%** ({made['likeness']})"
        f" · the voice before cloning: {voice_base_score}%"
    ) in posted.content
    [audio] = posted.attachments
    assert audio.filename == "speech.mp3"
    data = await audio.read()
    assert len(data) > 1000 and (data[:3] == b"ID3" or data[0] == 0xFF)
    [job] = await simcord_env.bot.jobs.store.for_member(alice.id)  # type: ignore[attr-defined]
    assert job.state is JobState.FINISHED and job.posted and job.params["voice_id"] == voice_id

    # /voice speak with autocomplete offers the member's own voice.
    choices = await alice.autocomplete(channel, "voice speak", "voice", "ali")
    assert [c["value"] for c in choices] == [voice_id]
    again = await alice.slash(channel, "voice speak", voice=voice_id, text="Second line.")
    assert again.followups[-1].attachments[0].filename == "speech.mp3"

    # The member's lists: voices, the voice's card, and the history of what it said.
    listed = await alice.slash(channel, "voice list")
    assert listed.ephemeral and listed.response is not None
    assert f"**Alice** `{voice_id}`" in listed.response.content
    info = await alice.slash(channel, "voice info", voice=voice_id)
    assert info.response is not None and info.response.embeds[0].title == "🎙️ Alice"
    # Once it has spoken, its card shows the clone's likeness, before against after.
    [latest, _] = (await api.get("/api/voices/generations", headers=key)).json()["generations"]
    likeness = next(
        f.value for f in info.response.embeds[0].fields if f.name == "Likeness to your sample"
    )
    assert likeness.startswith(f"**{latest['similarity_score']}%**"), likeness
    assert f"against {voice_base_score}% for the base voice before cloning" in likeness
    history = await alice.slash(channel, "voice history", voice=voice_id)
    assert history.ephemeral and history.response is not None
    assert "Second line." in history.response.content
    assert "Hello from Discord." in history.response.content


async def test_refusing_consent_uploads_nothing(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    asked = await alice.slash(
        channel, "voice clone", name="Alice", sample=("alice.wav", await speech_wav())
    )
    assert asked.response is not None
    answered = await alice.click(asked.response, label="Cancel")
    assert answered.response is not None and "nothing was uploaded" in answered.response.content
    account = await services.members.get(alice.id)
    assert account is not None
    assert await services.tada.with_key(account.api_key).list_voice_uploads() == []


@pytest.mark.parametrize(
    ("file_name", "data", "expected"),
    [
        ("notes.txt", b"hello", "not an audio file"),
        ("short.wav", None, "at least 3 s"),
        ("broken.mp3", b"\x00" * 5000, "could not be decoded"),
    ],
)
async def test_bad_samples_are_answered_ephemerally(
    simcord_env: simcord.Env,
    services: BotServices,
    api: httpx.AsyncClient,
    file_name: str,
    data: bytes | None,
    expected: str,
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    if data is None:  # one second of a real recording: too short
        wav = await speech_wav()
        data = wav[:44] + wav[44 : 44 + 22050 * 2]
        data = (
            data[:4]
            + (len(data) - 8).to_bytes(4, "little")
            + data[8:40]
            + (len(data) - 44).to_bytes(4, "little")
            + data[44:]
        )
    asked = await alice.slash(channel, "voice clone", name="X", sample=(file_name, data))
    result = asked
    if asked.response is not None and asked.response.components:
        result = await alice.click(asked.response, label="It's my voice, or I have permission")
    texts = [m.content for m in ([result.response] if result.response else []) + result.followups]
    assert any(expected in t for t in texts), texts
    assert all(m.ephemeral for m in result.followups)
    # The consent message ends in a final state, never left on its progress text.
    assert asked.response is not None and "Checking your recording" not in asked.response.content
    assert "Nothing was cloned" in asked.response.content or not asked.response.components
    assert channel.last_message is None
    _ = simcord_env.errors  # acknowledged: the handler answered them


async def test_speech_the_engine_finished_during_a_restart_is_posted_after_it(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    account = await services.members.get(alice.id)
    assert account is not None
    tada = services.tada.with_key(account.api_key)
    target = await tada.create_voice_upload_url("Alice", "alice.wav")
    await tada.put_upload(target, await speech_wav())
    voice = await tada.create_voice(target.upload_id)
    # The bot saved the job and called Ta-da, then died; the engine finished the speech.
    store = simcord_env.bot.jobs.store  # type: ignore[attr-defined]
    job = await store.create(
        user_id=alice.id,
        guild_id=simcord_env.guild.id,
        channel_id=channel.id,
        kind=JobKind.VOICE_SPEAK,
        params={"voice_id": voice.id, "text": "Said while you were away.", "voice_name": "Alice"},
    )
    await store.update(job.id, state=JobState.RUNNING, started_at=utcnow())
    spoken = await tada.generate_voice(voice.id, "Said while you were away.")

    await simcord_env.restart_bot(create_bot(services))
    await simcord_env.settle()

    job = await store.get(job.id)
    assert job.state is JobState.FINISHED and job.tada_id == spoken.id
    posted = channel.last_message
    assert posted is not None and posted.id == job.result_message_id
    assert "Said while you were away." in posted.content
    assert posted.attachments[0].filename == "speech.mp3"
    # Posted once: a second start finds nothing left to post.
    await simcord_env.restart_bot(create_bot(services))
    await simcord_env.settle()
    assert sum("Said while" in m.content for m in channel.history()) == 1


async def test_no_answer_to_the_consent_step_uploads_nothing(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    asked = await alice.slash(
        channel, "voice clone", name="Alice", sample=("alice.wav", await speech_wav())
    )
    await simcord_env.advance_time(301)
    assert asked.response is not None
    assert asked.response.content == "No answer, so nothing was uploaded."
    assert not asked.response.components
    account = await services.members.get(alice.id)
    assert account is not None
    assert await services.tada.with_key(account.api_key).list_voice_uploads() == []


async def test_a_voice_name_is_moderated_before_anything_is_uploaded(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)

    asked = await alice.slash(
        channel, "voice clone", name="Nude Alice", sample=("alice.wav", await speech_wav())
    )

    assert asked.response is not None and not asked.response.components
    assert "nude" in asked.response.content.lower(), asked.response.content
    account = await services.members.get(alice.id)
    assert account is not None
    assert await services.tada.with_key(account.api_key).list_voice_uploads() == []
    _ = simcord_env.errors
