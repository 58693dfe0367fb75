"""``/tada-admin trace``: an admin learns privately whether a clip was made with the bot,
by which member, in which voice and channel, when (issue 27, traceable speech)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices
from bot.config import BotConfig
from bot.errors import UserFacingError
from bot.store import LinkedVia
from engine.settings import EngineSettings, JobSettings
from engine.voice.audio import ffmpeg_exe
from tests.bot.conftest import make_bot_config
from tests.bot.media_samples import speech_wav
from tests.bot.policy_world import make_server
from tests.conftest import make_settings, register
from tests.prerequisites import SPHINX_LIBRIVOX
from tests.waiting import CEILING_S

pytestmark = pytest.mark.simcord(settle_timeout=120)
OPERATOR = "operator-token-for-bot-tests-0123456789"
OPUS_32K = ("-c:a", "libopus", "-b:a", "32k")


@pytest.fixture
def engine_settings(tmp_path: Path) -> EngineSettings:
    return make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        trace={"operator_token": OPERATOR},
    )


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    return make_bot_config(
        tmp_path / "bot",
        jobs={"poll_seconds": 0.05, "post_backoff_seconds": 0.01},
        tada={"operator_token": OPERATOR},
    )


def as_voice_message(mp3: bytes, tmp: Path) -> bytes:
    """What Discord makes of a voice message: Opus at 32 kbps in Ogg."""
    src, dst = tmp / "speech.mp3", tmp / "clip.ogg"
    src.write_bytes(mp3)
    subprocess.run(
        [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), *OPUS_32K, str(dst)],
        check=True,
        capture_output=True,
    )
    return dst.read_bytes()


async def test_trace_names_the_member_voice_channel_and_time_privately(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    server = make_server(simcord_env)
    key = await register(api, "alice@example.com")
    await services.members.save(server.alice.id, SecretStr(key), via=LinkedVia.LINK)
    tada = services.tada.with_key(SecretStr(key))
    target = await tada.create_voice_upload_url("Alice", "alice.wav")
    await tada.put_upload(target, await speech_wav())
    voice = await tada.create_voice(target.upload_id)

    text = "I never said that, and I would never say that on the stream tonight."
    spoken = await server.alice.slash(server.general, "voice speak", voice=voice.id, text=text)
    posted = spoken.followups[-1]
    [audio] = posted.attachments
    clip = as_voice_message(await audio.read(), tmp_path)

    traced = await server.admin.slash(server.general, "tada-admin trace", audio=("clip.ogg", clip))
    answer = traced.followups[-1] if traced.followups else traced.response
    assert answer is not None and answer.ephemeral
    assert "Made with this bot" in answer.content, answer.content
    assert f"<@{server.alice.id}>" in answer.content
    assert f"<#{server.general.id}>" in answer.content
    assert f"**{voice.name}**" in answer.content
    assert "<t:" in answer.content  # when, in the reader's time zone
    assert "Ta-da watermark: yes" in answer.content, answer.content
    assert server.general.last_message is not None
    assert server.general.last_message.id == posted.id  # nothing posted publicly

    # The clip reposted by a member, traced by its message's link.
    reposted = await server.alice.send(server.general, "lol", attachments=[("clip.ogg", clip)])
    link = f"https://discord.com/channels/{server.guild.id}/{server.general.id}/{reposted.id}"
    traced = await server.admin.slash(server.general, "tada-admin trace", message_link=link)
    answer = traced.followups[-1] if traced.followups else traced.response
    assert answer is not None and answer.ephemeral
    assert "Made with this bot" in answer.content and f"**{voice.name}**" in answer.content

    unrelated = sorted(SPHINX_LIBRIVOX.glob("*.wav"))[0].read_bytes()
    traced = await server.admin.slash(
        server.general, "tada-admin trace", audio=("other.wav", unrelated)
    )
    answer = traced.followups[-1] if traced.followups else traced.response
    assert answer is not None and answer.ephemeral
    assert "Not made here" in answer.content
    assert "Ta-da watermark: no" in answer.content, answer.content

    refused = await server.admin.slash(
        server.general, "tada-admin trace", audio=("notes.txt", b"hello")
    )
    answer = refused.followups[-1] if refused.followups else refused.response
    assert answer is not None and answer.ephemeral
    assert "not an audio file" in answer.content

    # Bytes that claim to be audio reach the engine's confined decoder, which refuses them.
    refused = await server.admin.slash(
        server.general, "tada-admin trace", audio=("clip.mp3", b"\x00" * 4000)
    )
    answer = refused.followups[-1] if refused.followups else refused.response
    assert answer is not None and answer.ephemeral
    assert "cannot trace that clip" in answer.content, answer.content
    # The refusals were answered by the central handler, as members' errors.
    errors = simcord_env.errors
    assert len(errors) == 2
    assert all(isinstance(getattr(e, "original", e), UserFacingError) for e in errors)


async def test_a_member_cannot_run_trace(simcord_env: simcord.Env, services: BotServices) -> None:
    server = make_server(simcord_env)
    assert "tada-admin trace" in server.admin.available_commands(server.general)
    assert "tada-admin trace" not in server.alice.available_commands(server.general)


def test_the_bots_operator_token_comes_from_the_environment_only() -> None:
    from bot.config import OPERATOR_TOKEN_ENV, ConfigError, load_bot_config

    config = load_bot_config({}, {OPERATOR_TOKEN_ENV: OPERATOR})
    assert config.tada.operator_token is not None
    assert config.tada.operator_token.get_secret_value() == OPERATOR
    assert OPERATOR not in repr(config)
    with pytest.raises(ConfigError, match=OPERATOR_TOKEN_ENV):
        load_bot_config({"tada": {"operator_token": OPERATOR}}, {})


async def test_the_embedded_engine_gets_an_operator_token_from_the_bot(tmp_path: Path) -> None:
    from bot.app import open_services

    config = make_bot_config(tmp_path / "bot")
    settings = make_settings(tmp_path / "engine", port=0)
    assert settings.trace.operator_token is None
    async with open_services(config, engine_settings=settings) as services:
        assert services.engine is not None and services.tracer is not None
        assert services.tracer.available
        engine_token = services.engine.settings.trace.operator_token
        assert engine_token is not None and len(engine_token.get_secret_value()) >= 32
        unrelated = sorted(SPHINX_LIBRIVOX.glob("*.wav"))[0].read_bytes()
        report = await services.tracer.trace(1234, unrelated)
        assert report.made_here is False and report.clip_seconds > 3
        assert report.watermarked is False and report.watermark_score is not None


def test_a_clip_found_by_its_watermark_alone_is_called_machine_made() -> None:
    from bot.trace import TraceReport
    from cogs.admin import render_trace

    text = render_trace(TraceReport(False, 6.2, (), watermarked=True, watermark_score=0.99))
    assert "Machine-made" in text and "Ta-da watermark: yes (0.99)" in text
    assert "Not made here" not in text
    unknown = render_trace(TraceReport(False, 6.2, ()))
    assert "Not made here" in unknown and "watermark" not in unknown
