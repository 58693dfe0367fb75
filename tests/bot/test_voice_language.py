"""The member's language in ``/voice speak`` (issue 28, item 4): the member's Discord locale
goes to the engine as a hint; a text in a language the voice does not speak is answered in
one private line, and nothing is posted in the channel."""

from __future__ import annotations

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices
from bot.jobs import JobState
from bot.store import LinkedVia
from tests.bot.media_samples import speech_wav
from tests.bot.policy_world import Server, make_server
from tests.bot.worker_world import bot_config, engine_settings  # noqa: F401
from tests.conftest import register

pytestmark = pytest.mark.simcord(settle_timeout=120)

GERMAN = "Der Zug kam heute wieder zu spät, also ist Maria den langen Weg ins Büro gelaufen."


@pytest.fixture
async def server(simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient) -> Server:
    built = make_server(simcord_env)
    key = await register(api, "alice@example.com")
    await services.members.save(built.alice.id, SecretStr(key), via=LinkedVia.LINK)
    return built


async def test_a_text_the_voice_cannot_speak_is_refused_in_one_private_line(
    simcord_env: simcord.Env, server: Server, services: BotServices
) -> None:
    account = await services.members.get(server.alice.id)
    assert account is not None
    tada = services.tada.with_key(account.api_key)
    target = await tada.create_voice_upload_url("Alice", "alice.wav")
    await tada.put_upload(target, await speech_wav())
    voice = await tada.create_voice(target.upload_id)

    said = await server.alice.slash(server.general, "voice speak", voice=voice.id, text=GERMAN)
    refusals = [
        m.content for m in said.followups if m.ephemeral and "speaks English only" in m.content
    ]
    assert len(refusals) == 1, [m.content for m in said.followups]
    assert "\n" not in refusals[0]
    assert refusals[0].endswith(
        "Ta-da refused that: this voice speaks English only; your text reads as German"
    )
    assert not any(GERMAN[:20] in m.content for m in server.general.history())
    [job] = await simcord_env.bot.jobs.store.for_member(server.alice.id)  # type: ignore[attr-defined]
    assert job.state is JobState.FAILED
    assert job.params["locale"] == "en-US"  # the member's Discord locale, sent as the hint
    _ = simcord_env.errors
