"""The sandbox: our real bot (the same composition root, cogs, store and engine) inside a
simulated Discord, shown in the browser by SimCord's preview. ``tada-bot`` starts it when
no Discord token is set, so anyone can try every slash command without Discord.

What is real: the bot, every cog :data:`bot.app.EXTENSIONS` loads, its store and the
embedded engine, all in the data directory, so accounts, voices, LoRAs and jobs persist
between runs. What is simulated: Discord itself. SimCord keeps the guild, its channels
and its messages in memory, so the message history starts empty on every run; the guild,
the member at the keyboard and the channels are rebuilt in the same order, before the bot
starts, and so keep the same ids (checked against ``<data_dir>/sandbox.json``), which is
what lets the bot's store recognise the member again.

SimCord's preview shows one channel per session. :class:`Sandbox` serves the sandbox's
channels one at a time at the same address and access token: ``/sandbox channel`` (a
command only the sandbox loads) switches, then the page is reloaded.

The page never waits for the bot's long work (:class:`AnsweredSettlement`): a browser
action ends once the bot has answered the interaction it sent, as on Discord, and what the
bot does next (a training's progress edits, a result) reaches the page as it polls
(:class:`LivePublication`). The simulated clock follows the wall clock once the world is
built (:func:`follow_wall_clock`), so times the bot keeps (jobs) and times Discord shows
agree.

SimCord has no public API for a long-lived preview, so a few of its internals are used
(the preview's capability token, server and publication hooks, the Env's current
operation, settlement and clock); ``simcord[preview]`` is pinned to the exact version, and
tests/sandbox breaks on an upgrade that changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import discord

from bot.app import EXTENSIONS, create_bot, embedded_engine_settings, open_services
from bot.config import BotConfig

if TYPE_CHECKING:
    import simcord
    from simcord.preview import Preview

    from bot.app import TadaBot
    from engine.settings import EngineSettings

log = logging.getLogger(__name__)

# The state of the simulated world kept between runs (ids and the access token).
STATE_FILE = "sandbox.json"
# How long a browser action may wait for the bot to answer the interaction it sent (Discord
# itself gives a bot 3 s; a loaded machine may take longer) before the page shows it as not
# completed. Answered interactions end the action at once: see AnsweredSettlement.
ACTION_SETTLE_SECONDS = 120.0
# After its answer, how long a browser action still waits for the bot's quick work (the
# "accepted" edit after a deferral) before it ends and the page polls for the rest.
ANSWERED_GRACE_SECONDS = 0.3
# How long the page keeps showing the old channel after /sandbox channel answered.
SWITCH_GRACE_SECONDS = 1.0
# The sandbox's own commands (``/sandbox channel``), and the cog that keeps their requests.
SANDBOX_EXTENSION = "cogs.sandbox"
SANDBOX_COG = "SandboxCog"


class SandboxChannel(StrEnum):
    """The channels of the sandbox guild."""

    # An ordinary text channel where members use the commands.
    GENERAL = "general"
    # The community demo channel: /demo tadz and /demo pudgy show the product off there.
    DEMO = "tadz-demo"


# What the page tells about commands that need what a simulated Discord lacks.
GENERAL_TOPIC = (
    "Try the Ta-da commands here. /voice say needs a voice channel, which the sandbox does not "
    "have: /voice speak posts the speech here instead."
)
BOT_NAME = "Ta-da"
GUILD_NAME = "Ta-da Sandbox"
ADMIN_ROLE = "Server Admin"
MEMBER_NAME = "you"
OTHER_MEMBER_NAME = "a-member"


class SandboxError(RuntimeError):
    """The sandbox cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class SandboxIds:
    """The ids of the simulated world; the same on every run (SimCord's ids are
    deterministic when the world is built in the same order)."""

    guild: int
    member: int
    admin_role: int
    channels: dict[str, int]


