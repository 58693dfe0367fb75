"""The server-admin gate: the real :class:`bot.gate.Gate` behind every creation command.

``admit`` checks, in the order a member can act on them: the channel (and where the
feature works instead), the member's roles, the bot's own permissions in the channel
(so nothing fails after the work), the text against the blocked words and patterns,
then the cooldown and quotas of the member's most generous role. In a community demo
channel it lends the guild's shared key. ``record`` counts an accepted request; a job's
request stays pending until ``settle`` says whether the member got it (a failure or a
cancel gives it back). Usage rows know members by a keyed hash (``KeyBox.pseudonym`` of
guild and member), so ``/tada forget`` clears their id without resetting their quotas.

In DMs no guild's settings apply (members use their own keys, without quotas); only
the built-in blocked words do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import discord

from bot.crypto import DecryptionError, KeyBox
from bot.errors import UserFacingError
from bot.gate import Action, Admission, Feature, GateRequest
from bot.policy.models import UsageOutcome
from bot.policy.moderation import moderator_for, refusal
from bot.policy.quotas import (
    PERIOD_OF,
    Allowance,
    Bound,
    Cooldown,
    as_utc,
    bounds_for,
    cooldown_from,
    period_bounds,
)
from bot.policy.settings import (
    COUNTED_ACTIONS,
    FEATURE_NAMES,
    GuildSettings,
    Limit,
    limit_name,
)
from bot.policy.store import MemberRef, PolicyStore, QuotaTurn

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# Usage rows are kept this long: a month of trainings and the longest usage report.
USAGE_RETENTION = timedelta(days=100)
# Old rows are pruned by the first record of a guild after this long, not by every one.
PRUNE_EVERY = timedelta(hours=1)

# An admitted request holds its cost until it is recorded (or this long has passed), so
# requests admitted at the same moment cannot overrun a quota together. Holds are usage
# rows (outcome "held"), made in the member's quota turn: every bot process sees them.
HOLD_SECONDS = 120

# Admissions of one member (and feature) are checked one at a time; striped locks keep
# that exact with a fixed amount of memory however many members there are.
LOCK_STRIPES = 64

# Setting-up steps (a new voice, a new image set) are not slowed by cooldowns; the
# requests that make something are.
COOLDOWN_ACTIONS = frozenset(
    {Action.VOICE_SPEAK, Action.LORA_TRAIN, Action.LORA_GENERATE, Action.DEMO_GENERATE}
)

# What the bot needs in a channel to post a result there, with Discord's names.
REQUIRED_PERMISSIONS: tuple[tuple[str, str], ...] = (
    ("view_channel", "View Channel"),
    ("send_messages", "Send Messages"),
    ("embed_links", "Embed Links"),
    ("attach_files", "Attach Files"),
)

COMMAND_OF: dict[Feature, str] = {
    Feature.VOICE: "/voice",
    Feature.LORA: "/lora",
    Feature.DEMO: "/demo",
}


def discord_now() -> datetime:
    """Discord's clock (SimCord moves it in tests)."""
    return discord.utils.utcnow()


def missing_permissions(permissions: discord.Permissions, *, in_thread: bool = False) -> list[str]:
    """The names of the permissions the bot lacks to post results (empty: none)."""
    missing = []
    for flag, name in REQUIRED_PERMISSIONS:
        if flag == "send_messages" and in_thread:
            flag, name = "send_messages_in_threads", "Send Messages in Threads"
        if not getattr(permissions, flag):
            missing.append(name)
    return missing


def channel_list(channel_ids: Iterable[int]) -> str:
    """Channels as Discord mentions, for a sentence."""
    return ", ".join(f"<#{c}>" for c in channel_ids)


def role_list(role_ids: Iterable[int]) -> str:
    """Roles as Discord mentions, for a sentence."""
    return ", ".join(f"<@&{r}>" for r in role_ids)


# guild, member, feature
MemberKey = tuple[int, int, Feature]


@dataclass(frozen=True, slots=True)
class FeatureStatus:
    """What ``/quota`` shows for one feature."""

    feature: Feature
    # False when the member holds none of the feature's roles.
    allowed: bool
    roles: tuple[int, ...]
    channels: tuple[int, ...]
    allowances: tuple[Allowance, ...]
    cooldown: Cooldown | None
    # Admins are not limited by roles or quotas.
    exempt: bool = False


