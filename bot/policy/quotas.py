"""Quota arithmetic: which limit applies to a member, over which period, and what is left.

Pure functions over :class:`~bot.policy.settings.GuildSettings` and a clock reading; the
counts come from the store. The most generous of the member's roles applies: the largest
amount, no limit at all if one of their roles is explicitly unlimited, the shortest
cooldown. A role with no rule for a limit does not count (it neither gives nor takes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from bot.gate import Feature
from bot.policy.settings import LIMITS_OF, Limit, QuotaRule


class Period(StrEnum):
    """When a counted limit starts again from zero (UTC)."""

    DAY = "day"  # every day at 00:00 UTC
    MONTH = "month"  # on the 1st of every month at 00:00 UTC


PERIOD_OF: dict[Limit, Period] = {
    Limit.IMAGES_PER_DAY: Period.DAY,
    Limit.VOICE_CHARACTERS_PER_DAY: Period.DAY,
    Limit.TRAININGS_PER_MONTH: Period.MONTH,
}


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (SQLite hands back naive UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def period_bounds(period: Period, now: datetime) -> tuple[datetime, datetime]:
    """The start of the current ``period`` and the moment it resets."""
    now = as_utc(now)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.DAY:
        return day, day + timedelta(days=1)
    start = day.replace(day=1)
    if start.month == 12:
        return start, start.replace(year=start.year + 1, month=1)
    return start, start.replace(month=start.month + 1)


@dataclass(frozen=True, slots=True)
class Bound:
    """The limit in force for a member: ``amount`` ``None`` means no limit."""

    limit: Limit
    amount: int | None
    # The role that gives it (None when no rule applies).
    role_id: int | None = None

    @property
    def limited(self) -> bool:
        """Whether any limit applies."""
        return self.amount is not None


def effective_bound(
    rules: Iterable[QuotaRule], role_ids: Iterable[int], feature: Feature, limit: Limit
) -> Bound:
    """The most generous rule for ``limit`` among the member's roles."""
    held = set(role_ids)
    matching = [r for r in rules if r.feature is feature and r.limit is limit and r.role_id in held]
    if not matching:
        return Bound(limit, None)
    unlimited = next((r for r in matching if r.amount is None), None)
    if unlimited is not None:
        return Bound(limit, None, unlimited.role_id)
    if limit is Limit.COOLDOWN_SECONDS:
        best = min(matching, key=lambda r: r.amount or 0)
    else:
        best = max(matching, key=lambda r: r.amount or 0)
    return Bound(limit, best.amount, best.role_id)


def bounds_for(
    rules: Iterable[QuotaRule], role_ids: Iterable[int], feature: Feature
) -> tuple[Bound, ...]:
    """Every limit that can apply to ``feature``, resolved for the member."""
    rules = tuple(rules)
    held = frozenset(role_ids)
    return tuple(effective_bound(rules, held, feature, limit) for limit in LIMITS_OF[feature])


@dataclass(frozen=True, slots=True)
class Allowance:
    """A counted limit and the member's use of it in the current period."""

    limit: Limit
    amount: int
    used: int
    resets_at: datetime

    @property
    def left(self) -> int:
        """What the member may still use before the reset."""
        return max(0, self.amount - self.used)


@dataclass(frozen=True, slots=True)
class Cooldown:
    """Seconds between two requests, and when the next one is possible."""

    seconds: int
    ready_at: datetime | None

    def waiting(self, now: datetime) -> bool:
        """Whether the member must still wait at ``now``."""
        return self.ready_at is not None and as_utc(now) < self.ready_at


def cooldown_from(seconds: int, last_use: datetime | None) -> Cooldown:
    """The cooldown state after a last use at ``last_use``."""
    if last_use is None or seconds <= 0:
        return Cooldown(seconds, None)
    return Cooldown(seconds, as_utc(last_use) + timedelta(seconds=seconds))
