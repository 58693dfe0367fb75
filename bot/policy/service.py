"""What ``/tada-admin`` does: change a guild's settings, keep its shared key, report use.

Every change is one read-modify-write of the guild's settings document in a transaction;
a refused change (a limit that does not fit the feature, too many entries) raises a
:class:`~bot.errors.UserFacingError` and leaves the settings as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import SecretStr

from bot.accounts import verified_key
from bot.crypto import KeyBox
from bot.errors import UserFacingError
from bot.gate import Feature
from bot.policy.admission import PolicyGate
from bot.policy.moderation import DEFAULT_BLOCKED_WORDS, check_pattern, clean_word, normalize
from bot.policy.settings import (
    FEATURE_NAMES,
    LIMIT_NAMES,
    LIMITS_OF,
    MAX_CHANNELS,
    MAX_PATTERNS,
    MAX_QUOTA_RULES,
    MAX_ROLES,
    MAX_WORDS,
    ExplicitImages,
    GuildSettings,
    Limit,
    QuotaRule,
)
from bot.policy.store import PolicyStore, TopMember, UsageLine
from bot.store import mask_key
from bot.tada import TadaClient

log = logging.getLogger(__name__)

# How far back ``/tada-admin usage`` may look (usage rows are kept a little longer).
MAX_USAGE_DAYS = 90


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Use of the bot in a guild over a period."""

    since: datetime
    days: int
    lines: tuple[UsageLine, ...]
    top: tuple[TopMember, ...]


@dataclass(frozen=True, slots=True)
class SharedKeyInfo:
    """Whether the guild has a shared key and since when (the key itself is never shown)."""

    set_at: datetime | None


def _added(items: tuple[int, ...], item: int, most: int, what: str) -> tuple[int, ...]:
    if item in items:
        return items
    if len(items) >= most:
        raise UserFacingError(f"At most {most} {what} can be listed; remove one first.")
    return (*items, item)


