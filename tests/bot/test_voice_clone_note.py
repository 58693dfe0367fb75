"""A clone that takes long says why in its progress message (issue 26, item 5): right
after the engine starts, the first clone also waits for the voice models to load."""

from __future__ import annotations

import asyncio

import discord
import pytest

from cogs.voice import CLONE_NOTE, awaited_with_note

pytestmark = pytest.mark.no_database


async def test_a_slow_clone_tells_the_member_why_while_it_waits() -> None:
    notes: list[str] = []

    async def clone() -> str:
        await asyncio.sleep(0.3)
        return "voice"

    async def note() -> None:
        notes.append(CLONE_NOTE)

    assert await awaited_with_note(clone(), after_s=0.05, note=note) == "voice"
    assert notes == [CLONE_NOTE]
    assert "voice models" in CLONE_NOTE and "first clone" in CLONE_NOTE


async def test_a_quick_clone_says_nothing_more_and_failures_still_reach_the_member() -> None:
    notes: list[str] = []

    async def note() -> None:
        notes.append("late")

    async def quick() -> str:
        return "voice"

    async def refused() -> str:
        raise ValueError("the sample is (nearly) silent")

    assert await awaited_with_note(quick(), after_s=5.0, note=note) == "voice"
    with pytest.raises(ValueError, match="silent"):
        await awaited_with_note(refused(), after_s=5.0, note=note)
    assert notes == []


async def test_a_note_discord_refuses_does_not_stop_the_clone() -> None:
    async def slow() -> str:
        await asyncio.sleep(0.2)
        return "voice"

    async def gone() -> None:
        raise discord.NotFound(_Response(), "Unknown interaction")  # type: ignore[arg-type]

    assert await awaited_with_note(slow(), after_s=0.02, note=gone) == "voice"


class _Response:
    status = 404
    reason = "Not Found"
