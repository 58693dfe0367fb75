"""Names and trigger words with hidden or direction-changing characters are refused, and
names from elsewhere are shown without them (issue 15, defect 8)."""

from __future__ import annotations

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices
from bot.names import hidden_characters, visible
from bot.store import LinkedVia
from tests.bot.media_samples import picture, speech_wav, zip_of
from tests.bot.worker_world import bot_config, engine_settings  # noqa: F401
from tests.conftest import register

pytestmark = pytest.mark.simcord(settle_timeout=120)
SPOOFS = ["\u202eecilA", "Al\u200bice", "Ali\u200dce", "\u2066Alice\u2069", "Alice\ufeff"]


@pytest.mark.parametrize("name", SPOOFS)
def test_hidden_characters_are_found_and_removed_for_display(name: str) -> None:
    assert hidden_characters(name) and not hidden_characters(visible(name))
    assert visible("Zoë 🎙️ Ωmega") == "Zoë 🎙️ Ωmega"


async def test_spoofing_names_are_refused_and_shown_cleaned(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    key = await register(api, "alice@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)
    tada = services.tada.with_key(SecretStr(key))
    wav = await speech_wav()

    cloned = await alice.slash(channel, "voice clone", name="\u202eecilA", sample=("a.wav", wav))
    assert cloned.response is not None and cloned.ephemeral
    assert "U+202E" in cloned.response.content and not cloned.response.components
    images = zip_of({f"img{i}.jpg": picture(i) for i in range(4)})
    up = await alice.slash(
        channel, "lora upload", name="Cats", trigger_word="ta\u200bdz", images=("s.zip", images)
    )
    texts = [m.content for m in [up.response, *up.followups] if m is not None]
    assert any("trigger word" in t and "U+200B" in t for t in texts), texts
    assert await tada.list_voice_uploads() == [] and await tada.list_lora_uploads() == []

    # A voice named elsewhere (straight through the API): its card and speech show it clean.
    target = await tada.create_voice_upload_url("\u202eecilA", "a.wav")
    await tada.put_upload(target, wav)
    voice = await tada.create_voice(target.upload_id)
    card = (await alice.slash(channel, "voice info", voice=voice.id)).response
    assert card is not None and card.embeds[0].title == "🎙️ ecilA"
    posted = (await alice.slash(channel, "voice speak", voice=voice.id, text="Hi.")).followups[-1]
    assert "**ecilA**" in posted.content and "\u202e" not in posted.content
    _ = simcord_env.errors