class PolicyService:
    """Server admins' operations on one guild's policy; cogs call it and render."""

    def __init__(self, store: PolicyStore, keys: KeyBox, tada: TadaClient, gate: PolicyGate):
        self._store = store
        self._keys = keys
        self._tada = tada
        self.gate = gate

    def __repr__(self) -> str:
        return f"<PolicyService {self._store!r}>"

    async def settings(self, guild_id: int) -> GuildSettings:
        """The guild's settings (defaults when never configured)."""
        return await self._store.settings(guild_id)

    async def _change(
        self, guild_id: int, change: Callable[[GuildSettings], GuildSettings]
    ) -> GuildSettings:
        updated = await self._store.update(guild_id, change)
        log.info("guild %s settings changed", guild_id)
        return updated

    # ------------------------------------------------------------------ channels

    async def allow_channel(
        self, guild_id: int, feature: Feature, channel_id: int
    ) -> GuildSettings:
        """Add ``channel_id`` to the channels where ``feature`` works."""

        def change(s: GuildSettings) -> GuildSettings:
            listed = _added(s.channels.get(feature, ()), channel_id, MAX_CHANNELS, "channels")
            return s.model_copy(update={"channels": {**s.channels, feature: listed}})

        return await self._change(guild_id, change)

    async def remove_channel(
        self, guild_id: int, feature: Feature, channel_id: int
    ) -> GuildSettings:
        """Take ``channel_id`` off ``feature``'s channels (an empty list: everywhere)."""

        def change(s: GuildSettings) -> GuildSettings:
            listed = tuple(c for c in s.channels.get(feature, ()) if c != channel_id)
            return s.model_copy(update={"channels": {**s.channels, feature: listed}})

        return await self._change(guild_id, change)

    async def channels_everywhere(self, guild_id: int, feature: Feature) -> GuildSettings:
        """Let ``feature`` work in every channel again."""

        def change(s: GuildSettings) -> GuildSettings:
            return s.model_copy(update={"channels": {**s.channels, feature: ()}})

        return await self._change(guild_id, change)

    # ------------------------------------------------------------------ roles

    async def allow_role(self, guild_id: int, feature: Feature, role_id: int) -> GuildSettings:
        """Add ``role_id`` to the roles that may use ``feature``."""

        def change(s: GuildSettings) -> GuildSettings:
            listed = _added(s.roles.get(feature, ()), role_id, MAX_ROLES, "roles")
            return s.model_copy(update={"roles": {**s.roles, feature: listed}})

        return await self._change(guild_id, change)

    async def remove_role(self, guild_id: int, feature: Feature, role_id: int) -> GuildSettings:
        """Take ``role_id`` off ``feature``'s roles (an empty list: everyone)."""

        def change(s: GuildSettings) -> GuildSettings:
            listed = tuple(r for r in s.roles.get(feature, ()) if r != role_id)
            return s.model_copy(update={"roles": {**s.roles, feature: listed}})

        return await self._change(guild_id, change)

    async def roles_everyone(self, guild_id: int, feature: Feature) -> GuildSettings:
        """Let every member use ``feature`` again."""

        def change(s: GuildSettings) -> GuildSettings:
            return s.model_copy(update={"roles": {**s.roles, feature: ()}})

        return await self._change(guild_id, change)

    # ------------------------------------------------------------------ demo channels

    async def add_demo_channel(self, guild_id: int, channel_id: int) -> GuildSettings:
        """Mark ``channel_id`` as a community demo channel."""

        def change(s: GuildSettings) -> GuildSettings:
            listed = _added(s.demo_channels, channel_id, MAX_CHANNELS, "demo channels")
            return s.model_copy(update={"demo_channels": listed})

        return await self._change(guild_id, change)

    async def remove_demo_channel(self, guild_id: int, channel_id: int) -> GuildSettings:
        """Make ``channel_id`` an ordinary channel again."""

        def change(s: GuildSettings) -> GuildSettings:
            listed = tuple(c for c in s.demo_channels if c != channel_id)
            return s.model_copy(update={"demo_channels": listed})

        return await self._change(guild_id, change)

    async def set_shared_key(self, guild_id: int, api_key: SecretStr) -> str:
        """Check ``api_key`` against Ta-da, keep it encrypted; returns it masked."""
        cleaned = await verified_key(
            self._tada, api_key, empty="The key was empty. Run `/tada-admin demo key` again."
        )
        await self._store.set_shared_key(guild_id, self._keys.encrypt(cleaned), self.gate.now())
        log.info("guild %s set a shared demo key", guild_id)
        return mask_key(cleaned)

    async def forget_shared_key(self, guild_id: int) -> bool:
        """Delete the guild's shared key; whether there was one."""
        had = await self._store.set_shared_key(guild_id, None, self.gate.now())
        if had:
            log.info("guild %s deleted its shared demo key", guild_id)
        return had

    async def shared_key_info(self, guild_id: int) -> SharedKeyInfo:
        """Whether a shared key is set, and when."""
        state = await self._store.shared_key(guild_id)
        return SharedKeyInfo(state.set_at if state is not None else None)

    # ------------------------------------------------------------------ quotas

    async def set_quota(
        self, guild_id: int, role_id: int, feature: Feature, limit: Limit, amount: int | None
    ) -> GuildSettings:
        """Set (or replace) the rule for ``role_id``; ``amount`` ``None``: no limit."""
        if limit not in LIMITS_OF[feature]:
            fitting = ", ".join(LIMIT_NAMES[x] for x in LIMITS_OF[feature])
            raise UserFacingError(
                f"{FEATURE_NAMES[feature]} has no “{LIMIT_NAMES[limit]}” limit; "
                f"it can limit: {fitting}."
            )
        if amount is not None and amount < 0:
            raise UserFacingError("A limit cannot be negative (0 blocks the feature).")
        rule = QuotaRule(role_id=role_id, feature=feature, limit=limit, amount=amount)

        def change(s: GuildSettings) -> GuildSettings:
            kept = tuple(
                r for r in s.quotas if (r.role_id, r.feature, r.limit) != (role_id, feature, limit)
            )
            if len(kept) >= MAX_QUOTA_RULES:
                raise UserFacingError(f"At most {MAX_QUOTA_RULES} quota rules; remove some first.")
            return s.model_copy(update={"quotas": (*kept, rule)})

        return await self._change(guild_id, change)

    async def remove_quota(
        self, guild_id: int, role_id: int, feature: Feature, limit: Limit | None
    ) -> int:
        """Remove ``role_id``'s rules for ``feature`` (one ``limit`` or all); how many went."""
        removed = 0

        def change(s: GuildSettings) -> GuildSettings:
            nonlocal removed
            kept = tuple(
                r
                for r in s.quotas
                if not (
                    r.role_id == role_id
                    and r.feature is feature
                    and (limit is None or r.limit is limit)
                )
            )
            removed = len(s.quotas) - len(kept)
            return s.model_copy(update={"quotas": kept})

        await self._change(guild_id, change)
        return removed

    # ------------------------------------------------------------------ moderation

    async def block_word(self, guild_id: int, word: str) -> GuildSettings:
        """Block a word or phrase (whole words, any case)."""
        cleaned = clean_word(word)

        def change(s: GuildSettings) -> GuildSettings:
            m = s.moderation
            exempt = tuple(w for w in m.exempt_words if w != cleaned)
            words = m.blocked_words
            if cleaned not in words and not (
                cleaned in DEFAULT_BLOCKED_WORDS and m.use_default_words
            ):
                if len(words) >= MAX_WORDS:
                    raise UserFacingError(f"At most {MAX_WORDS} words; remove some first.")
                words = (*words, cleaned)
            moderation = m.model_copy(update={"blocked_words": words, "exempt_words": exempt})
            return s.model_copy(update={"moderation": moderation})

        return await self._change(guild_id, change)

    async def block_pattern(self, guild_id: int, pattern: str) -> GuildSettings:
        """Block a regular expression (checked to compile and to run fast)."""
        checked = check_pattern(pattern)

        def change(s: GuildSettings) -> GuildSettings:
            m = s.moderation
            if checked in m.blocked_patterns:
                return s
            if len(m.blocked_patterns) >= MAX_PATTERNS:
                raise UserFacingError(f"At most {MAX_PATTERNS} patterns; remove some first.")
            moderation = m.model_copy(update={"blocked_patterns": (*m.blocked_patterns, checked)})
            return s.model_copy(update={"moderation": moderation})

        return await self._change(guild_id, change)

    async def allow_term(self, guild_id: int, term: str) -> tuple[GuildSettings, bool]:
        """Unblock a word or pattern: the server's own are removed, a built-in word is
        exempted. Returns the settings and whether anything changed."""
        stripped = term.strip()
        cleaned = normalize(term)
        if not cleaned:
            raise UserFacingError("That word is empty.")
        changed = False

        def change(s: GuildSettings) -> GuildSettings:
            nonlocal changed
            m = s.moderation
            words = tuple(w for w in m.blocked_words if w != cleaned)
            patterns = tuple(p for p in m.blocked_patterns if p != stripped)
            exempt = m.exempt_words
            if cleaned in DEFAULT_BLOCKED_WORDS and cleaned not in exempt:
                exempt = (*exempt, cleaned)
            updated = m.model_copy(
                update={
                    "blocked_words": words,
                    "blocked_patterns": patterns,
                    "exempt_words": exempt,
                }
            )
            changed = updated != m
            return s.model_copy(update={"moderation": updated})

        settings = await self._change(guild_id, change)
        return settings, changed

    async def use_default_words(self, guild_id: int, enabled: bool) -> GuildSettings:
        """Turn the built-in blocked-word list on or off."""

        def change(s: GuildSettings) -> GuildSettings:
            moderation = s.moderation.model_copy(update={"use_default_words": enabled})
            return s.model_copy(update={"moderation": moderation})

        return await self._change(guild_id, change)

    async def set_voice_messages(self, guild_id: int, enabled: bool) -> GuildSettings:
        """Post speech as Discord voice messages (``True``) or as MP3 attachments."""

        def change(s: GuildSettings) -> GuildSettings:
            return s.model_copy(update={"voice_messages": enabled})

        return await self._change(guild_id, change)

    async def set_expressions(self, guild_id: int, enabled: bool) -> GuildSettings:
        """Offer buttons that make results into soundboard sounds, emoji and stickers."""

        def change(s: GuildSettings) -> GuildSettings:
            return s.model_copy(update={"expressions": enabled})

        return await self._change(guild_id, change)

    async def set_explicit_images(self, guild_id: int, where: ExplicitImages) -> GuildSettings:
        """Where images judged explicit may be posted: nowhere, or age-restricted channels."""

        def change(s: GuildSettings) -> GuildSettings:
            return s.model_copy(update={"explicit_images": where})

        return await self._change(guild_id, change)

    async def set_private_results(self, guild_id: int, private: bool) -> GuildSettings:
        """Post results in the channel (``False``) or show them to the member only."""

        def change(s: GuildSettings) -> GuildSettings:
            return s.model_copy(update={"private_results": private})

        return await self._change(guild_id, change)

    # ------------------------------------------------------------------ reports

    async def usage(self, guild_id: int, days: int, *, top: int = 10) -> UsageReport:
        """Use per feature and the most active members over the last ``days`` days."""
        days = max(1, min(days, MAX_USAGE_DAYS))
        since = self.gate.now() - timedelta(days=days)
        lines = await self._store.usage(guild_id, since)
        members = await self._store.top_members(guild_id, since, top)
        return UsageReport(since=since, days=days, lines=tuple(lines), top=tuple(members))
