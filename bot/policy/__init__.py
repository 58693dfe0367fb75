"""Server admins' policy: the real gate, guild settings, quotas, moderation, shared key.

- :mod:`bot.policy.settings`: the guild's settings document (pydantic) and its enums.
- :mod:`bot.policy.moderation`: the built-in blocked words, admins' words and patterns.
- :mod:`bot.policy.quotas`: which limit applies and over which period.
- :mod:`bot.policy.store`: the SQL (tables in :mod:`bot.policy.models`).
- :mod:`bot.policy.admission`: :class:`PolicyGate`, the :class:`bot.gate.Gate` of the bot
  (how the server's policy admits a request).
- :mod:`bot.policy.service`: :class:`PolicyService`, what ``/tada-admin`` calls.
"""

from bot.policy.admission import FeatureStatus, PolicyGate
from bot.policy.models import GuildSettingsRow, UsageRow
from bot.policy.service import PolicyService, UsageReport
from bot.policy.settings import GuildSettings, Limit, Moderation, QuotaRule
from bot.policy.store import PolicyStore

__all__ = [
    "FeatureStatus",
    "GuildSettings",
    "GuildSettingsRow",
    "Limit",
    "Moderation",
    "PolicyGate",
    "PolicyService",
    "PolicyStore",
    "QuotaRule",
    "UsageReport",
    "UsageRow",
]