class PolicyGate:
    """Admits or refuses creation requests by the guild's settings; counts usage."""

    def __init__(self, store: PolicyStore, keys: KeyBox, *, clock: Clock = discord_now) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock
        self._client: discord.Client | None = None
        self._locks = tuple(asyncio.Lock() for _ in range(LOCK_STRIPES))
        self._pruned: dict[int, datetime] = {}

    def __repr__(self) -> str:
        return f"<PolicyGate {self._store!r}>"

    def bind(self, client: discord.Client) -> None:
        """Let the gate read the bot's cache: thread parents, and the bot's channel
        permissions when a request does not carry them."""
        self._client = client

    def now(self) -> datetime:
        """The gate's clock reading, UTC."""
        return as_utc(self._clock())

    # ------------------------------------------------------------------ admit

    async def admit(self, request: GateRequest) -> Admission:
        """Admit ``request`` or raise a :class:`UserFacingError` saying why and what to do."""
        if request.guild_id is None:
            # No server's settings apply in DMs, but the built-in word list does: the bot
            # makes nothing from those words anywhere.
            await self._check_text(GuildSettings(), request)
            return Admission()
        settings = await self._store.settings(request.guild_id)
        where = self._where(request.channel_id)
        self._check_channel(settings, request, where)
        self._check_roles(settings, request)
        self._check_bot_permissions(request)
        await self._check_text(settings, request)
        if not request.is_admin and self._limited(settings, request):
            key: MemberKey = (request.guild_id, request.user_id, request.feature)
            member = self.member(request.guild_id, request.user_id)
            # The stripe keeps this process's admissions of a member in line without
            # waiting on the database; the turn does it across processes.
            async with (
                self._locks[hash(key) % LOCK_STRIPES],
                self._store.quota_turn(request.guild_id, member, request.feature) as turn,
            ):
                now = self.now()
                await self._check_quotas(settings, request, turn, now)
                turn.hold(request.action, request.cost, now)
        shared_key = None
        notes: list[str] = []
        if request.feature is Feature.DEMO and where & set(settings.demo_channels):
            state = await self._store.shared_key(request.guild_id)
            if state is not None:
                try:
                    shared_key = self._keys.decrypt(state.ciphertext)
                except DecryptionError as exc:
                    log.error("guild %s: its shared key cannot be decrypted", request.guild_id)
                    raise UserFacingError(
                        "This server's shared demo key can no longer be read (the bot's "
                        "encryption key changed). A server admin needs to set it again with "
                        "`/tada-admin demo key`.",
                        reason="shared_key",
                    ) from exc
            else:
                notes.append(
                    "This is a community demo channel, but the server has no shared key "
                    "yet, so your own account is used."
                )
        return Admission(
            shared_key=shared_key,
            private_results=settings.private_results,
            notes=tuple(notes),
        )

    def _where(self, channel_id: int) -> set[int]:
        """The channel and, for a thread, its parent (a thread works where its channel does)."""
        where = {channel_id}
        if self._client is not None:
            channel = self._client.get_channel(channel_id)
            if isinstance(channel, discord.Thread) and channel.parent_id:
                where.add(channel.parent_id)
        return where

    def _check_channel(
        self, settings: GuildSettings, request: GateRequest, where: set[int]
    ) -> None:
        allowed = settings.channels_for(request.feature)
        if allowed and not where & set(allowed):
            raise UserFacingError(
                f"`{COMMAND_OF[request.feature]}` does not work in this channel on this "
                f"server. It works in: {channel_list(allowed)}.",
                reason="channel",
            )

    def _check_roles(self, settings: GuildSettings, request: GateRequest) -> None:
        roles = settings.roles_for(request.feature)
        if not roles or request.is_admin:
            return
        assert request.guild_id is not None
        if settings.role_allows(
            request.feature, request.guild_id, request.role_ids, is_admin=request.is_admin
        ):
            return
        raise UserFacingError(
            f"On this server, `{COMMAND_OF[request.feature]}` is for members with one of "
            f"these roles: {role_list(roles)}. Ask the server admins if you should have one.",
            reason="role",
        )

    def _check_bot_permissions(self, request: GateRequest) -> None:
        permissions = request.bot_permissions
        in_thread = False
        if self._client is not None:
            channel: Any = self._client.get_channel(request.channel_id)
            in_thread = isinstance(channel, discord.Thread)
            if permissions is None and isinstance(
                channel, discord.abc.GuildChannel | discord.Thread
            ):
                permissions = channel.permissions_for(channel.guild.me)
        if permissions is None:
            return
        missing = missing_permissions(permissions, in_thread=in_thread)
        if missing:
            names = ", ".join(f"**{m}**" for m in missing)
            raise UserFacingError(
                f"I cannot post results in this channel: I am missing {names} here. "
                "Ask a server admin to give me that permission, or use a channel where I "
                "have it. Nothing was started.",
                reason="bot_permissions",
            )

    async def _check_text(self, settings: GuildSettings, request: GateRequest) -> None:
        if not request.text:
            return
        moderator = moderator_for(settings.moderation)
        # Admin patterns run with a time limit, still off the event loop.
        blocked = await asyncio.to_thread(moderator.check, request.text)
        if blocked is not None:
            log.info(
                "refused %s by %s in guild %s: blocked %s",
                request.action,
                request.user_id,
                request.guild_id,
                "word" if blocked.word else "pattern",
            )
            what = "text" if request.feature is Feature.VOICE else "prompt"
            raise UserFacingError(refusal(blocked, what=what), reason="moderation")

    def _limited(self, settings: GuildSettings, request: GateRequest) -> bool:
        """Whether any cooldown or counted limit applies to the request."""
        assert request.guild_id is not None
        held = request.role_ids | {request.guild_id}
        for bound in bounds_for(settings.quotas, held, request.feature):
            if bound.amount is None:
                continue
            if bound.limit is Limit.COOLDOWN_SECONDS:
                if request.action in COOLDOWN_ACTIONS:
                    return True
            elif request.action in COUNTED_ACTIONS[bound.limit]:
                return True
        return False

    def hold_since(self, now: datetime) -> datetime:
        """Holds made before this moment no longer count (never recorded)."""
        return now - timedelta(seconds=HOLD_SECONDS)

    async def _check_quotas(
        self, settings: GuildSettings, request: GateRequest, turn: QuotaTurn, now: datetime
    ) -> None:
        """Refuse what would overrun a limit, counting the member's live holds."""
        assert request.guild_id is not None
        held = request.role_ids | {request.guild_id}
        name = FEATURE_NAMES[request.feature]
        since_holds = self.hold_since(now)
        for bound in bounds_for(settings.quotas, held, request.feature):
            if bound.amount is None:
                continue
            if bound.limit is Limit.COOLDOWN_SECONDS:
                if request.action not in COOLDOWN_ACTIONS:
                    continue
                last = await turn.last_use(COOLDOWN_ACTIONS, since_holds)
                cooldown = cooldown_from(bound.amount, last)
                if cooldown.waiting(now) and cooldown.ready_at is not None:
                    wait = max(1, round((cooldown.ready_at - now).total_seconds()))
                    raise UserFacingError(
                        f"Slow down a little: on this server there are {bound.amount} s "
                        f"between {name} requests. Try again in {wait} s "
                        f"({discord.utils.format_dt(cooldown.ready_at, 'R')}).",
                        reason="cooldown",
                    )
                continue
            counted = COUNTED_ACTIONS[bound.limit]
            if request.action not in counted:
                continue
            start, reset = period_bounds(PERIOD_OF[bound.limit], now)
            used = await turn.used(counted, start, since_holds)
            allowance = Allowance(bound.limit, bound.amount, used, reset)
            if allowance.used + request.cost > allowance.amount:
                raise UserFacingError(_quota_refusal(name, allowance, request.cost), reason="quota")

    async def _allowance(
        self, guild_id: int, user_id: int, feature: Feature, bound: Bound, now: datetime
    ) -> Allowance:
        """The member's use of a counted ``bound`` in its current period."""
        assert bound.amount is not None
        start, reset = period_bounds(PERIOD_OF[bound.limit], now)
        used = await self._store.used(
            guild_id,
            self.member(guild_id, user_id),
            feature,
            COUNTED_ACTIONS[bound.limit],
            start,
            self.hold_since(now),
        )
        return Allowance(bound.limit, bound.amount, used, reset)

    # ------------------------------------------------------------------ record

    def member(self, guild_id: int, user_id: int) -> MemberRef:
        """How usage rows know the member in this guild."""
        return MemberRef(user_id, self._keys.pseudonyms(f"{guild_id}:{user_id}"))

    async def record(self, request: GateRequest, *, job_id: str | None = None) -> None:
        """Count an accepted request against the member's quotas (guilds only); with a
        ``job_id`` it is pending until :meth:`settle`."""
        if request.guild_id is None:
            return
        shared = False
        if request.feature is Feature.DEMO:
            settings = await self._store.settings(request.guild_id)
            in_demo_channel = bool(self._where(request.channel_id) & set(settings.demo_channels))
            shared = in_demo_channel and await self._store.shared_key(request.guild_id) is not None
        now = self.now()
        last_prune = self._pruned.get(request.guild_id)
        prune = last_prune is None or now - last_prune >= PRUNE_EVERY
        if prune:
            self._pruned[request.guild_id] = now
        await self._store.add_usage(
            guild_id=request.guild_id,
            member=self.member(request.guild_id, request.user_id),
            feature=request.feature,
            action=request.action,
            cost=max(0, request.cost),
            shared_key=shared,
            at=now,
            job_id=job_id,
            prune_before=now - USAGE_RETENTION if prune else None,
            # The admission's hold (made by any process) becomes this row.
            hold_since=self.hold_since(now),
        )

    async def settle(self, job_id: str, *, delivered: bool) -> None:
        """The job's request was delivered (it keeps counting) or not (failed, cancelled,
        interrupted: it is given back). Settling twice changes nothing."""
        outcome = UsageOutcome.DELIVERED if delivered else UsageOutcome.RELEASED
        await self._store.settle(job_id, outcome)

    async def release_orphans(self) -> None:
        """Give back what jobs deleted before they ran (``/tada forget``) held."""
        released = await self._store.release_orphans()
        if released:
            log.info("gave back %d request(s) of jobs deleted before they ran", released)

    # ------------------------------------------------------------------ /quota

    async def status(
        self, guild_id: int, user_id: int, role_ids: frozenset[int], *, is_admin: bool = False
    ) -> list[FeatureStatus]:
        """What the member may still do in the guild, per feature."""
        settings = await self._store.settings(guild_id)
        held = role_ids | {guild_id}
        now = self.now()
        statuses = []
        for feature in Feature:
            roles = settings.roles_for(feature)
            allowed = is_admin or not roles or bool(held & set(roles))
            allowances: list[Allowance] = []
            cooldown: Cooldown | None = None
            if not is_admin:
                for bound in bounds_for(settings.quotas, held, feature):
                    if bound.amount is None:
                        continue
                    if bound.limit is Limit.COOLDOWN_SECONDS:
                        last = await self._store.last_use(
                            guild_id,
                            self.member(guild_id, user_id),
                            feature,
                            COOLDOWN_ACTIONS,
                            self.hold_since(now),
                        )
                        cooldown = cooldown_from(bound.amount, last)
                        if not cooldown.waiting(now):
                            cooldown = Cooldown(bound.amount, None)
                        continue
                    allowances.append(await self._allowance(guild_id, user_id, feature, bound, now))
            statuses.append(
                FeatureStatus(
                    feature=feature,
                    allowed=allowed,
                    roles=roles,
                    channels=settings.channels_for(feature),
                    allowances=tuple(allowances),
                    cooldown=cooldown,
                    exempt=is_admin,
                )
            )
        return statuses


def _quota_refusal(feature_name: str, allowance: Allowance, cost: int) -> str:
    resets = discord.utils.format_dt(allowance.resets_at, "R")
    what = limit_name(allowance.limit, allowance.amount)
    if allowance.left <= 0:
        return (
            f"You have used all your {feature_name} allowance on this server "
            f"({allowance.amount} {what}). It resets {resets}."
        )
    return (
        f"That needs {cost}, but you have {allowance.left} of {allowance.amount} {what} "
        f"left for {feature_name} on this server. It resets {resets}."
    )
