"""A training's progress message in SimCord, against the real engine (tiny image model): the
validation image the engine draws at a checkpoint shows under it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import simcord
from pydantic import SecretStr

from bot.app import BotServices, create_bot
from bot.config import BotConfig
from bot.jobs import JobKind, JobState, trainings
from bot.safety import ImageSafety
from bot.tada import TadaClient
from bot.tada.models import LoraTraining
from engine.settings import EngineSettings, JobSettings
from tests.bot.conftest import make_bot_config
from tests.bot.safety_world import ScriptedClassifier
from tests.bot.test_demo import DemoChannelGate
from tests.bot.test_lora import good_set, linked
from tests.conftest import make_settings, register
from tests.engine.image.test_lora_api import h, path_of
from tests.waiting import CEILING_S

pytestmark = pytest.mark.simcord(settle_timeout=120)
TRAINING = {"steps": 4, "rank": 4, "learning_rate": 1e-2, "batch_size": 2}
# Checkpoints at steps 2 and 4 draw a validation image each, and the trained LoRA its own
# at the last step (6).
WITH_VALIDATION = {**TRAINING, "steps": 6, "checkpoint_every": 2, "validation_steps": 2}
# What an engine without the extension reports: no validation image, ever.
WITHOUT_VALIDATION = {**TRAINING, "validation_prompt": None}


@pytest.fixture
def engine_settings(tmp_path: Path, request: pytest.FixtureRequest) -> EngineSettings:
    training = getattr(request, "param", WITH_VALIDATION)
    return make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image={"training": training, "zip": {"min_side": 32}, "generation": {"steps": 2}},
    )


@pytest.fixture
def bot_config(tmp_path: Path) -> BotConfig:
    # Every change is shown at once, so each checkpoint's image replaces the one before.
    jobs = {"poll_seconds": 0.05, "post_backoff_seconds": 0.01, "progress_edit_seconds": 0}
    return make_bot_config(tmp_path / "bot", jobs=jobs)


async def _train(env: simcord.Env, services: BotServices, api: httpx.AsyncClient):
    channel, alice = await linked(env, services, api)
    up = await alice.slash(
        channel, "lora upload", name="Cats", trigger_word="tadz", images=("set.zip", good_set())
    )
    trained = await alice.click(up.followups[-1], label="Train")
    runner = env.bot.jobs  # type: ignore[attr-defined]
    [job] = await runner.store.for_member(alice.id)
    assert job.kind is JobKind.LORA_TRAIN and job.state is JobState.FINISHED
    if job.private:  # the progress is the member's private note
        progress = trained.response
    else:
        progress = next(m for m in channel.history() if m.id == job.progress_message_id)
    assert progress is not None and "Status: ✅ done" in progress.content
    return alice, job, progress


async def _drawn(services: BotServices, api: httpx.AsyncClient, member_id: int, upload_id: str):
    """The engine's own answer: the latest validation image's step and bytes."""
    account = await services.members.get(member_id)
    assert account is not None
    key = account.api_key.get_secret_value()
    status = (await api.get(f"/api/loras/trainings/{upload_id}", headers=h(key))).json()
    drawn = await api.get(path_of(status["validation_image_url"]))
    assert drawn.status_code == 200
    return status["validation_step"], drawn.content


async def test_the_progress_message_shows_the_latest_validation_image(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    alice, job, progress = await _train(simcord_env, services, api)

    # The trained LoRA's own image (its last step) replaced the checkpoints': one embed,
    # one attachment.
    [embed] = progress.embeds
    assert embed.description == "Validation image, step 6"
    [attached] = progress.attachments
    assert attached.filename == "validation.png"
    assert embed.image is not None and "validation.png" in str(embed.image.url)
    # The very image the engine drew at that step, fetched by the bot and attached.
    step, drawn = await _drawn(services, api, alice.id, str(job.tada_id))
    assert step == 6
    assert await attached.read() == drawn
    _ = simcord_env.errors


async def test_each_validation_image_is_fetched_once(
    simcord_env: simcord.Env,
    services: BotServices,
    api: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fetched: list[int | None] = []
    steps_seen: list[int | None] = []
    real_fetch = TadaClient.iter_download
    real_status = TadaClient.get_lora_training

    def counting(self: TadaClient, url: str, **kwargs: object):  # type: ignore[no-untyped-def]
        if "validation" in url:  # the step of the poll that asked for it
            fetched.append(steps_seen[-1])
        return real_fetch(self, url, **kwargs)  # type: ignore[arg-type]

    async def watching(self: TadaClient, upload_id: str) -> LoraTraining:
        training = await real_status(self, upload_id)
        steps_seen.append(training.validation_step)
        return training

    monkeypatch.setattr(TadaClient, "iter_download", counting)
    monkeypatch.setattr(TadaClient, "get_lora_training", watching)

    await _train(simcord_env, services, api)

    # Polled every 50 ms and edited at each change, but at most one download per validation
    # image (a checkpoint drawn and replaced between two polls, on a fast machine or a slow
    # poll on a loaded one, is never seen, so never fetched), and the trained LoRA's own.
    distinct = {step for step in steps_seen if step is not None}
    assert len(steps_seen) > len(distinct), "each image was polled more than once"
    assert fetched == sorted(set(fetched)), (fetched, steps_seen)  # never the same one twice
    assert fetched[-1] == 6, (fetched, steps_seen)
    _ = simcord_env.errors


async def test_a_validation_image_over_the_limit_is_left_out(
    simcord_env: simcord.Env,
    services: BotServices,
    api: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trainings, "VALIDATION_IMAGE_LIMIT", 100)

    _, _, progress = await _train(simcord_env, services, api)

    # The training is followed to its end all the same, in text.
    assert progress.embeds == [] and progress.attachments == []
    _ = simcord_env.errors


async def test_a_private_training_shows_the_image_in_the_members_note(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    gate = DemoChannelGate(0, SecretStr(await register(api, "server@example.com")))
    await simcord_env.restart_bot(create_bot(replace(services, gate=gate)))

    alice, job, progress = await _train(simcord_env, services, api)

    assert job.private and progress.ephemeral
    [embed] = progress.embeds
    assert embed.description == "Validation image, step 6"
    [attached] = progress.attachments
    assert await attached.read() == (await _drawn(services, api, alice.id, str(job.tada_id)))[1]
    _ = simcord_env.errors


async def test_a_validation_image_judged_explicit_is_left_out(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    classifier = ScriptedClassifier()
    safe = replace(services, safety=ImageSafety(classifier))
    await simcord_env.restart_bot(create_bot(safe))

    _, _, progress = await _train(simcord_env, safe, api)

    # Every image the training drew (both checkpoints' and the finished LoRA's own) was
    # classified, none shown; the progress is text.
    assert classifier.seen == 3
    assert progress.embeds == [] and progress.attachments == []
    _ = simcord_env.errors


@pytest.mark.parametrize("engine_settings", [WITHOUT_VALIDATION], indirect=True)
async def test_without_a_validation_image_the_progress_is_text_only(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    _, _, progress = await _train(simcord_env, services, api)

    assert progress.embeds == [] and progress.attachments == []
    _ = simcord_env.errors


def test_an_integer_progress_is_a_percentage_even_at_one() -> None:
    from bot.jobs.render import progress_fraction

    def fraction(progress: object) -> float:
        return progress_fraction(
            LoraTraining.model_validate({"status": "processing", "progress": progress})
        )

    # Our engine sends an integer percentage: 1 is 1% (early in a long training), not done.
    assert fraction(1) == 0.01 and fraction(50) == 0.5 and fraction(100) == 1.0
    # Others send a fraction, or a percentage as a float.
    assert fraction(0.5) == 0.5 and fraction(1.0) == 1.0 and fraction(42.0) == 0.42


def test_the_hosted_training_status_has_no_validation_fields() -> None:
    # The hosted API's shape: the engine extension's fields are simply absent.
    training = LoraTraining.model_validate(
        {"id": "lora_1", "upload_id": "up_1", "status": "processing", "progress": 0.5}
    )
    assert training.validation_image_url is None and training.validation_step is None
