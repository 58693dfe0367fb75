"""Results into the server's expressions (issue 27): a speech becomes a soundboard sound,
an image a custom emoji or a sticker, when an admin turned it on and the server's roles
allow the member.

SimCord models emoji and stickers but not the soundboard, so the requests are taken at
discord.py's HTTP seam (``HTTPClient.request``), and their real bodies are checked against
Discord's documented limits: sound MP3/OGG <= 512 KB and <= 5.2 s; emoji <= 256 KB at
128x128; sticker PNG 320x320 <= 512 KB.
"""

from __future__ import annotations

import base64
import io
import subprocess
from pathlib import Path
from typing import Any

import discord
import httpx
import pytest
import simcord
from PIL import Image
from pydantic import SecretStr

from bot.app import BotServices
from bot.expression_media import (
    EMOJI_MAX_BYTES,
    SOUND_MAX_BYTES,
    SOUND_MAX_SECONDS,
    STICKER_MAX_BYTES,
    emoji_png,
    soundboard_mp3,
    sticker_png,
)
from bot.expressions import expression_name
from bot.jobs.buttons import PERSISTENT_BUTTONS, EmojiButton, SoundboardButton, StickerButton
from bot.store import LinkedVia
from engine.settings import EngineSettings
from engine.voice.audio import ffmpeg_exe
from tests.bot.media_samples import speech_wav
from tests.bot.policy_world import (
    demo_engine_settings,
    demo_loras,
    make_server,
)
from tests.conftest import register

__all__ = ["demo_loras"]
pytestmark = pytest.mark.simcord(settle_timeout=120)
JOB = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def engine_settings(tmp_path: Path, demo_loras: dict[str, Path]) -> EngineSettings:
    return demo_engine_settings(tmp_path / "engine", demo_loras)


def seconds_of(mp3: bytes, tmp: Path) -> float:
    """The audio's length as ffmpeg decodes it."""
    path = tmp / "sound.mp3"
    path.write_bytes(mp3)
    pcm = ["-f", "s16le", "-ac", "1", "-ar", "8000", "-"]
    raw = subprocess.run(
        [ffmpeg_exe(), "-loglevel", "error", "-i", str(path), *pcm],
        check=True,
        capture_output=True,
    ).stdout
    return len(raw) / 2 / 8000


def data_uri(value: str, kind: str) -> bytes:
    head, _, body = value.partition(",")
    assert head.startswith(f"data:{kind}") and head.endswith(";base64"), head
    return base64.b64decode(body)


