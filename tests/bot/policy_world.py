"""Shared setup of the admin and quota tests: an engine with the two demo models (tiny
LoRAs trained once per module), a guild with an admin, a member, and helpers that drive
``/tada-admin`` the way an admin would."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import discord
import httpx
import pytest
import simcord
from PIL import Image

from engine.image.pipeline import ImageModel
from engine.image.settings import ImageSettings
from engine.image.types import TrainImage
from engine.settings import EngineSettings, JobSettings
from tests.bot.media_samples import picture
from tests.conftest import make_settings
from tests.waiting import CEILING_S


def train_demo_loras(out: Path) -> dict[str, Path]:
    """The Tadz and Pudgy demo LoRAs on the tiny base model, as an operator trains them."""
    model = ImageModel.from_settings(ImageSettings())
    loras = {}
    for n, (name, word) in enumerate((("tadz", "tadz"), ("pudgy", "pudgy penguin"))):
        examples = [
            TrainImage(Image.open(io.BytesIO(picture(i + 5 * n))).convert("RGB"), word)
            for i in range(3)
        ]
        loras[name] = out / f"{name}.safetensors"
        model.train_lora(examples, loras[name], rank=4, steps=4, learning_rate=1e-2, seed=n)
    return loras


def demo_engine_settings(data_dir: Path, loras: dict[str, Path]) -> EngineSettings:
    """Engine settings serving both demos with a worker in process."""
    return make_settings(
        data_dir,
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image={
            "generation": {"steps": 2},
            "demos": {
                "tadz": {"lora_path": str(loras["tadz"]), "trigger_word": "tadz"},
                "pudgy": {"lora_path": str(loras["pudgy"]), "trigger_word": "pudgy penguin"},
            },
        },
    )


@dataclass
class Server:
    """A guild with an admin (Manage Server) and an ordinary member."""

    guild: simcord.GuildHandle
    general: simcord.ChannelHandle
    admin: simcord.MemberActor
    alice: simcord.MemberActor


def make_server(env: simcord.Env) -> Server:
    guild = env.create_guild()
    general = guild.create_text_channel("general")
    mods = guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
    admin = guild.add_member(env.create_user("ada"), roles=[mods])
    alice = guild.add_member(env.create_user("alice"))
    return Server(guild, general, admin, alice)


async def admin_says(server: Server, command: str, /, **options: object) -> str:
    """Run ``/tada-admin <command>`` as the admin in #general; the (ephemeral) answer."""
    result = await server.admin.slash(server.general, f"tada-admin {command}", **options)
    assert result.ephemeral, f"/tada-admin {command} answered publicly"
    assert result.response is not None
    return result.response.content


def count_engine_calls(api: httpx.AsyncClient) -> list[str]:
    """Every request the bot makes to the engine from now on, as ``METHOD path``."""
    calls: list[str] = []

    async def note(request: httpx.Request) -> None:
        calls.append(f"{request.method} {request.url.path}")

    api.event_hooks["request"].append(note)
    return calls


@pytest.fixture(scope="module")
def demo_loras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_demo_loras(tmp_path_factory.mktemp("demos"))


def take_refusals(env: simcord.Env) -> list[str]:
    """The member-facing errors the bot reported since the last call (SimCord re-raises
    handled command errors at the end of a test unless they are taken)."""
    from bot.errors import UserFacingError, unwrap

    with pytest.raises(BaseExceptionGroup) as caught:
        env.raise_errors()
    errors = [unwrap(e) for e in caught.value.exceptions]
    assert all(isinstance(e, UserFacingError) for e in errors), errors
    return [e.message for e in errors if isinstance(e, UserFacingError)]
