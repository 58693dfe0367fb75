"""The client against our engine's voice, LoRA and demo endpoints: real speech, real
training on the tiny image model, real artifacts downloaded through signed URLs."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from bot.tada import NotFound, ServiceUnavailable, TadaClient
from bot.tada.models import TrainingStatus
from engine.settings import JobSettings
from tests.conftest import REFERENCE_VOICE, backend_for, make_settings, running_engine
from tests.engine.image.zips import good_zip
from tests.engine.voice.conftest import SAMPLE_TEXT, wav_bytes
from tests.waiting import CEILING_S, polls

BASE = "http://testserver"
IMAGE = {
    "training": {"steps": 4, "rank": 4, "learning_rate": 1e-2, "batch_size": 2},
    "zip": {"min_side": 32},
    "generation": {"steps": 2},
}


@pytest.fixture
async def me(tmp_path: Path) -> AsyncIterator[TadaClient]:
    """A registered member's client on an engine whose in-process worker runs jobs."""
    settings = make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image=IMAGE,
    )
    async with running_engine(settings) as (_app, api):
        tada = TadaClient(api, base_url=BASE)
        yield tada.with_key((await tada.register("alice@example.com")).api_key)


async def test_voice_clone_speak_list_and_download(me: TadaClient, tmp_path: Path) -> None:
    speech = await asyncio.to_thread(backend_for(REFERENCE_VOICE).base_speech, SAMPLE_TEXT)
    target = await me.create_voice_upload_url("Me", "sample.wav")
    await me.put_upload(target, wav_bytes(speech.audio, speech.sample_rate))

    voice = await me.create_voice(target.upload_id)
    assert voice.name == "Me" and voice.upload_id == target.upload_id
    assert voice.duration_seconds and voice.duration_seconds > 3
    assert [v.id for v in await me.list_voices()] == [voice.id]
    assert (await me.get_voice(voice.id)).id == voice.id

    spoken = await me.generate_voice(voice.id, "Hello from the bot.")
    assert spoken.url and spoken.id
    page = await me.list_voice_generations(voice.id)
    assert page.total == 1 and page.generations[0].text == "Hello from the bot."
    assert (await me.list_all_voice_generations()).total == 1
    one = await me.get_voice_generation(page.generations[0].id)
    assert one.voice_id == voice.id

    audio = tmp_path / "spoken.mp3"
    size = await me.download_to(spoken.url, audio)
    assert size == audio.stat().st_size > 1000
    with pytest.raises(NotFound):
        await me.get_voice("no-such-voice")


async def test_lora_train_generate_list_and_download(me: TadaClient) -> None:
    target = await me.create_lora_upload_url("My set", "tadz", "set.zip")
    await me.put_upload(target, good_zip(4))

    started = await me.start_lora_training(target.upload_id)
    assert started.upload_id == target.upload_id
    assert started.state in (TrainingStatus.STARTING, TrainingStatus.PROCESSING)
    for _ in polls():
        training = await me.get_lora_training(target.upload_id)
        if training.state in (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED):
            break
        await asyncio.sleep(0.05)
    assert training.state is TrainingStatus.SUCCEEDED, training
    assert [t.upload_id for t in await me.list_lora_trainings()] == [target.upload_id]

    image = await me.generate_lora(target.upload_id, "a cat on a sofa")
    assert image.image_url and image.prompt == "a cat on a sofa" and image.enhanced_prompt
    assert image.id is not None
    assert [g.id for g in await me.list_lora_generations(target.upload_id)] == [image.id]
    assert [g.id for g in await me.list_all_lora_generations()] == [image.id]
    assert (await me.get_lora_generation(image.id)).image_url

    png = b"".join([chunk async for chunk in me.iter_download(image.image_url)])
    decoded = await asyncio.to_thread(lambda: Image.open(io.BytesIO(png)).size)
    assert decoded == (image.width, image.height)


async def test_an_unconfigured_demo_says_what_to_configure(me: TadaClient) -> None:
    with pytest.raises(ServiceUnavailable) as caught:
        await me.demo_tadz("a cat")
    assert "[engine.image.demos.tadz]" in caught.value.message
    with pytest.raises(ServiceUnavailable):
        await me.demo_pudgy("a cat")
