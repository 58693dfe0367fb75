"""Speech as a Discord voice message (OGG/Opus, waveform, duration, IS_VOICE_MESSAGE),
with the MP3 attachment as the fallback (issue 15, voice-bot features)."""

from __future__ import annotations

import base64

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices
from bot.store import LinkedVia
from bot.voice_message import VOICE_MESSAGE_FLAG, make_voice_message_async
from tests.bot.media_samples import speech_wav
from tests.bot.mentions import assert_pings_at_most
from tests.bot.policy_world import Server, admin_says, make_server
from tests.bot.worker_world import bot_config, engine_settings  # noqa: F401
from tests.conftest import register

pytestmark = pytest.mark.simcord(settle_timeout=120)


async def test_audio_becomes_ogg_opus_with_a_waveform_and_its_duration() -> None:
    wav = await speech_wav()
    made = await make_voice_message_async(wav)
    assert made.ogg[:4] == b"OggS" and b"OpusHead" in made.ogg[:200]
    seconds = (len(wav) - 44) / (2 * 22050)  # the sample: 16-bit mono at 22.05 kHz
    assert abs(made.duration_seconds - seconds) < 0.1
    bars = base64.b64decode(made.waveform)
    assert 1 <= len(bars) <= 256 and max(bars) == 255 and min(bars) < 255


async def voice_of(services: BotServices, api: httpx.AsyncClient, server: Server) -> str:
    key = SecretStr(await register(api, "alice@example.com"))
    await services.members.save(server.alice.id, key, via=LinkedVia.LINK)
    tada = services.tada.with_key(key)
    target = await tada.create_voice_upload_url("Alice", "alice.wav")
    await tada.put_upload(target, await speech_wav())
    return (await tada.create_voice(target.upload_id)).id


async def test_speech_is_posted_as_a_voice_message_when_the_server_asks(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    server = make_server(simcord_env)
    voice_id = await voice_of(services, api, server)
    said = await admin_says(server, "voice-messages", enabled=True)
    assert "voice messages" in said

    spoken = await server.alice.slash(server.general, "voice speak", voice=voice_id, text="Hi.")

    voiced = [m for m in server.general.history() if m.flags.value & VOICE_MESSAGE_FLAG]
    assert len(voiced) == 1 and voiced[0].content == ""
    [ogg] = voiced[0].attachments
    assert ogg.filename.endswith(".ogg") and (await ogg.read())[:4] == b"OggS"
    sent = next(
        r.json
        for r in simcord_env.http_requests
        if r.method == "POST" and isinstance(r.json, dict) and r.json.get("flags") == 8192
    )
    [attachment] = sent["attachments"]
    assert attachment["duration_secs"] > 0.2 and base64.b64decode(attachment["waveform"])
    # The card (text, similarity, buttons) follows, without a second copy of the audio.
    card = spoken.followups[-1]
    assert "voice message above" in card.content and not card.attachments
    assert server.alice.mention in card.content
    assert_pings_at_most(simcord_env, {server.alice.id})

    # Where Discord refuses the voice message, the MP3 goes out as before.
    simcord_env.inject_error("POST", "/channels/*/messages", status=403, code=50013, times=1)
    again = await server.alice.slash(server.general, "voice speak", voice=voice_id, text="Bye.")
    assert again.followups[-1].attachments[0].filename == "speech.mp3"
    _ = simcord_env.errors


async def test_speech_stays_an_mp3_by_default(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    server = make_server(simcord_env)
    voice_id = await voice_of(services, api, server)
    spoken = await server.alice.slash(server.general, "voice speak", voice=voice_id, text="Hi.")
    assert spoken.followups[-1].attachments[0].filename == "speech.mp3"
    assert not any(m.flags.value & VOICE_MESSAGE_FLAG for m in server.general.history())
