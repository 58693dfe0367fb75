"""Failures are explained to the member privately when their own input caused them;
operator instructions stay in the log and in ``/tada-admin show``; someone else's id reads
like a missing one (issue 15, defects 5, 7 and 10's field-name prefixes). The engine here
has no demo model, as a fresh engine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices
from bot.jobs import JobState
from bot.store import LinkedVia
from tests.bot.media_samples import speech_wav
from tests.bot.policy_world import Server, admin_says, make_server
from tests.bot.worker_world import bot_config, engine_settings  # noqa: F401
from tests.conftest import make_settings, register

pytestmark = pytest.mark.simcord(settle_timeout=120)


@pytest.fixture
async def server(simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient) -> Server:
    built = make_server(simcord_env)
    key = await register(api, "alice@example.com")
    await services.members.save(built.alice.id, SecretStr(key), via=LinkedVia.LINK)
    return built


def private_texts(result: simcord.InteractionResult) -> list[str]:
    return [m.content for m in result.followups if m.ephemeral]


async def test_a_refused_text_is_answered_privately_without_field_names(
    simcord_env: simcord.Env, server: Server, services: BotServices, api: httpx.AsyncClient
) -> None:
    account = await services.members.get(server.alice.id)
    assert account is not None
    tada = services.tada.with_key(account.api_key)
    target = await tada.create_voice_upload_url("Alice", "alice.wav")
    await tada.put_upload(target, await speech_wav())
    voice = await tada.create_voice(target.upload_id)

    said = await server.alice.slash(server.general, "voice speak", voice=voice.id, text="?!?")
    texts = private_texts(said)
    assert any("letters or digits" in t for t in texts), texts
    assert not any("text: " in t for t in texts), texts
    # Nothing about it in the channel.
    assert not any("failed" in m.content for m in server.general.history())
    [job] = await simcord_env.bot.jobs.store.for_member(server.alice.id)  # type: ignore[attr-defined]
    assert job.state is JobState.FAILED and job.posted

    # Bob's voice id, used by Alice, reads exactly like an id that does not exist.
    bob_key = SecretStr(await register(api, "bob@example.com"))
    bobs = services.tada.with_key(bob_key)
    target = await bobs.create_voice_upload_url("Bob", "bob.wav")
    await bobs.put_upload(target, await speech_wav())
    bob_voice = await bobs.create_voice(target.upload_id)
    others = await server.alice.slash(server.general, "voice info", voice=bob_voice.id)
    missing = await server.alice.slash(server.general, "voice info", voice="v" * 32)
    assert others.response is not None and missing.response is not None
    assert "not one of yours" in others.response.content
    assert others.response.content == missing.response.content
    spoken = await server.alice.slash(server.general, "voice speak", voice=bob_voice.id, text="Hi")
    assert any("not one of yours" in t for t in private_texts(spoken))
    assert not any("failed" in m.content for m in server.general.history())
    _ = simcord_env.errors


async def test_operator_instructions_go_to_the_log_and_admin_show(
    simcord_env: simcord.Env, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    asked = await server.alice.slash(server.general, "demo tadz", prompt="a cat")
    seen = [m.content for m in [*asked.followups, *server.general.history()]]
    assert any("failed" in t for t in seen), seen
    assert not any("config.toml" in t or "[engine." in t for t in seen), seen
    assert "[engine.image.demos.tadz]" in caplog.text

    show = await server.admin.slash(server.general, "tada-admin show")
    assert show.response is not None
    shown = "\n".join(
        f"{f.name}\n{f.value}" for e in show.response.embeds for f in e.fields
    ) + "".join(e.description or "" for e in show.response.embeds)
    assert "Tadz demo" in shown and "not configured" in shown, shown
    # Worded for an admin: what is not set up yet, and who sets it up.
    assert "Not set up on the Ta-da engine yet" in shown and "is missing" not in shown
    assert "Whoever runs the bot sets them up" in shown
    added = await admin_says(server, "demo add", channel=server.general)
    assert "no Tadz demo model" in added, added
    _ = simcord_env.errors


def button_labels(message: Any) -> list[str]:
    return [
        str(child.label)
        for row in message.components or []
        for child in getattr(row, "children", ())
        if getattr(child, "label", None)
    ]


async def test_a_demo_the_engine_lacks_is_said_once_with_what_admins_can_do_and_no_retry(
    simcord_env: simcord.Env, server: Server
) -> None:
    # Learnt from the engine's answer (a remote engine: its settings are not at hand).
    asked = await server.alice.slash(server.general, "demo tadz", prompt="a cat")
    [failed] = [m for m in server.general.history() if "failed" in m.content]
    assert "The Tadz demo is not set up" in failed.content
    assert "/tada-admin show" in failed.content
    assert "Try again" not in failed.content and "busy" not in failed.content
    assert button_labels(failed) == ["Delete"]  # no Retry: it cannot succeed until set up
    assert asked.response is not None


async def test_a_demo_the_engine_settings_lack_is_refused_up_front_privately(
    simcord_env: simcord.Env, server: Server, services: BotServices
) -> None:
    # An embedded engine (a fresh install, the sandbox): its settings say there is no demo
    # (EngineReadiness.of_embedded, tested below, records it so).
    services.readiness.demo_missing("pudgy", "not in the settings", from_settings=True)
    asked = await server.alice.slash(server.general, "demo pudgy", prompt="a penguin")

    assert asked.response is not None and asked.ephemeral
    text = asked.response.content
    assert text.startswith("The Pudgy Penguins demo is not set up"), text
    assert "/tada-admin show" in text
    assert not asked.followups  # said once
    assert not button_labels(asked.response)
    assert server.general.history() == []
    jobs = await simcord_env.bot.jobs.store.for_member(server.alice.id)  # type: ignore[attr-defined]
    assert jobs == []  # nothing was queued, no quota used
    _ = simcord_env.errors  # the refusal, answered by the central handler


async def test_someone_elses_job_reads_like_a_missing_one(
    simcord_env: simcord.Env, server: Server
) -> None:
    from bot.errors import UserFacingError
    from bot.jobs.panel import JobPanel

    runner = simcord_env.bot.jobs  # type: ignore[attr-defined]
    runner.queue.max_running = 0
    await server.alice.slash(server.general, "demo tadz", prompt="a cat")
    [job] = await runner.store.for_member(server.alice.id)
    panel = JobPanel(runner)
    with pytest.raises(UserFacingError) as others:
        await panel.cancel(server.admin.id, job.id)
    with pytest.raises(UserFacingError) as missing:
        await panel.cancel(server.admin.id, "f" * 32)
    assert others.value.message == missing.value.message
    assert "not one of yours" in others.value.message


def test_an_embedded_engine_says_up_front_what_it_lacks(tmp_path: Path) -> None:
    from bot.readiness import EngineReadiness

    readiness = EngineReadiness.of_embedded(make_settings(tmp_path / "engine"))
    assert readiness.missing_demos() == ["Tadz demo", "Pudgy Penguins demo"]
    assert any("random test model" in lack.what for lack in readiness.lacks())
    assert readiness.demo_not_set_up("tadz") and readiness.demo_not_set_up("pudgy")
    # An engine's answer does not overrule its settings; a demo image made does.
    readiness.demo_missing("tadz", "the engine said so")
    assert readiness.demo_not_set_up("tadz")
    readiness.demo_works("tadz")
    assert readiness.missing_demos() == ["Pudgy Penguins demo"]
    assert not readiness.demo_not_set_up("tadz")