class Seam:
    """discord.py's HTTP client with expression requests recorded (the soundboard one is
    answered here, as SimCord has no soundboard; the others go on to SimCord)."""

    def __init__(self, http: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._inner = http.request
        http.request = self.request

    async def request(self, route: Any, **kwargs: Any) -> Any:
        path = route.path
        if route.method == "POST" and path.split("/")[-1] in (
            "soundboard-sounds",
            "emojis",
            "stickers",
        ):
            recorded = dict(kwargs)
            if "form" in kwargs:  # a file object is read once: keep its bytes
                recorded["form"] = [
                    {**f, "value": f["value"].read()} if hasattr(f["value"], "read") else f
                    for f in kwargs["form"]
                ]
                for f in kwargs["form"]:
                    if hasattr(f["value"], "seek"):
                        f["value"].seek(0)
            self.calls.append((path.split("/")[-1], recorded))
            if path.endswith("soundboard-sounds"):
                body = kwargs["json"]
                return {
                    "sound_id": "1234567890",
                    "name": body["name"],
                    "volume": body["volume"],
                    "emoji_id": None,
                    "emoji_name": None,
                    "guild_id": str(route.guild_id),
                    "available": True,
                }
        return await self._inner(route, **kwargs)


async def test_speech_becomes_a_sound_and_an_image_an_emoji_and_a_sticker(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    server = make_server(simcord_env)
    creators = server.guild.create_role(
        "Creators", permissions=discord.Permissions(create_expressions=True)
    )
    alice = server.guild.add_member(simcord_env.create_user("alicia"), roles=[creators])
    key = await register(api, "alicia@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)
    await services.members.save(server.alice.id, SecretStr(key), via=LinkedVia.LINK)
    tada = services.tada.with_key(SecretStr(key))
    target = await tada.create_voice_upload_url("Alicia", "alicia.wav")
    await tada.put_upload(target, await speech_wav())
    voice = await tada.create_voice(target.upload_id)
    seam = Seam(simcord_env.bot.http)
    text = "Welcome to the server, everyone! Grab a snack and join us in the voice channel."

    # Off by default: no button.
    spoken = await alice.slash(server.general, "voice speak", voice=voice.id, text=text)
    labels = [c.get("label") for row in spoken.followups[-1].components for c in row["components"]]
    assert "Speak again" in labels and "Soundboard" not in labels

    await server.admin.slash(server.general, "tada-admin expressions", enabled=True)
    spoken = await alice.slash(server.general, "voice speak", voice=voice.id, text=text)
    post = spoken.followups[-1]

    # A member without Create Expressions is refused, privately; nothing reaches Discord.
    refused = await server.alice.click(post, label="Soundboard")
    assert refused.ephemeral and refused.response is not None
    assert "Create Expressions" in refused.response.content
    assert seam.calls == []

    made = await alice.click(post, label="Soundboard")
    note = made.followups[-1] if made.followups else made.response
    assert note is not None and f"<@{alice.id}>" in note.content
    assert "soundboard" in note.content and "Alicia" in note.content
    [(kind, call)] = seam.calls
    assert kind == "soundboard-sounds"
    body = call["json"]
    assert 2 <= len(body["name"]) <= 32 and body["name"] == "Alicia"
    sound = data_uri(body["sound"], "audio/mpeg")
    assert len(sound) <= SOUND_MAX_BYTES
    assert 1.0 < seconds_of(sound, tmp_path) <= SOUND_MAX_SECONDS
    assert str(alice.id) in call["reason"]

    # The bot's roles apply too: Voice limited to the Mods role leaves Alicia out.
    await server.admin.slash(
        server.general, "tada-admin roles allow", feature="voice", role=server.guild.roles["Mods"]
    )
    refused = await alice.click(post, label="Soundboard")
    assert refused.ephemeral and refused.response is not None
    assert "roles" in refused.response.content
    assert len(seam.calls) == 1

    drawn = await alice.slash(server.general, "demo tadz", prompt="a cat in a hat")
    image_post = drawn.followups[-1]
    await alice.click(image_post, label="Emoji")
    await alice.click(image_post, label="Sticker")
    kinds = [k for k, _ in seam.calls[1:]]
    assert kinds == ["emojis", "stickers"], kinds
    emoji_body = seam.calls[1][1]["json"]
    emoji = data_uri(emoji_body["image"], "image/png")
    assert len(emoji) <= EMOJI_MAX_BYTES
    assert Image.open(io.BytesIO(emoji)).size == (128, 128)
    assert emoji_body["name"].replace("_", "").isalnum()
    form = {f["name"]: f for f in seam.calls[2][1]["form"]}
    sticker = form["file"]["value"]
    assert form["file"]["content_type"] == "image/png" and len(sticker) <= STICKER_MAX_BYTES
    assert Image.open(io.BytesIO(sticker)).size == (320, 320)
    assert "Made by alicia" in form["description"]["value"]


def test_limits_hold_for_long_speech_and_large_images() -> None:
    # 20 s of loud stereo noise: the worst case for an MP3's size.
    noise = ["-f", "lavfi", "-i", "anoisesrc=d=20:a=0.9", "-ac", "2", "-ar", "48000"]
    wav = subprocess.run(
        [ffmpeg_exe(), "-loglevel", "error", *noise, "-f", "wav", "pipe:1"],
        check=True,
        capture_output=True,
    ).stdout
    sound = soundboard_mp3(wav)
    assert len(sound) <= SOUND_MAX_BYTES
    big = Image.effect_noise((3000, 2000), 120).convert("RGB")
    out = io.BytesIO()
    big.save(out, "PNG")
    emoji, sticker = emoji_png(out.getvalue()), sticker_png(out.getvalue())
    assert len(emoji) <= EMOJI_MAX_BYTES and Image.open(io.BytesIO(emoji)).size == (128, 128)
    assert len(sticker) <= STICKER_MAX_BYTES
    assert Image.open(io.BytesIO(sticker)).size == (320, 320)


@pytest.mark.parametrize(
    ("button", "custom_id"),
    [
        (SoundboardButton(JOB), f"tada:sound:{JOB}"),
        (EmojiButton(JOB), f"tada:emoji:{JOB}"),
        (StickerButton(JOB), f"tada:sticker:{JOB}"),
    ],
)
def test_expression_buttons_survive_restarts(
    button: discord.ui.DynamicItem[Any], custom_id: str
) -> None:
    assert button.custom_id == custom_id
    matching = [
        cls
        for cls in PERSISTENT_BUTTONS
        if cls.__discord_ui_compiled_template__.fullmatch(custom_id)  # type: ignore[attr-defined]
    ]
    assert matching == [type(button)]


def test_expression_names_are_what_discord_takes() -> None:
    assert expression_name("Alicia") == "Alicia"
    assert expression_name("x") == "Ta-da result"
    assert len(expression_name("A" * 80)) == 32
    assert expression_name("Tadz demo: a cat!", emoji=True) == "Tadz_demo_a_cat"
    assert expression_name("🎉", emoji=True) == "tada_result"
