"""The policy gate over a real store file: channels, roles, moderation, quotas, periods,
the shared key, and the bot's channel permissions. Discord is not needed for these rules;
``test_admin.py`` drives the same gate through SimCord."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import discord
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import select

from bot.crypto import KeyBox
from bot.errors import UserFacingError
from bot.gate import Action, Feature, GateRequest
from bot.policy import GuildSettingsRow, Limit, PolicyGate, PolicyStore, QuotaRule, UsageRow
from bot.policy.admission import HOLD_SECONDS
from bot.policy.moderation import DEFAULT_BLOCKED_WORDS, check_pattern, moderator_for
from bot.policy.quotas import Period, effective_bound, period_bounds
from bot.policy.settings import Moderation
from bot.store import LinkedVia, MemberStore, Store

GUILD = 1000
GENERAL = 2000
ART = 2001
DEMO_ROOM = 2002
ARTISTS = 3000
PATRONS = 3001
ALICE = 42


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.moment = start

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> None:
        self.moment += timedelta(**delta)


@dataclass
class World:
    store: Store
    policy: PolicyStore
    gate: PolicyGate
    keys: KeyBox
    clock: ManualClock


@pytest.fixture
async def world(bot_store_url: str) -> AsyncIterator[World]:
    store = Store(bot_store_url)
    await store.migrate()
    keys = KeyBox([SecretStr(Fernet.generate_key().decode())])
    clock = ManualClock(datetime(2026, 3, 31, 22, 0, tzinfo=UTC))
    policy = PolicyStore(store)
    try:
        yield World(store, policy, PolicyGate(policy, keys, clock=clock), keys, clock)
    finally:
        await store.close()


def ask(
    feature: Feature = Feature.LORA,
    action: Action = Action.LORA_GENERATE,
    *,
    channel: int = GENERAL,
    roles: frozenset[int] = frozenset(),
    text: str | None = "a cat in a hat",
    cost: int = 1,
    guild: int | None = GUILD,
    **extra: object,
) -> GateRequest:
    request = GateRequest(
        user_id=ALICE,
        guild_id=guild,
        channel_id=channel,
        role_ids=roles,
        feature=feature,
        action=action,
        cost=cost,
        text=text,
    )
    return replace(request, **extra)  # type: ignore[arg-type]


async def refused(gate: PolicyGate, request: GateRequest) -> str:
    with pytest.raises(UserFacingError) as caught:
        await gate.admit(request)
    return caught.value.message


async def test_no_configuration_admits_everything_publicly(world: World) -> None:
    for feature, action in [
        (Feature.VOICE, Action.VOICE_SPEAK),
        (Feature.LORA, Action.LORA_TRAIN),
        (Feature.DEMO, Action.DEMO_GENERATE),
    ]:
        admission = await world.gate.admit(ask(feature, action))
        assert admission.shared_key is None and not admission.private_results
    # And nothing was written: defaults need no row.
    async with world.store.session() as session:
        assert (await session.scalars(select(GuildSettingsRow))).all() == []


async def test_dms_ignore_guild_rules_but_not_the_built_in_words(world: World) -> None:
    moderation = Moderation(exempt_words=("nude",))
    await world.policy.update(
        GUILD,
        lambda s: s.model_copy(
            update={"roles": {Feature.LORA: (ARTISTS,)}, "moderation": moderation}
        ),
    )
    admission = await world.gate.admit(ask(guild=None, text="a cat"))
    assert admission.shared_key is None and not admission.private_results
    # A guild's exemption does not follow the member into DMs.
    assert "“nude”" in await refused(world.gate, ask(guild=None, text="nude"))
    await world.gate.record(ask(guild=None))
    async with world.store.session() as session:
        assert (await session.scalars(select(UsageRow))).all() == []


async def test_channel_allow_list_names_the_channels_where_it_works(world: World) -> None:
    await world.policy.update(
        GUILD, lambda s: s.model_copy(update={"channels": {Feature.LORA: (ART,)}})
    )
    text = await refused(world.gate, ask(channel=GENERAL))
    assert "`/lora`" in text and f"<#{ART}>" in text
    await world.gate.admit(ask(channel=ART))
    # Other features are not restricted by LoRA's list.
    await world.gate.admit(ask(Feature.VOICE, Action.VOICE_SPEAK, channel=GENERAL))


async def test_demo_channels_allow_the_demo_on_top_of_its_list(world: World) -> None:
    await world.policy.update(
        GUILD,
        lambda s: s.model_copy(
            update={"channels": {Feature.DEMO: (ART,)}, "demo_channels": (DEMO_ROOM,)}
        ),
    )
    await world.gate.admit(ask(Feature.DEMO, Action.DEMO_GENERATE, channel=DEMO_ROOM))
    text = await refused(world.gate, ask(Feature.DEMO, Action.DEMO_GENERATE, channel=GENERAL))
    assert f"<#{ART}>" in text and f"<#{DEMO_ROOM}>" in text


async def test_roles_refuse_members_without_one_and_admins_pass(world: World) -> None:
    await world.policy.update(
        GUILD, lambda s: s.model_copy(update={"roles": {Feature.VOICE: (ARTISTS, PATRONS)}})
    )
    voice = ask(Feature.VOICE, Action.VOICE_SPEAK)
    text = await refused(world.gate, voice)
    assert f"<@&{ARTISTS}>" in text and f"<@&{PATRONS}>" in text
    await world.gate.admit(replace(voice, role_ids=frozenset({PATRONS})))
    await world.gate.admit(replace(voice, is_admin=True))
    # @everyone (the guild's id) in the list means everyone.
    await world.policy.update(
        GUILD, lambda s: s.model_copy(update={"roles": {Feature.VOICE: (GUILD,)}})
    )
    await world.gate.admit(voice)


async def test_the_built_in_list_blocks_whole_words_in_any_form(world: World) -> None:
    for prompt in ["A NUDE portrait", "two nudes", "ｎｕｄｅ beach", "a child  porn thing"]:
        text = await refused(world.gate, ask(text=prompt))
        assert "nothing was sent to Ta-da" in text
    # Words inside other words are fine.
    await world.gate.admit(ask(text="a denuded hillside, Essex countryside"))
    voice = await refused(world.gate, ask(Feature.VOICE, Action.VOICE_SPEAK, text="say porn"))
    assert voice.startswith("Your text")


async def test_prompts_asking_for_explicit_images_are_refused_before_any_work(
    world: World,
) -> None:
    for prompt in [
        "a topless woman on a beach",
        "close-up of her nipples",
        "a man with his penis out",
        "an erotic photo, bare breasts",
        "the couple having sex",
        "fully undressed model",
    ]:
        text = await refused(world.gate, ask(text=prompt))
        assert "nothing was sent to Ta-da" in text, prompt
    # Ordinary prompts near those words pass.
    for prompt in ["a woman in a sweater on a beach", "Sussex coast at dawn", "a bare tree"]:
        await world.gate.admit(ask(text=prompt))


async def test_admins_change_the_word_list(world: World) -> None:
    moderation = Moderation(exempt_words=("nude",), blocked_words=("pineapple pizza",))
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"moderation": moderation}))
    await world.gate.admit(ask(text="a nude statue"))
    text = await refused(world.gate, ask(text="I love Pineapple   Pizza"))
    assert "pineapple pizza" in text
    off = Moderation(use_default_words=False)
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"moderation": off}))
    await world.gate.admit(ask(text="porn"))


async def test_blocked_patterns_and_slow_patterns(world: World) -> None:
    pattern = check_pattern(r"\bbuy\s+now\b")
    await world.policy.update(
        GUILD,
        lambda s: s.model_copy(update={"moderation": Moderation(blocked_patterns=(pattern,))}),
    )
    text = await refused(world.gate, ask(text="BUY   NOW cheap"))
    assert "pattern" in text
    with pytest.raises(UserFacingError, match="too slow"):
        check_pattern(r"(a|aa)+$")
    with pytest.raises(UserFacingError, match="valid regular expression"):
        check_pattern("(unclosed")
    with pytest.raises(UserFacingError, match="empty text"):
        check_pattern("x*")
    # A slow pattern stored anyway (an older version, a hand edit) fails closed.
    slow = moderator_for(Moderation(use_default_words=False, blocked_patterns=(r"(a|aa)+$",)))
    blocked = slow.check("a" * 40 + "!")
    assert blocked is not None and blocked.timed_out


def test_every_built_in_word_blocks_itself() -> None:
    moderator = moderator_for(Moderation())
    for word in DEFAULT_BLOCKED_WORDS:
        assert moderator.check(f"something {word} here") is not None, word


def test_the_most_generous_role_applies() -> None:
    rules = [
        QuotaRule(role_id=GUILD, feature=Feature.LORA, limit=Limit.IMAGES_PER_DAY, amount=5),
        QuotaRule(role_id=PATRONS, feature=Feature.LORA, limit=Limit.IMAGES_PER_DAY, amount=50),
        QuotaRule(role_id=GUILD, feature=Feature.LORA, limit=Limit.COOLDOWN_SECONDS, amount=60),
        QuotaRule(role_id=PATRONS, feature=Feature.LORA, limit=Limit.COOLDOWN_SECONDS, amount=10),
        QuotaRule(role_id=ARTISTS, feature=Feature.LORA, limit=Limit.IMAGES_PER_DAY, amount=None),
    ]
    everyone = {GUILD}
    assert effective_bound(rules, everyone, Feature.LORA, Limit.IMAGES_PER_DAY).amount == 5
    patron = {GUILD, PATRONS}
    assert effective_bound(rules, patron, Feature.LORA, Limit.IMAGES_PER_DAY).amount == 50
    assert effective_bound(rules, patron, Feature.LORA, Limit.COOLDOWN_SECONDS).amount == 10
    artist = effective_bound(rules, {GUILD, PATRONS, ARTISTS}, Feature.LORA, Limit.IMAGES_PER_DAY)
    assert artist.amount is None and artist.role_id == ARTISTS
    # A role without a rule neither gives nor takes.
    assert effective_bound(rules, {GUILD, 999}, Feature.LORA, Limit.IMAGES_PER_DAY).amount == 5
    assert effective_bound(rules, {999}, Feature.DEMO, Limit.IMAGES_PER_DAY).amount is None


def test_periods_reset_at_midnight_and_on_the_first() -> None:
    now = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert period_bounds(Period.DAY, now) == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds(Period.MONTH, now) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


async def test_daily_images_run_out_and_reset_at_midnight(world: World) -> None:
    rule = QuotaRule(role_id=GUILD, feature=Feature.LORA, limit=Limit.IMAGES_PER_DAY, amount=2)
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"quotas": (rule,)}))
    for _ in range(2):
        await world.gate.admit(ask())
        await world.gate.record(ask())
    text = await refused(world.gate, ask())
    assert "used all your LoRA allowance" in text and "<t:" in text
    # Trainings are a different limit: not counted against images.
    await world.gate.admit(ask(action=Action.LORA_TRAIN))
    world.clock.advance(hours=2)  # 00:00 UTC the next day
    await world.gate.admit(ask())


async def test_voice_characters_count_the_cost(world: World) -> None:
    rule = QuotaRule(
        role_id=GUILD, feature=Feature.VOICE, limit=Limit.VOICE_CHARACTERS_PER_DAY, amount=100
    )
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"quotas": (rule,)}))
    speak = ask(Feature.VOICE, Action.VOICE_SPEAK, text="x" * 80, cost=80)
    await world.gate.admit(speak)
    await world.gate.record(speak)
    text = await refused(world.gate, replace(speak, cost=30))
    assert "you have 20 of 100" in text
    await world.gate.admit(replace(speak, cost=20))


async def test_monthly_trainings_reset_on_the_first(world: World) -> None:
    rule = QuotaRule(role_id=GUILD, feature=Feature.LORA, limit=Limit.TRAININGS_PER_MONTH, amount=1)
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"quotas": (rule,)}))
    train = ask(action=Action.LORA_TRAIN, text=None)
    await world.gate.record(train)
    await refused(world.gate, train)
    world.clock.advance(hours=1)  # still March 31st
    await refused(world.gate, train)
    world.clock.advance(hours=1)  # April 1st, 00:00 UTC
    await world.gate.admit(train)


async def test_cooldown_between_requests_and_admins_are_exempt(world: World) -> None:
    rule = QuotaRule(role_id=GUILD, feature=Feature.DEMO, limit=Limit.COOLDOWN_SECONDS, amount=30)
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"quotas": (rule,)}))
    demo = ask(Feature.DEMO, Action.DEMO_GENERATE)
    await world.gate.admit(demo)
    await world.gate.record(demo)
    world.clock.advance(seconds=10)
    text = await refused(world.gate, demo)
    assert "Try again in 20 s" in text
    await world.gate.admit(replace(demo, is_admin=True))
    world.clock.advance(seconds=20)
    await world.gate.admit(demo)


async def test_a_demo_channel_lends_the_shared_key_only_there(world: World) -> None:
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"demo_channels": (DEMO_ROOM,)}))
    demo = ask(Feature.DEMO, Action.DEMO_GENERATE, channel=DEMO_ROOM)
    no_key = await world.gate.admit(demo)
    assert no_key.shared_key is None and "no shared key" in no_key.notes[0]
    await world.policy.set_shared_key(
        GUILD, world.keys.encrypt(SecretStr("tada_guildkey_123456")), world.clock()
    )
    lent = await world.gate.admit(demo)
    assert lent.shared_key is not None
    assert lent.shared_key.get_secret_value() == "tada_guildkey_123456"
    elsewhere = await world.gate.admit(replace(demo, channel_id=GENERAL))
    assert elsewhere.shared_key is None
    lora_there = await world.gate.admit(ask(channel=DEMO_ROOM))
    assert lora_there.shared_key is None
    # Stored encrypted, never in clear.
    async with world.store.session() as session:
        row = await session.get(GuildSettingsRow, GUILD)
    assert row is not None and row.shared_key_encrypted is not None
    assert b"guildkey" not in row.shared_key_encrypted
    # Usage on the shared key is marked so admins see what the guild pays for.
    await world.gate.record(demo)
    await world.gate.record(replace(demo, channel_id=GENERAL))
    lines = await world.policy.usage(GUILD, world.clock() - timedelta(days=1))
    assert [(x.requests, x.on_shared_key) for x in lines] == [(2, 1)]


async def test_private_results_setting_reaches_the_admission(world: World) -> None:
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"private_results": True}))
    assert (await world.gate.admit(ask())).private_results


async def test_missing_bot_permissions_are_named_before_any_work(world: World) -> None:
    perms = discord.Permissions(
        view_channel=True, send_messages=True, embed_links=True, attach_files=False
    )
    text = await refused(world.gate, ask(bot_permissions=perms))
    assert "**Attach Files**" in text and "Nothing was started" in text
    perms.attach_files = True
    await world.gate.admit(ask(bot_permissions=perms))


async def test_forget_deletes_usage_but_not_guild_settings(world: World) -> None:
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"private_results": True}))
    await world.gate.record(ask())
    members = MemberStore(world.store, world.keys)
    await members.save(ALICE, SecretStr("tada_alice_key_0000"), via=LinkedVia.LINK)
    assert await members.forget(ALICE) == 2  # her key and her usage row
    assert (await world.policy.settings(GUILD)).private_results


async def test_old_usage_is_pruned(world: World) -> None:
    await world.gate.record(ask())
    world.clock.advance(days=101)
    await world.gate.record(ask())
    async with world.store.session() as session:
        assert len((await session.scalars(select(UsageRow))).all()) == 1


async def test_requests_admitted_together_cannot_overrun_a_quota(world: World) -> None:
    rule = QuotaRule(role_id=GUILD, feature=Feature.LORA, limit=Limit.IMAGES_PER_DAY, amount=1)
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"quotas": (rule,)}))

    outcomes = await asyncio.gather(
        *(world.gate.admit(ask()) for _ in range(5)), return_exceptions=True
    )

    assert sum(isinstance(o, UserFacingError) for o in outcomes) == 4
    # Admitted but never recorded (the member was not linked, say): the hold expires.
    world.clock.advance(seconds=HOLD_SECONDS + 1)
    await world.gate.admit(ask())
    await world.gate.record(ask())
    await refused(world.gate, ask())
    # A recorded request counts once: its hold went when its row came.
    world.clock.advance(seconds=HOLD_SECONDS + 1)
    await refused(world.gate, ask())


async def test_a_cooldown_holds_for_requests_admitted_together(world: World) -> None:
    rule = QuotaRule(role_id=GUILD, feature=Feature.DEMO, limit=Limit.COOLDOWN_SECONDS, amount=30)
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"quotas": (rule,)}))
    demo = ask(Feature.DEMO, Action.DEMO_GENERATE)
    outcomes = await asyncio.gather(
        world.gate.admit(demo), world.gate.admit(demo), return_exceptions=True
    )
    assert sum(isinstance(o, UserFacingError) for o in outcomes) == 1


async def test_a_job_that_is_not_delivered_gives_its_request_back(world: World) -> None:
    rule = QuotaRule(role_id=GUILD, feature=Feature.LORA, limit=Limit.IMAGES_PER_DAY, amount=1)
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"quotas": (rule,)}))
    await world.gate.admit(ask())
    await world.gate.record(ask(), job_id="a" * 32)
    # Pending: it counts while the job runs.
    await refused(world.gate, ask())
    await world.gate.settle("a" * 32, delivered=False)
    await world.gate.admit(ask())
    await world.gate.record(ask(), job_id="b" * 32)
    await world.gate.settle("b" * 32, delivered=True)
    # Delivered counts; settling again (a second delivery round) changes nothing.
    await world.gate.settle("b" * 32, delivered=False)
    await refused(world.gate, ask())


async def test_an_unreadable_shared_key_asks_admins_to_set_it_again(world: World) -> None:
    await world.policy.update(GUILD, lambda s: s.model_copy(update={"demo_channels": (DEMO_ROOM,)}))
    other = KeyBox([SecretStr(Fernet.generate_key().decode())])
    await world.policy.set_shared_key(
        GUILD, other.encrypt(SecretStr("tada_guildkey_123456")), world.clock()
    )
    text = await refused(world.gate, ask(Feature.DEMO, Action.DEMO_GENERATE, channel=DEMO_ROOM))
    assert "`/tada-admin demo key`" in text
