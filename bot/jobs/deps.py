"""What the job runner needs from the composition root, and what buttons need of the runner.

Both are protocols so that the arrows point down: :class:`bot.app.BotServices` satisfies
:class:`JobServices` without :mod:`bot.jobs` importing :mod:`bot.app`, and the persistent
buttons (:mod:`bot.jobs.buttons`, rebuilt by discord.py from a custom id on the bot the
composition root built) reach the runner as :class:`JobActions` without importing
:mod:`bot.jobs.runner`, which renders them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import discord

    from bot.accounts import AccountService
    from bot.config import BotConfig
    from bot.gate import Gate
    from bot.jobs.images import ImageOptions
    from bot.jobs.models import Job, JobRequest
    from bot.jobs.store import JobStore
    from bot.metrics import BotMetrics
    from bot.policy import PolicyService
    from bot.readiness import EngineReadiness
    from bot.safety import ImageSafety
    from bot.store import MemberStore, Store
    from bot.tada import TadaClient


class JobServices(Protocol):
    """The long-lived objects a job runner works with (built by ``bot.app.open_services``)."""

    @property
    def config(self) -> BotConfig: ...

    @property
    def store(self) -> Store: ...

    @property
    def members(self) -> MemberStore: ...

    @property
    def tada(self) -> TadaClient: ...

    @property
    def accounts(self) -> AccountService: ...

    @property
    def gate(self) -> Gate: ...

    @property
    def policy(self) -> PolicyService: ...

    @property
    def readiness(self) -> EngineReadiness: ...

    @property
    def metrics(self) -> BotMetrics: ...

    @property
    def safety(self) -> ImageSafety: ...


@runtime_checkable
class JobActions(Protocol):
    """What a button or a modal on a result asks of the bot's job runner."""

    @property
    def services(self) -> JobServices: ...

    @property
    def store(self) -> JobStore: ...

    async def submit(self, interaction: discord.Interaction[Any], request: JobRequest) -> Job:
        """Admit, save, queue and acknowledge ``request``."""
        ...

    def request_like(self, job: Job) -> JobRequest:
        """The same request again."""
        ...

    def speak_request(
        self, voice_id: str, text: str, voice_name: str | None = None, *, play_in: int | None = None
    ) -> JobRequest:
        """Speech with a voice."""
        ...

    def generate_request(
        self,
        lora_id: str,
        prompt: str,
        lora_name: str | None = None,
        *,
        options: ImageOptions | None = None,
    ) -> JobRequest:
        """An image from a LoRA, with its optional controls."""
        ...

    def train_request(self, upload_id: str) -> JobRequest:
        """A training of an uploaded image set."""
        ...
