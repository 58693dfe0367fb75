"""A guild's configuration, as server admins set it with ``/tada-admin``.

One validated document per guild (stored as JSON in ``bot_guild_settings``). The default
document is what a guild with no configuration gets: every feature allowed everywhere
for everyone, no quotas, the built-in blocked-word list, results public.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from bot.gate import Action, Feature

# Bounds that keep one guild's document (and ``/tada-admin show``) a sane size.
MAX_CHANNELS = 50
MAX_ROLES = 50
MAX_QUOTA_RULES = 200
MAX_WORDS = 300
MAX_WORD_LENGTH = 100
MAX_PATTERNS = 50
MAX_PATTERN_LENGTH = 200


class Limit(StrEnum):
    """What a quota rule limits."""

    IMAGES_PER_DAY = "images_per_day"  # images generated (LoRA or demo); resets 00:00 UTC
    VOICE_CHARACTERS_PER_DAY = "voice_characters_per_day"  # characters spoken; 00:00 UTC
    TRAININGS_PER_MONTH = "trainings_per_month"  # LoRA trainings; resets on the 1st, UTC
    COOLDOWN_SECONDS = "cooldown_seconds"  # seconds between two requests of the feature


# The limits that make sense for each feature (others are refused when an admin sets them).
LIMITS_OF: dict[Feature, tuple[Limit, ...]] = {
    Feature.VOICE: (Limit.VOICE_CHARACTERS_PER_DAY, Limit.COOLDOWN_SECONDS),
    Feature.LORA: (Limit.IMAGES_PER_DAY, Limit.TRAININGS_PER_MONTH, Limit.COOLDOWN_SECONDS),
    Feature.DEMO: (Limit.IMAGES_PER_DAY, Limit.COOLDOWN_SECONDS),
}

# The recorded actions each counting limit adds up (their ``cost``: 1 per image or
# training, the number of characters for speech).
COUNTED_ACTIONS: dict[Limit, frozenset[Action]] = {
    Limit.IMAGES_PER_DAY: frozenset({Action.LORA_GENERATE, Action.DEMO_GENERATE}),
    Limit.VOICE_CHARACTERS_PER_DAY: frozenset({Action.VOICE_SPEAK}),
    Limit.TRAININGS_PER_MONTH: frozenset({Action.LORA_TRAIN}),
}

FEATURE_NAMES: dict[Feature, str] = {
    Feature.VOICE: "Voice",
    Feature.LORA: "LoRA",
    Feature.DEMO: "Demo",
}

LIMIT_NAMES: dict[Limit, str] = {
    Limit.IMAGES_PER_DAY: "images per day",
    Limit.VOICE_CHARACTERS_PER_DAY: "voice characters per day",
    Limit.TRAININGS_PER_MONTH: "trainings per month",
    Limit.COOLDOWN_SECONDS: "seconds between requests",
}

# The same names for an amount of one ("1 image per day").
LIMIT_NAMES_ONE: dict[Limit, str] = {
    Limit.IMAGES_PER_DAY: "image per day",
    Limit.VOICE_CHARACTERS_PER_DAY: "voice character per day",
    Limit.TRAININGS_PER_MONTH: "training per month",
    Limit.COOLDOWN_SECONDS: "second between requests",
}


def limit_name(limit: Limit, amount: int) -> str:
    """What ``amount`` of ``limit`` is called: "1 image per day", "2 images per day"."""
    return (LIMIT_NAMES_ONE if amount == 1 else LIMIT_NAMES)[limit]


class ExplicitImages(StrEnum):
    """Where an image the classifier judges explicit may be posted."""

    BLOCKED = "blocked"  # nowhere: the member is told privately, the usage is given back
    AGE_RESTRICTED = "age_restricted"  # in age-restricted channels only; withheld elsewhere


class QuotaRule(BaseModel):
    """One limit for the members holding ``role_id`` (the guild's id is @everyone).

    ``amount`` ``None`` means explicitly unlimited, which beats any number another of
    the member's roles gives.
    """

    model_config = ConfigDict(frozen=True)

    role_id: int
    feature: Feature
    limit: Limit
    amount: int | None = Field(default=None, ge=0)


class Moderation(BaseModel):
    """What prompts and spoken text may not contain."""

    model_config = ConfigDict(frozen=True)

    # The built-in list (bot.policy.moderation.DEFAULT_BLOCKED_WORDS) applies.
    use_default_words: bool = True
    # Built-in words this server allows anyway (an art server may allow "nude").
    exempt_words: tuple[str, ...] = ()
    # The server's own words and phrases (whole words, any case).
    blocked_words: tuple[str, ...] = ()
    # Regular expressions (case-insensitive), checked with a time limit.
    blocked_patterns: tuple[str, ...] = ()


class GuildSettings(BaseModel):
    """Everything an admin configures for one guild. Empty lists mean "no restriction"."""

    model_config = ConfigDict(frozen=True)

    # Per feature, the channels where it may be used; absent or empty: everywhere.
    channels: dict[Feature, tuple[int, ...]] = Field(default_factory=dict)
    # Per feature, the roles that may use it; absent or empty: everyone.
    roles: dict[Feature, tuple[int, ...]] = Field(default_factory=dict)
    # Community demo channels: /demo there runs on the guild's shared key.
    demo_channels: tuple[int, ...] = ()
    quotas: tuple[QuotaRule, ...] = ()
    moderation: Moderation = Field(default_factory=Moderation)
    # Results shown only to the member who asked instead of posted in the channel.
    private_results: bool = False
    # Speech posted as Discord voice messages (where the bot may), not MP3 attachments.
    voice_messages: bool = False
    # Images judged explicit: never posted, or posted in age-restricted channels only.
    explicit_images: ExplicitImages = ExplicitImages.BLOCKED
    # Buttons on posted results make soundboard sounds, custom emoji and stickers.
    expressions: bool = False

    def channels_for(self, feature: Feature) -> tuple[int, ...]:
        """The channels ``feature`` is limited to (empty: everywhere).

        Demo channels always allow the demo, on top of the demo's own list.
        """
        listed = self.channels.get(feature, ())
        if feature is Feature.DEMO and listed:
            return tuple(dict.fromkeys((*listed, *self.demo_channels)))
        return listed

    def roles_for(self, feature: Feature) -> tuple[int, ...]:
        """The roles ``feature`` is limited to (empty: everyone)."""
        return self.roles.get(feature, ())

    def role_allows(
        self, feature: Feature, guild_id: int, role_ids: frozenset[int], *, is_admin: bool
    ) -> bool:
        """Whether a member holding ``role_ids`` may use ``feature`` here (admins may)."""
        roles = self.roles_for(feature)
        if not roles or is_admin:
            return True
        return bool((role_ids | {guild_id}) & set(roles))  # the guild's id is @everyone
