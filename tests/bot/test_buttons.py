"""Persistent buttons: custom ids keep their formats, so buttons posted by earlier versions
of the bot are still recognised (and rebuilt with the same owner and Ta-da id)."""

from __future__ import annotations

import re
from typing import Any

import discord
import pytest

from bot.jobs.buttons import (
    PERSISTENT_BUTTONS,
    AgainButton,
    DeleteButton,
    GenerateButton,
    OwnedButton,
    RepostButton,
    ReseedButton,
    SeedButton,
    SpeakButton,
    TrainButton,
    UpscaleButton,
    VaryButton,
    VaryStrongButton,
    VarySubtleButton,
    prompt_modal,
    speak_modal,
)

JOB = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("button", "custom_id"),
    [
        (AgainButton(JOB), f"tada:again:{JOB}"),
        (DeleteButton(JOB, 42), f"tada:del:{JOB}:42"),
        (GenerateButton(42, "lora-1"), "tada:gen:42:lora-1"),
        (SpeakButton(42, "voice_1"), "tada:speak:42:voice_1"),
        (TrainButton(42, "up.1"), "tada:train:42:up.1"),
        (RepostButton(42, "gen_1"), "tada:repost:42:gen_1"),
        (VaryButton(JOB), f"tada:vary:{JOB}"),
        (SeedButton(JOB), f"tada:seed:{JOB}"),
        (ReseedButton(JOB), f"tada:reseed:{JOB}"),
        (UpscaleButton(JOB), f"tada:upscale:{JOB}"),
        (VarySubtleButton(JOB), f"tada:vsubtle:{JOB}"),
        (VaryStrongButton(JOB), f"tada:vstrong:{JOB}"),
    ],
)
def test_custom_ids_keep_their_formats(button: discord.ui.DynamicItem[Any], custom_id: str) -> None:
    assert button.custom_id == custom_id
    matching = [
        cls
        for cls in PERSISTENT_BUTTONS
        if cls.__discord_ui_compiled_template__.fullmatch(custom_id)  # type: ignore[attr-defined]
    ]
    assert matching == [type(button)]


@pytest.mark.parametrize(
    ("cls", "label", "kind"),
    [
        (GenerateButton, "Generate", "gen"),
        (SpeakButton, "Speak", "speak"),
        (TrainButton, "Train", "train"),
    ],
)
async def test_owned_buttons_are_rebuilt_from_an_old_custom_id(
    cls: type[OwnedButton], label: str, kind: str
) -> None:
    custom_id = f"tada:{kind}:1234:abc-9"
    match = cls.__discord_ui_compiled_template__.fullmatch(custom_id)  # type: ignore[attr-defined]
    assert isinstance(match, re.Match)
    rebuilt = await cls.from_custom_id(None, None, match)  # type: ignore[arg-type]
    assert isinstance(rebuilt, cls)
    assert (rebuilt.owner, rebuilt.target, rebuilt.item.label) == (1234, "abc-9", label)
    assert rebuilt.custom_id == custom_id
    # The abstract base is never registered and matches nothing.
    assert OwnedButton not in PERSISTENT_BUTTONS
    assert not OwnedButton.__discord_ui_compiled_template__.fullmatch(custom_id)  # type: ignore[attr-defined]


def test_the_modals_keep_their_titles_and_field_ids() -> None:
    prompt, speak = prompt_modal("lora-1"), speak_modal("voice-1")
    assert (prompt.title, prompt.answer.custom_id) == ("Generate an image", "prompt")
    assert (speak.title, speak.answer.custom_id) == ("Speak with this voice", "text")
    assert [c.custom_id for c in prompt.children] == ["prompt"]  # type: ignore[attr-defined]
