"""``/lora`` as a member uses it, in SimCord, against the real engine (tiny image model)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import simcord
from PIL import Image
from pydantic import SecretStr

from bot.app import BotServices, create_bot
from bot.config import BotConfig
from bot.jobs import Destination, JobKind, JobState
from bot.store import LinkedVia
from engine.settings import EngineSettings, JobSettings
from tests.bot.conftest import make_bot_config
from tests.bot.media_samples import picture, zip_of
from tests.bot.mentions import assert_pings_at_most
from tests.conftest import make_settings, register
from tests.waiting import CEILING_S, polls

pytestmark = pytest.mark.simcord(settle_timeout=120)
IMAGE = {
    "training": {"steps": 4, "rank": 4, "learning_rate": 1e-2, "batch_size": 2},
    "zip": {"min_side": 32},
    "generation": {"steps": 2},
}


@pytest.fixture
def engine_settings(tmp_path: Path) -> EngineSettings:
    return make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image=IMAGE,
    )


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    return make_bot_config(
        tmp_path / "bot", jobs={"poll_seconds": 0.05, "post_backoff_seconds": 0.01}
    )


async def linked(env: simcord.Env, services: BotServices, api: httpx.AsyncClient):
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    key = await register(api, "alice@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)
    return channel, alice


def good_set() -> bytes:
    return zip_of({f"img{i}.jpg": picture(i) for i in range(4)})


async def test_zip_upload_train_progress_mention_generate(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)

    up = await alice.slash(
        channel, "lora upload", name="Cats", trigger_word="tadz", images=("set.zip", good_set())
    )
    sheet = up.followups[-1]
    assert "4 image(s) uploaded" in sheet.content
    assert sheet.attachments[0].filename == "contact-sheet.png"

    trained = await alice.click(sheet, label="Train")
    # The progress message was posted in the channel and edited to its final state.
    runner = simcord_env.bot.jobs  # type: ignore[attr-defined]
    [job] = await runner.store.for_member(alice.id)
    assert job.kind is JobKind.LORA_TRAIN and job.state is JobState.FINISHED
    progress = next(m for m in channel.history() if m.id == job.progress_message_id)
    assert "Status: ✅ done" in progress.content and "100%" in progress.content
    assert "Elapsed" in progress.content
    # The result mentions the member, with a Generate button.
    result = trained.followups[-1]
    assert alice.mention in result.content and "is trained" in result.content
    assert "`tadz`" in result.content

    shown = await alice.click(result, label="Generate")
    assert shown.modal is not None
    made = await alice.submit_modal(shown, {"prompt": "a cat on a sofa @everyone"})
    image_post = made.followups[-1]
    embed = image_post.embeds[0]
    # Titled by the LoRA's name (the button gave only its id); the test model is named.
    assert embed.title == "🎨 Cats"
    assert "no real image model" in image_post.content
    assert "a cat on a sofa" in (embed.description or "")
    assert embed.fields and embed.fields[0].name == "Enhanced prompt"
    [png] = image_post.attachments
    with Image.open(__import__("io").BytesIO(await png.read())) as decoded:
        assert decoded.width > 0

    # The member's lists: sets with their training state, a training's status, images.
    upload_id = job.tada_id
    listed = await alice.slash(channel, "lora list")
    assert listed.response is not None
    assert f"**Cats** `{upload_id}` trigger `tadz`: succeeded" in listed.response.content
    status = await alice.slash(channel, "lora status", upload=upload_id)
    assert status.response is not None and "**succeeded** (100%)" in status.response.content
    gallery = await alice.slash(channel, "lora gallery")
    assert gallery.ephemeral and gallery.response is not None
    assert "a cat on a sofa" in gallery.response.content
    # Links, never previews: the images of a key's API use were not classified by this bot.
    urls = [w for w in gallery.response.content.split() if "http" in w]
    assert urls and all(u.startswith("<http") and u.endswith(">") for u in urls), urls
    choices = await alice.autocomplete(channel, "lora generate", "lora", "ca")
    assert [c["value"] for c in choices] == [upload_id]

    # Re-roll asks again with the same prompt; Delete (owner only) removes the post.
    rerolled = await alice.click(image_post, label="Re-roll")
    assert rerolled.followups[-1].attachments
    bob = channel_guild_member(simcord_env, "bob")
    refused = await bob.click(image_post, label="Delete")
    assert refused.ephemeral
    await alice.click(image_post, label="Delete")
    assert image_post.id not in [m.id for m in channel.history()]
    # Progress posts and edits, results, prompts and enhanced prompts: nobody else pinged.
    assert assert_pings_at_most(simcord_env, {alice.id}) >= 8
    _ = simcord_env.errors


def channel_guild_member(env: simcord.Env, name: str) -> simcord.MemberActor:
    return env.guild.add_member(env.create_user(name))


async def test_image_attachments_are_zipped_upright_without_duplicates_or_small_ones(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    up = await alice.slash(
        channel,
        "lora upload-images",
        name="Mixed",
        trigger_word="tadz",
        image1=("a.jpg", picture(1, (400, 300), exif_rotate=True)),
        image2=("b.jpg", picture(2)),
        image3=("b-again.jpg", picture(2)),
        image4=("tiny.jpg", picture(3, (100, 100))),
        image5=("notes.txt", b"not an image"),
        image6=("c.jpg", picture(4)),
        image7=("d.jpg", picture(5)),
    )
    sheet = up.followups[-1]
    assert "4 image(s) uploaded" in sheet.content
    assert "`b-again.jpg`: duplicate" in sheet.content
    assert "`tiny.jpg`: too small (100x100" in sheet.content
    assert "`notes.txt`: not an image file" in sheet.content


@pytest.mark.parametrize(
    ("file_name", "data", "expected"),
    [
        ("set.rar", b"x", "is not a zip"),
        ("set.zip", b"not a zip at all", "not a readable zip"),
        ("set.zip", zip_of({"tiny.png": picture(1, (64, 64))}), "too small"),
        # Passes the bot's own checks; the engine refuses it when it is uploaded.
        (
            "set.zip",
            zip_of({"a.jpg": picture(1), "b.jpg": picture(2)}),
            "at least 4 are needed",
        ),
    ],
)
async def test_bad_zips_are_answered_ephemerally(
    simcord_env: simcord.Env,
    services: BotServices,
    api: httpx.AsyncClient,
    file_name: str,
    data: bytes,
    expected: str,
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    up = await alice.slash(
        channel, "lora upload", name="Bad", trigger_word="t", images=(file_name, data)
    )
    texts = [m.content for m in ([up.response] if up.response else []) + up.followups]
    assert any(expected in t for t in texts), texts
    assert up.ephemeral
    assert channel.last_message is None
    _ = simcord_env.errors


async def test_a_restart_during_training_still_posts_the_result(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    up = await alice.slash(
        channel, "lora upload", name="Cats", trigger_word="tadz", images=("set.zip", good_set())
    )
    upload_id = up.followups[-1].components[0]["components"][0]["custom_id"].split(":")[-1]
    # Polls a minute apart, past the settle deadline: between two polls the watcher is
    # parked, so the bot can be restarted in the middle of the training.
    simcord_env.settle_timeout = 20
    slow = replace(
        services,
        config=services.config.model_copy(
            update={"jobs": services.config.jobs.model_copy(update={"poll_seconds": 60})}
        ),
    )
    await simcord_env.restart_bot(create_bot(slow))
    await alice.slash(channel, "lora train", upload=upload_id)
    store = simcord_env.bot.jobs.store  # type: ignore[attr-defined]
    [job] = await store.for_member(alice.id)
    assert job.state is JobState.RUNNING and job.tada_id == upload_id
    assert job.progress_message_id is not None

    # A new process: it finds the training in the store and watches it again.
    await simcord_env.restart_bot(create_bot(slow))
    store = simcord_env.bot.jobs.store  # type: ignore[attr-defined]
    for _ in polls():  # the engine trains in its own thread, in real time
        job = await store.get(job.id)
        if job.posted:
            break
        await asyncio.sleep(0.2)
        await simcord_env.advance_time(60)  # the watcher's next poll
    # Through the interaction's token kept on the row while it is valid, else the channel
    # (advancing the clock may expire it): either way in the channel, exactly once.
    assert job.state is JobState.FINISHED
    assert job.posted_via in (Destination.INTERACTION, Destination.CHANNEL)
    assert sum("is trained" in m.content for m in channel.history()) == 1
    posted = channel.last_message
    assert posted is not None and alice.mention in posted.content
    assert "is trained" in posted.content
    progress = next(m for m in channel.history() if m.id == job.progress_message_id)
    assert "✅ done" in progress.content
    # Its Generate button works in the new process (a persistent view).
    shown = await alice.click(posted, label="Generate")
    assert shown.modal is not None


@pytest.mark.parametrize(
    ("name", "trigger_word"), [("Nude cats", "tadz"), ("Cats", "nude")], ids=["name", "word"]
)
async def test_upload_names_and_trigger_words_are_moderated(
    simcord_env: simcord.Env,
    services: BotServices,
    api: httpx.AsyncClient,
    name: str,
    trigger_word: str,
) -> None:
    channel, alice = await linked(simcord_env, services, api)

    up = await alice.slash(
        channel, "lora upload", name=name, trigger_word=trigger_word, images=("set.zip", good_set())
    )

    shown = [m.content for m in [up.response, *up.followups] if m is not None]
    assert any("nude" in t.lower() for t in shown), shown
    account = await services.members.get(alice.id)
    assert account is not None
    assert await services.tada.with_key(account.api_key).list_lora_uploads() == []
    _ = simcord_env.errors


async def test_a_training_that_cannot_be_followed_ends_its_progress_message(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    channel, alice = await linked(simcord_env, services, api)
    up = await alice.slash(
        channel, "lora upload", name="Cats", trigger_word="tadz", images=("set.zip", good_set())
    )
    upload_id = up.followups[-1].components[0]["components"][0]["custom_id"].split(":")[-1]
    simcord_env.settle_timeout = 20
    slow = replace(
        services,
        config=services.config.model_copy(
            update={"jobs": services.config.jobs.model_copy(update={"poll_seconds": 60})}
        ),
    )
    await simcord_env.restart_bot(create_bot(slow))
    await alice.slash(channel, "lora train", upload=upload_id)
    store = simcord_env.bot.jobs.store  # type: ignore[attr-defined]
    [job] = await store.for_member(alice.id)
    assert job.progress_message_id is not None
    # Alice links another account: the training is not one of hers any more.
    other = await register(api, "alice-new@example.com")
    await services.members.save(alice.id, SecretStr(other), via=LinkedVia.LINK)
    for _ in range(50):
        await simcord_env.advance_time(60)
        job = await store.get(job.id)
        if job.posted:
            break
    assert job.state is JobState.FAILED
    progress = next(m for m in channel.history() if m.id == job.progress_message_id)
    assert "Status: training" not in progress.content and "❌" in progress.content
    _ = simcord_env.errors