@dataclass(frozen=True)
class SandboxState:
    """What ``<data_dir>/sandbox.json`` keeps: the world's ids and the access token."""

    ids: SandboxIds
    access_token: str

    @classmethod
    def load(cls, path: Path) -> SandboxState | None:
        """The saved state, or ``None`` on a first run (or an unreadable file)."""
        try:
            raw = json.loads(path.read_text())
            ids = raw["ids"]
            return cls(
                ids=SandboxIds(
                    guild=int(ids["guild"]),
                    member=int(ids["member"]),
                    admin_role=int(ids["admin_role"]),
                    channels={str(k): int(v) for k, v in ids["channels"].items()},
                ),
                access_token=str(raw["access_token"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return None

    def save(self, path: Path) -> None:
        """Write the state (mode 0600: the access token drives the sandbox)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)


@dataclass(frozen=True)
class SandboxWorld:
    """The simulated guild and who is in it."""

    guild: simcord.GuildHandle
    admin_role: simcord.RoleHandle
    member: simcord.MemberActor
    # A member without the admin role: "Viewing as" in the page switches to them.
    other: simcord.MemberActor
    channels: dict[SandboxChannel, simcord.ChannelHandle]

    @property
    def ids(self) -> SandboxIds:
        """The world's ids, as saved between runs."""
        return SandboxIds(
            guild=self.guild.id,
            member=self.member.id,
            admin_role=self.admin_role.id,
            channels={channel.value: handle.id for channel, handle in self.channels.items()},
        )


def build_world(env: simcord.Env) -> SandboxWorld:
    """A guild with an admin role, the member at the keyboard (an admin), the channels and
    one ordinary member.

    The order of creation is fixed: SimCord's ids then come out the same on every run.
    """
    owner = env.create_user("sandbox-owner")
    guild = env.create_guild(GUILD_NAME, owner=owner)
    admin_role = guild.create_role(ADMIN_ROLE, permissions=discord.Permissions(administrator=True))
    user = env.create_user(MEMBER_NAME, global_name="You")
    member = guild.add_member(user, roles=[admin_role])
    channels = {
        SandboxChannel.GENERAL: guild.create_text_channel(
            SandboxChannel.GENERAL.value, topic=GENERAL_TOPIC
        ),
        SandboxChannel.DEMO: guild.create_text_channel(
            SandboxChannel.DEMO.value, topic="Community demo channel: /demo tadz, /demo pudgy."
        ),
    }
    # Last, so the ids above stay what they were before it existed.
    other = guild.add_member(env.create_user(OTHER_MEMBER_NAME, global_name="A member"))
    return SandboxWorld(
        guild=guild, admin_role=admin_role, member=member, other=other, channels=channels
    )


@dataclass(frozen=True)
class SandboxAddress:
    """Where the browser goes: the page URL (the access token is in its fragment)."""

    host: str
    port: int
    access_token: str

    @property
    def url(self) -> str:
        """Open this in a browser; it carries the access token, keep it to yourself."""
        return f"http://{self.host}:{self.port}/#{self.access_token}"


class Sandbox:
    """A running sandbox: the bot in SimCord, one preview at a time on a fixed port.

    Build with :func:`open_sandbox`. :meth:`switch` moves the page to another channel
    (the bot's ``/sandbox channel`` asks for it through ``requests``).
    """

    def __init__(
        self,
        *,
        env: simcord.Env,
        world: SandboxWorld,
        port: int,
        access_token: str,
        start_channel: SandboxChannel,
        requests: asyncio.Queue[SandboxChannel],
        data_dir: Path,
    ) -> None:
        self.env = env
        self.world = world
        self._port = port
        self.access_token = access_token
        self.channel = start_channel
        self.requests = requests
        self.data_dir = data_dir
        self.preview: Preview | None = None

    @property
    def address(self) -> SandboxAddress:
        """The page's address (valid once the sandbox serves)."""
        return SandboxAddress(host="127.0.0.1", port=self._port, access_token=self.access_token)

    async def _open_preview(self, channel: SandboxChannel) -> Preview:
        preview = self.env.preview(
            self.world.channels[channel],
            viewers=[self.world.member, self.world.other],
            layout="channel",
            port=self._port,
        )
        # The same server with a favicon (the page's browser asks for one).
        preview._server = _sandbox_server(preview, self._port)
        # The same token on every run and after every switch: a bookmarked page keeps working.
        preview.capability = self.access_token
        LivePublication(self.env, preview).install()
        await preview.__aenter__()
        # Port 0 means "any free port": keep the one we got for later switches.
        self._port = preview._server.port or self._port
        self.channel = channel
        return preview

    async def start(self) -> None:
        """Serve the preview on the start channel."""
        self.preview = await self._open_preview(self.channel)

    async def switch(self, channel: SandboxChannel) -> None:
        """Show ``channel`` instead (same address and token; the page is reloaded)."""
        # Not in the middle of the browser action that asked for it: let it finish, and
        # give the page a moment to show the answer before its session goes away.
        while self.env._operation_task is not None:  # noqa: ASYNC110  (SimCord has no event)
            await asyncio.sleep(0.05)
        await asyncio.sleep(SWITCH_GRACE_SECONDS)
        if self.preview is not None:
            await self.preview.close()
        self.preview = await self._open_preview(channel)
        log.info("sandbox: now showing #%s", channel.value)

    async def close(self) -> None:
        """Stop serving the page."""
        if self.preview is not None:
            await self.preview.close()
            self.preview = None

    async def serve_forever(self) -> None:
        """Serve until interrupted, switching channels when ``/sandbox channel`` asks."""
        while True:
            channel = await self.requests.get()
            if channel is not self.channel:
                await self.switch(channel)


class AnsweredSettlement:
    """A browser action ends once the bot has answered the interaction it sent.

    SimCord's actors settle after each interaction: they return only when every piece of
    work the bot started is done or parked. That is what tests want, and what froze the
    page: the preview's action endpoint awaits the actor, so after Train (a job the bot
    watches for minutes) or a voice clone (a button handler that answers at once, then
    awaits the engine for 20 s) the toolbar said "Completing action..." until the work
    ended or ACTION_SETTLE_SECONDS ran out, and every other action in between, from any
    tab, was refused as busy. Discord itself only waits for the answer (3 s); so does the
    sandbox: once the interaction is answered (a message, a deferral, a modal, choices)
    and ANSWERED_GRACE_SECONDS of quick work went by, the action ends; the bot's work goes
    on and the page shows it as it polls (:class:`LivePublication`). A refresh of the page
    settles only the quick work the same way.
    """

    def __init__(self, env: simcord.Env) -> None:
        self.env = env
        self._settle = env._settle_internal
        # The interaction the running operation dispatched (SimCord observes each one
        # just before it reaches the bot).
        self._dispatched: Any = None

    def install(self) -> None:
        """Wrap this Env's settlement and observe its interactions."""
        self.env._register_dispatch_observer(self._observe)
        self.env._settle_internal = self._settle_answered  # type: ignore[method-assign]

    def _observe(self, interaction: Any) -> None:
        self._dispatched = interaction

    async def _settle_answered(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  (SimCord's signature)
        idle: float = 0.05,
        dispatch: str | None = None,
        _deadline: float | None = None,
    ) -> None:
        interaction, self._dispatched = self._dispatched, None
        page_refresh = dispatch is None and self.env._operation_label == "preview.action"
        if (dispatch != "INTERACTION_CREATE" or interaction is None) and not page_refresh:
            # Start-up, shutdown, time advancing: SimCord's own settlement, unchanged.
            await self._settle(timeout=timeout, idle=idle, dispatch=dispatch, _deadline=_deadline)
            return
        loop = asyncio.get_running_loop()
        limit = self.env.settle_timeout if timeout is None else timeout
        deadline = loop.time() + limit if _deadline is None else _deadline
        while True:
            step = max(0.001, min(ANSWERED_GRACE_SECONDS, deadline - loop.time()))
            try:
                await self._settle(timeout=step, idle=idle, dispatch=dispatch)
                return  # nothing left running
            except TimeoutError:
                answered = interaction is None or bool(interaction.responded)
                if answered:
                    return  # the rest is the bot's long work: the page polls for it
                if loop.time() >= deadline:
                    raise


class LivePublication:
    """Keeps the page current when the bot posts on its own (job results, progress edits).

    SimCord's preview republishes a page only after a browser action or an explicit
    refresh, and a refresh settles the bot, which blocks browser actions while the bot
    works. Instead, when the page polls its state and Discord changed since the page was
    last published, the page is republished right there (no settling; nothing in flight is
    waited for), so the browser learns the new revision in the same answer.
    """

    def __init__(self, env: simcord.Env, preview: Preview) -> None:
        self.env = env
        self.preview = preview
        self._published: dict[str, int] = {}
        self._publish = preview._publish
        self._payload = preview._page_payload

    def install(self) -> None:
        """Wrap this preview's publication and state answers."""
        self.preview._publish = self._record  # type: ignore[method-assign]
        self.preview._page_payload = self._fresh_payload  # type: ignore[method-assign]

    def _changes(self) -> int:
        return len(self.env.backend.transcript)

    def _record(self, page: Any, **kwargs: Any) -> None:
        # Relative times (``<t:...:R>``) read against the preview's presentation time,
        # which SimCord moves only on a refresh: moved to now on every publication.
        self.preview._advance_presentation_time()
        self._publish(page, **kwargs)
        self._published[page.id] = self._changes()

    def _fresh_payload(self, page: Any) -> dict[str, Any]:
        idle = self.env._operation_task is None
        if idle and self._published.get(page.id, -1) < self._changes():
            self._record(page, reason="refresh")
        payload: dict[str, Any] = self._payload(page)
        return payload


# What discord.py and the bot log that is true of a real Discord but not of the simulated
# one: no voice there, SimCord's probe client has no Guilds intent, its token is a static
# stand-in, and commands "sync" instantly. Logged at DEBUG in the sandbox instead.
SANDBOX_DETAILS: dict[str, tuple[str, ...]] = {
    "discord.client": (
        "PyNaCl is not installed",
        "davey is not installed",
        "logging in using static token",
    ),
    "discord.state": ("Guilds intent seems to be disabled",),
    "bot.app": ("synced ",),
    # Server settings changes (the demo channel a first run sets up among them): the
    # page shows what changed.
    "bot.policy.service": ("settings changed",),
}


class _SandboxDetail(logging.Filter):
    """Turns a record that does not apply to the sandbox into a DEBUG one."""

    def __init__(self, parts: tuple[str, ...]) -> None:
        super().__init__()
        # Parts of the message's format string (before its arguments are merged in).
        self.parts = parts

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if not any(part in message for part in self.parts):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def sandbox_logging(
    details: dict[str, tuple[str, ...]] | None = None,
) -> Iterator[None]:
    """While the sandbox runs, the warnings that do not apply to it are DEBUG lines."""
    installed = [
        (logging.getLogger(name), _SandboxDetail(parts))
        for name, parts in (SANDBOX_DETAILS if details is None else details).items()
    ]
    for logger, detail in installed:
        logger.addFilter(detail)
    try:
        yield
    finally:
        for logger, detail in installed:
            logger.removeFilter(detail)


def _sandbox_config(config: BotConfig) -> BotConfig:
    # Commands sync globally inside SimCord (instant there); a dev guild id from a real
    # config file would not exist in the simulated Discord.
    return config.model_copy(
        update={"discord": config.discord.model_copy(update={"dev_guild_id": None})}
    )


@asynccontextmanager
async def open_sandbox(
    config: BotConfig,
    *,
    engine_settings: EngineSettings | None = None,
    port: int = 0,
    start_channel: SandboxChannel = SandboxChannel.GENERAL,
    extensions: Sequence[str] = EXTENSIONS,
    on_ready: Callable[[Sandbox], None] | None = None,
) -> AsyncIterator[Sandbox]:
    """The whole sandbox: services, the bot in SimCord, the world, the page on ``port``."""
    with sandbox_logging():
        async with _open_sandbox(
            config,
            engine_settings=engine_settings,
            port=port,
            start_channel=start_channel,
            extensions=extensions,
            on_ready=on_ready,
        ) as sandbox:
            yield sandbox


@asynccontextmanager
async def _open_sandbox(
    config: BotConfig,
    *,
    engine_settings: EngineSettings | None,
    port: int,
    start_channel: SandboxChannel,
    extensions: Sequence[str],
    on_ready: Callable[[Sandbox], None] | None,
) -> AsyncIterator[Sandbox]:
    needs = "the sandbox needs SimCord's browser preview: pip install -e '.[sandbox]'"
    try:
        import simcord
        from simcord.preview import _require_preview_runtime
    except ImportError as exc:
        raise SandboxError(f"{needs} ({exc})") from exc
    try:
        # Checks aiohttp, the Markdown renderers and the bundled fonts.
        _require_preview_runtime()
    except simcord.SetupError as exc:
        raise SandboxError(f"{needs} ({exc})") from exc
    config = _sandbox_config(config)
    state_path = config.data_dir / STATE_FILE
    saved = SandboxState.load(state_path)
    async with open_services(config, engine_settings=engine_settings) as services:
        bot: TadaBot = create_bot(services, extensions=extensions)
        # Before the bot starts, so its start-up sync registers /sandbox with the rest. By
        # name, like every cog: bot/ never imports cogs/.
        await bot.load_extension(SANDBOX_EXTENSION)
        requests = _channel_requests(bot)
        # A sandbox must survive a failing command like the real bot does: errors are
        # answered to the member and logged, never raised at teardown.
        env = simcord.Env(bot, check_errors=False, settle_timeout=ACTION_SETTLE_SECONDS)
        # SimCord calls its bot "TestBot"; members should see whose bot this is.
        env.backend.edit_bot_profile(BOT_NAME)
        # The world before the bot starts: its ids then depend on nothing the bot does (each
        # synced command takes an id), so they stay the same when cogs come and go.
        world = build_world(env)
        follow_wall_clock(env)
        AnsweredSettlement(env).install()
        if saved is not None and saved.ids != world.ids:
            log.warning(
                "sandbox: the simulated ids changed since the last run (SimCord upgrade?); "
                "members must /tada link again"
            )
        async with _running(env):
            if saved is None:
                # First run: #tadz-demo is the community demo channel, as an admin would set
                # with /tada-admin. Later runs keep whatever the admin changed since.
                await services.policy.add_demo_channel(
                    world.guild.id, world.channels[SandboxChannel.DEMO].id
                )
            token = saved.access_token if saved is not None else secrets.token_urlsafe(32)
            SandboxState(ids=world.ids, access_token=token).save(state_path)
            sandbox = Sandbox(
                env=env,
                world=world,
                port=port,
                access_token=token,
                start_channel=start_channel,
                requests=requests,
                data_dir=config.data_dir,
            )
            try:
                await sandbox.start()
            except simcord.SetupError as exc:
                raise SandboxError(
                    f"the sandbox page cannot listen on 127.0.0.1:{port} ({exc}); pass "
                    "--sandbox-port with a free port, or 0 for any"
                ) from exc
            try:
                if on_ready is not None:
                    on_ready(sandbox)
                yield sandbox
            finally:
                with contextlib.suppress(Exception):
                    await sandbox.close()


# The page's icon (browsers ask for /favicon.ico whatever the page says).
FAVICON_PATH = "/favicon.ico"


@cache
def favicon_png() -> bytes:
    """A 32x32 PNG: Discord's blurple with a white "T"."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, 31, 31), radius=8, fill=(88, 101, 242, 255))
    draw.rectangle((8, 7, 23, 11), fill="white")
    draw.rectangle((14, 7, 17, 25), fill="white")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _sandbox_server(preview: Preview, port: int) -> Any:
    """SimCord's preview server, serving the page's favicon too."""
    from aiohttp import web
    from simcord.preview._server import PreviewServer

    class SandboxPreviewServer(PreviewServer):
        # Every path here gets a route; the favicon's is answered below, not from a file.
        _STATIC_FILES: ClassVar[dict[str, str]] = {
            **PreviewServer._STATIC_FILES,
            FAVICON_PATH: "favicon.png",
        }

        async def _static(self, request: Any) -> Any:
            if request.path != FAVICON_PATH:
                return await super()._static(request)
            if self.port is None or request.headers.get("Host", "") not in self._allowed_hosts():
                raise web.HTTPForbidden()
            return web.Response(
                body=favicon_png(), content_type="image/png", headers=self._SECURITY_HEADERS
            )

    return SandboxPreviewServer(preview, port)


def follow_wall_clock(env: simcord.Env) -> None:
    """From now on, the simulated clock never reads earlier than the wall clock.

    SimCord's clock starts at 1 January 2026 and moves only with the bot's timers, while
    the bot's store stamps jobs with the real time: ``/jobs`` read "in 48 weeks". Called
    once the world is built, so the world's ids (drawn from the clock) stay the same on
    every run; later ids and times are the wall clock's (or later, when time is advanced).
    """
    clock = env.backend.clock
    simulated = clock.now

    def now() -> datetime:
        return max(simulated(), datetime.now(UTC))

    clock.now = now  # type: ignore[method-assign]


def _channel_requests(bot: TadaBot) -> asyncio.Queue[SandboxChannel]:
    """The queue ``/sandbox channel`` puts its requests on (``cogs.sandbox.SandboxCog``)."""
    requests = getattr(bot.get_cog(SANDBOX_COG), "requests", None)
    if not isinstance(requests, asyncio.Queue):
        raise SandboxError(f"{SANDBOX_EXTENSION} did not add its {SANDBOX_COG}")
    return requests


@asynccontextmanager
async def _running(env: simcord.Env) -> AsyncIterator[None]:
    # What ``simcord.run`` does, for an Env whose world was built before the bot started.
    await env.start()
    try:
        with env.time_context():
            yield
    finally:
        await env.shutdown()


def announce(sandbox: Sandbox) -> None:
    """Tell the person at the keyboard where to go."""
    address = sandbox.address
    print(
        "\n".join(
            [
                "",
                "Ta-da sandbox: the real bot in a simulated Discord (no token needed).",
                f"  Open:          {address.url}",
                f"  Access token:  {address.access_token}  (part of the URL; keep it private)",
                f"  Server:        {GUILD_NAME}, you are '{MEMBER_NAME}' with the "
                f"'{ADMIN_ROLE}' role",
                "  Channels:      "
                + ", ".join(f"#{channel.value}" for channel in SandboxChannel)
                + f" (showing #{sandbox.channel.value}; /sandbox channel switches, then reload)",
                "  Start with /tada register. Stop with Ctrl+C; accounts, voices and LoRAs "
                f"stay in {sandbox.data_dir.resolve()}.",
                "",
            ]
        ),
        flush=True,
    )


async def run_sandbox(
    config: BotConfig,
    *,
    config_path: Path | None = None,
    port: int = 0,
    start_channel: SandboxChannel = SandboxChannel.GENERAL,
) -> None:
    """``tada-bot`` without a token: run the sandbox until interrupted."""
    engine_settings = embedded_engine_settings(config, config_path)
    async with open_sandbox(
        config,
        engine_settings=engine_settings,
        port=port,
        start_channel=start_channel,
        on_ready=announce,
    ) as sandbox:
        # Ctrl+C or a service manager's SIGTERM: close the page, the bot, the engine and the
        # store in order (the data directory is left consistent).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        serving = asyncio.create_task(sandbox.serve_forever())
        try:
            await stop.wait()
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        print("Ta-da sandbox: stopped.", flush=True)
