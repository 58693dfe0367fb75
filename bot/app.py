"""The composition root: every long-lived object is built here, passed by keyword, and
closed in order (bot, HTTP client, embedded engine, store).

``open_services`` builds what the bot needs; ``create_bot`` builds the ``commands.AutoShardedBot``
around it; ``run_bot`` ties them to a Discord token. Tests and the sandbox build the same
objects with a temporary data directory and an in-process engine.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
import httpx
from discord import app_commands
from discord.ext import commands
from discord.utils import MISSING
from pydantic import SecretStr

from bot.accounts import AccountService
from bot.config import BotConfig
from bot.crypto import KeyBox, keybox_for
from bot.embedded import EmbeddedEngine
from bot.gate import Gate
from bot.installs import everywhere, keep_server_commands_in_servers
from bot.jobs import JobRunner
from bot.jobs.buttons import PERSISTENT_BUTTONS
from bot.jobs.panel import JobPanel
from bot.metrics import BotMetrics
from bot.policy import PolicyGate, PolicyService, PolicyStore
from bot.readiness import EngineReadiness
from bot.safety import ImageSafety, build_classifier
from bot.store import MemberStore, Store
from bot.tada import TadaClient
from bot.trace import SpeechTracer
from bot.translations import CommandTranslator
from bot.ui import TadaCommandTree
from bot.voice_channel import VoiceChannelPlayer

if TYPE_CHECKING:
    from engine.settings import EngineSettings

log = logging.getLogger(__name__)

# The cogs loaded as extensions, in order. A new command group adds its module here.
EXTENSIONS: tuple[str, ...] = (
    "cogs.account",
    "cogs.voice",
    "cogs.lora",
    "cogs.demo",
    "cogs.admin",
    "cogs.quota",
    "cogs.jobs",
)


@dataclass(frozen=True)
class BotServices:
    """Everything cogs need, built by :func:`open_services`."""

    config: BotConfig
    store: Store
    members: MemberStore
    tada: TadaClient
    accounts: AccountService
    # Admission control for creation commands: the admin policy's gate (tests may swap it).
    gate: Gate
    # Server admins' settings, shared keys and usage (``/tada-admin``, ``/quota``).
    policy: PolicyService
    # Every generated image is classified before it is posted (``[safety]``).
    safety: ImageSafety = field(default_factory=lambda: ImageSafety(None))
    engine: EmbeddedEngine | None = None
    # What the engine lacks (no demo model, the random test model), for admins.
    readiness: EngineReadiness = field(default_factory=EngineReadiness)
    # This process's Prometheus metrics (its own registry; served on [metrics] port).
    metrics: BotMetrics = field(default_factory=BotMetrics)
    # ``/tada-admin trace``: the engine's operator token, and the job records.
    tracer: SpeechTracer | None = None


def _http_client(config: BotConfig) -> httpx.AsyncClient:
    tada = config.tada
    return httpx.AsyncClient(
        timeout=httpx.Timeout(tada.timeout_seconds, connect=tada.connect_timeout_seconds),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        headers={"User-Agent": "tada-discord-bot/0.1"},
        follow_redirects=True,
    )


def embedded_engine_settings(
    config: BotConfig, config_path: Path | None = None
) -> EngineSettings | None:
    """The embedded engine's settings (``[engine]`` of the same config file), ``None`` when
    the bot talks to an outside Ta-da API. The one place bot/ reads them."""
    if not config.tada.embedded:
        return None
    from engine.settings import load_engine_settings

    return load_engine_settings(config_path)


@asynccontextmanager
async def open_services(
    config: BotConfig,
    *,
    http: httpx.AsyncClient | None = None,
    base_url: str | None = None,
    engine_settings: EngineSettings | None = None,
    keys: KeyBox | None = None,
    safety: ImageSafety | None = None,
) -> AsyncIterator[BotServices]:
    """Build the store, the Ta-da client and (embedded mode) the engine; close them after.

    ``http`` and ``base_url`` replace the network client and the configured API (tests pass
    a client over ``httpx.ASGITransport`` to the engine app). ``engine_settings`` is used
    in embedded mode; by default it is read from the same config file. ``safety``
    replaces the image classifier ``[safety]`` names (tests inject a scripted one).
    """
    async with AsyncExitStack() as stack:
        metrics = BotMetrics()
        if config.metrics.port is not None:
            metrics.serve(config.metrics.host, config.metrics.port)
            stack.callback(metrics.close)
        store = Store(config.database_url)
        stack.push_async_callback(store.close)
        await store.migrate()
        box = keys if keys is not None else await asyncio.to_thread(keybox_for, config)
        engine: EmbeddedEngine | None = None
        operator_token = config.tada.operator_token
        if base_url is None:
            if config.tada.embedded:
                if engine_settings is None:
                    engine_settings = embedded_engine_settings(config)
                assert engine_settings is not None  # config.tada.embedded
                if engine_settings.trace.operator_token is None:
                    # The bot is its embedded engine's operator: a token of this run's own,
                    # so that /tada-admin trace works with no set-up.
                    trace = engine_settings.trace.model_copy(
                        update={"operator_token": SecretStr(secrets.token_urlsafe(32))}
                    )
                    engine_settings = engine_settings.model_copy(update={"trace": trace})
                operator_token = engine_settings.trace.operator_token
                engine = EmbeddedEngine(engine_settings)
                await stack.enter_async_context(engine)
                base_url = engine.base_url
            else:
                base_url = config.tada.base_url
        if http is None:
            http = await stack.enter_async_context(_http_client(config))
        tada = TadaClient(
            http,
            base_url=base_url,
            retry=config.tada.retry_policy(),
            timeout=httpx.Timeout(
                config.tada.timeout_seconds, connect=config.tada.connect_timeout_seconds
            ),
            transfer_timeout=httpx.Timeout(
                config.tada.transfer_timeout_seconds, connect=config.tada.connect_timeout_seconds
            ),
            offer_ttl=config.tada.offer_ttl_seconds,
        )
        if safety is None:
            safety = ImageSafety(await asyncio.to_thread(build_classifier, config.safety))
        members = MemberStore(store, box)
        policy_store = PolicyStore(store)
        gate = PolicyGate(policy_store, box)
        yield BotServices(
            config=config,
            store=store,
            members=members,
            tada=tada,
            accounts=AccountService(members, tada),
            engine=engine,
            tracer=SpeechTracer(tada, store, operator_token),
            gate=gate,
            policy=PolicyService(policy_store, box, tada, gate),
            safety=safety,
            readiness=(
                EngineReadiness.of_embedded(engine_settings)
                if engine is not None and engine_settings is not None
                else EngineReadiness()
            ),
            metrics=metrics,
        )


class TadaBot(commands.AutoShardedBot):
    """The Discord bot: slash commands only; services come in by keyword.

    Sharded (``[discord] shard_count`` / ``shard_ids``): one process runs some or all of
    the shards, and runs and posts the jobs of its shards' guilds (it has their cache and
    voice connections); a dead process's jobs wait for the next process on its shards
    (its restart takes them back at once); see :mod:`bot.jobs.runner`.
    """

    def __init__(
        self,
        *,
        services: BotServices,
        extensions: Sequence[str] = EXTENSIONS,
        intents: discord.Intents | None = None,
        translator: app_commands.Translator | None = None,
    ) -> None:
        shards = services.config.discord
        # With user installs on, every command defaults to both installs and every context;
        # off, nothing is sent and Discord keeps its defaults (a server install).
        installs, contexts = everywhere() if shards.user_installs else (MISSING, MISSING)
        super().__init__(
            allowed_installs=installs,
            allowed_contexts=contexts,
            shard_count=shards.shard_count,
            # None: every shard (discord.py's default for AutoShardedBot).
            shard_ids=list(shards.shard_ids) if shards.shard_ids is not None else None,  # type: ignore[arg-type]
            command_prefix=commands.when_mentioned,
            intents=intents or discord.Intents.default(),
            tree_cls=TadaCommandTree,
            help_command=None,
            # Members' text (spoken text, prompts, names) is in many of the bot's messages:
            # by default nothing pings; a message that means to ping its requester says so.
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.services = services
        # Read by the central error handler (refusals) through the interaction's client.
        self.metrics = services.metrics
        self.extension_names = tuple(extensions)
        # Command names and descriptions in the members' languages (installed in setup_hook).
        self.command_translator = translator or CommandTranslator()
        # Speech played in voice channels (``/voice say``), a queue per guild.
        self.voice_player = VoiceChannelPlayer(self)
        # Members' requests: run fairly, posted where asked, resumed after a restart.
        self.jobs = JobRunner(client=self, services=services, player=self.voice_player)
        # ``/jobs``: a member's queue and recent results, cancelling what has not started.
        self.job_panel = JobPanel(self.jobs, gate=services.gate)
        # The admin policy reads the bot's cache (thread parents, the bot's own channel
        # permissions) whichever cogs are loaded.
        services.policy.gate.bind(self)

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """Count every interaction (discord.py dispatches it before handling it)."""
        self.metrics.interaction(interaction)

    async def setup_hook(self) -> None:
        """Load the cogs, resume jobs, then sync slash commands (instantly to a dev guild)."""
        await self.tree.set_translator(self.command_translator)
        for name in self.extension_names:
            await self.load_extension(name)
        if self.services.config.discord.user_installs:
            kept = keep_server_commands_in_servers(self.tree)
            log.info("user installs on; kept in servers only: %s", ", ".join(kept))
        # Buttons on results posted by any earlier run keep working.
        self.add_dynamic_items(*PERSISTENT_BUTTONS)
        await self.jobs.start()
        discord_config = self.services.config.discord
        if not discord_config.sync_commands:
            return
        if discord_config.dev_guild_id:
            guild = discord.Object(id=discord_config.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d command(s) to guild %s", len(synced), guild.id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d global command(s) (may take up to an hour to show)", len(synced))

    async def close(self) -> None:
        """Stop the job runner (its rows keep the state), then disconnect."""
        await self.jobs.stop()
        await self.voice_player.close()
        await super().close()


def create_bot(services: BotServices, *, extensions: Sequence[str] = EXTENSIONS) -> TadaBot:
    """The bot around ``services``."""
    return TadaBot(services=services, extensions=extensions)


async def run_bot(config: BotConfig, *, config_path: Path | None = None) -> None:
    """Run until Discord disconnects or the process is interrupted; close in order."""
    if config.discord.token is None:
        raise ValueError("run_bot needs config.discord.token")
    engine_settings = embedded_engine_settings(config, config_path)
    async with open_services(config, engine_settings=engine_settings) as services:
        bot = create_bot(services)
        async with bot:
            await bot.start(config.discord.token.get_secret_value())
