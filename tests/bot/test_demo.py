"""``/demo`` in SimCord against the engine's demo models (LoRAs trained on the tiny base)."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import simcord
from PIL import Image
from pydantic import SecretStr

from bot.app import BotServices, TadaBot, create_bot
from bot.gate import Admission, Feature, GateRequest
from bot.jobs import Destination, JobKind, JobState
from bot.store import LinkedVia
from bot.store.models import utcnow
from engine.image.pipeline import ImageModel
from engine.image.settings import ImageSettings
from engine.image.types import TrainImage
from engine.settings import EngineSettings, JobSettings
from tests.bot.media_samples import picture
from tests.conftest import make_settings, register
from tests.waiting import CEILING_S

pytestmark = pytest.mark.simcord(settle_timeout=120)


@pytest.fixture(scope="module")
def demo_loras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two demo LoRAs trained on the tiny base, as an operator would train them."""
    model = ImageModel.from_settings(ImageSettings())
    out = tmp_path_factory.mktemp("demos")
    loras = {}
    for n, (name, word) in enumerate((("tadz", "tadz"), ("pudgy", "pudgy penguin"))):
        examples = [
            TrainImage(Image.open(io.BytesIO(picture(i + 5 * n))).convert("RGB"), word)
            for i in range(3)
        ]
        loras[name] = out / f"{name}.safetensors"
        model.train_lora(examples, loras[name], rank=4, steps=4, learning_rate=1e-2, seed=n)
    return loras


@pytest.fixture
def engine_settings(tmp_path: Path, demo_loras: dict[str, Path]) -> EngineSettings:
    return make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image={
            "generation": {"steps": 2},
            "demos": {
                "tadz": {"lora_path": str(demo_loras["tadz"]), "trigger_word": "tadz"},
                "pudgy": {
                    "lora_path": str(demo_loras["pudgy"]),
                    "trigger_word": "pudgy penguin",
                },
            },
        },
    )


class DemoChannelGate:
    """A gate as a server would configure it: one community demo channel with a shared
    key, results shown privately everywhere else (the admin policy does the same)."""

    def __init__(self, demo_channel: int, shared_key: SecretStr) -> None:
        self.demo_channel = demo_channel
        self.shared_key = shared_key
        self.recorded: list[GateRequest] = []

    async def admit(self, request: GateRequest) -> Admission:
        if request.feature is Feature.DEMO and request.channel_id == self.demo_channel:
            return Admission(shared_key=self.shared_key)
        return Admission(private_results=True)

    async def record(self, request: GateRequest, *, job_id: str | None = None) -> None:
        self.recorded.append(request)

    async def settle(self, job_id: str, *, delivered: bool) -> None:
        return None


@pytest.fixture
async def gate(api: httpx.AsyncClient) -> DemoChannelGate:
    return DemoChannelGate(0, SecretStr(await register(api, "server@example.com")))


@pytest.fixture
def simcord_bot(services: BotServices, gate: DemoChannelGate) -> TadaBot:
    return create_bot(replace(services, gate=gate))


async def test_demo_in_the_demo_channel_uses_the_shared_key_and_posts_both_prompts(
    simcord_env: simcord.Env, gate: DemoChannelGate
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("demo")
    gate.demo_channel = channel.id
    carol = guild.add_member(simcord_env.create_user("carol"))  # no Ta-da account

    result = await carol.slash(channel, "demo pudgy", prompt="on a beach")

    posted = result.followups[-1]
    assert not posted.ephemeral and carol.mention in posted.content
    embed = posted.embeds[0]
    assert embed.title == "Pudgy demo" and "on a beach" in (embed.description or "")
    assert embed.fields[0].name == "Enhanced prompt"
    assert embed.fields[0].value.startswith("pudgy penguin, on a beach")
    [image] = posted.attachments
    with Image.open(io.BytesIO(await image.read())) as decoded:
        assert decoded.width > 0
    assert [r.channel_id for r in gate.recorded] == [channel.id]
    [job] = await simcord_env.bot.jobs.store.for_member(carol.id)  # type: ignore[attr-defined]
    assert job.has_shared_key and job.state is JobState.FINISHED
    # The acknowledgement says "Done" only now that the outcome is known to be a success.
    assert result.response is not None and "Done" in result.response.content


async def test_private_results_go_to_the_member_only(
    simcord_env: simcord.Env, services: BotServices, api: httpx.AsyncClient
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    key = await register(api, "alice@example.com")
    await services.members.save(alice.id, SecretStr(key), via=LinkedVia.LINK)

    result = await alice.slash(channel, "demo tadz", prompt="a cat")

    assert result.ephemeral
    posted = result.followups[-1]
    assert posted.ephemeral and posted.attachments
    assert channel.history(viewer=guild.add_member(simcord_env.create_user("bob"))) == []
    [job] = await simcord_env.bot.jobs.store.for_member(alice.id)  # type: ignore[attr-defined]
    assert job.private and job.posted_via is Destination.INTERACTION


async def test_a_demo_cut_off_by_a_restart_is_posted_as_interrupted_with_retry(
    simcord_env: simcord.Env, services: BotServices, gate: DemoChannelGate
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("demo")
    gate.demo_channel = channel.id
    carol = guild.add_member(simcord_env.create_user("carol"))
    # What a crash leaves: the row says the Ta-da call was in flight.
    store = simcord_env.bot.jobs.store  # type: ignore[attr-defined]
    job = await store.create(
        user_id=carol.id,
        guild_id=guild.id,
        channel_id=channel.id,
        kind=JobKind.DEMO_GENERATE,
        params={"model": "tadz", "prompt": "a cat"},
        shared_key=gate.shared_key,
    )
    await store.update(job.id, state=JobState.RUNNING, started_at=utcnow())

    await simcord_env.restart_bot(create_bot(replace(services, gate=gate)))
    await simcord_env.settle()

    job = await store.get(job.id)
    assert job.state is JobState.INTERRUPTED and job.posted_via is Destination.CHANNEL
    notice = channel.last_message
    assert notice is not None and "interrupted" in notice.content
    assert carol.mention in notice.content
    retried = await carol.click(notice, label="Retry")
    assert retried.followups[-1].attachments
    assert retried.followups[-1].embeds[0].title == "Tadz demo"
