"""``/tada-admin`` in SimCord, and its settings enforced on ``/demo`` as members use it,
against the real engine in-process (demo models on the tiny base)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import discord
import httpx
import pytest
import simcord
from discord import app_commands
from PIL import Image
from pydantic import SecretStr
from sqlalchemy import select

from bot.app import BotServices
from bot.gate import Action, Feature, GateRequest, request_for
from bot.jobs.runner import gate_request
from bot.policy import GuildSettingsRow
from bot.store import LinkedVia
from engine.settings import EngineSettings
from tests.bot.policy_world import (
    Server,
    admin_says,
    count_engine_calls,
    demo_engine_settings,
    demo_loras,
    make_server,
    take_refusals,
)
from tests.conftest import register

__all__ = ["demo_loras"]  # the module-scoped fixture, used through engine_settings

pytestmark = pytest.mark.simcord(settle_timeout=120)


@pytest.fixture
def engine_settings(tmp_path: Path, demo_loras: dict[str, Path]) -> EngineSettings:
    return demo_engine_settings(tmp_path / "engine", demo_loras)


@pytest.fixture
def server(simcord_env: simcord.Env) -> Server:
    return make_server(simcord_env)


async def link(services: BotServices, api: httpx.AsyncClient, member: simcord.MemberActor) -> None:
    key = await register(api, f"{member.name}@example.com")
    await services.members.save(member.id, SecretStr(key), via=LinkedVia.LINK)


async def test_a_non_admin_can_neither_see_nor_run_tada_admin(server: Server) -> None:
    admin_view = server.admin.available_commands(server.general)
    assert "tada-admin show" in admin_view and "tada-admin demo key" in admin_view
    member_view = server.alice.available_commands(server.general)
    assert "quota" in member_view
    assert not [c for c in member_view if c.startswith("tada-admin")]
    with pytest.raises(simcord.SetupError, match="not visible"):
        await server.alice.slash(server.general, "tada-admin show")


async def test_with_no_configuration_show_states_the_defaults(
    server: Server, services: BotServices
) -> None:
    result = await server.admin.slash(server.general, "tada-admin show")
    assert result.ephemeral and result.response is not None
    [embed] = result.response.embeds
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Channels"] == "Voice: everywhere\nLoRA: everywhere\nDemo: everywhere"
    assert fields["Roles"] == "Voice: everyone\nLoRA: everyone\nDemo: everyone"
    assert "not set" in fields["Community demo channels"]
    assert fields["Results"] == "posted in the channel for everyone"
    assert any(
        name.startswith("Quotas") and value == "none: no limits" for name, value in fields.items()
    )
    assert "Built-in word list: on" in fields["Moderation"]
    # Reading does not write.
    async with services.store.session() as session:
        assert (await session.scalars(select(GuildSettingsRow))).all() == []


async def test_every_setting_lands_on_the_show_page(server: Server) -> None:
    guild = server.guild
    art = guild.create_text_channel("art")
    demo = guild.create_text_channel("demo")
    artists = guild.create_role("Artists")

    answers = [
        await admin_says(server, "channels allow", feature="lora", channel=art),
        await admin_says(server, "roles allow", feature="voice", role=artists),
        await admin_says(server, "demo add", channel=demo),
        await admin_says(
            server,
            "quota set",
            role=guild.default_role,
            feature="demo",
            limit="images_per_day",
            amount=3,
        ),
        await admin_says(
            server,
            "quota set",
            role=artists,
            feature="demo",
            limit="images_per_day",
        ),
        await admin_says(server, "moderation block", word="Pineapple Pizza"),
        await admin_says(server, "moderation pattern", pattern=r"buy\s+now"),
        await admin_says(server, "moderation allow", term="nude"),
        await admin_says(server, "results", private=True),
    ]
    assert answers[0] == f"LoRA now works only in: <#{art.id}>."
    assert answers[1] == f"Voice is now for: <@&{artists.id}>."
    assert "no shared key yet" in answers[2].lower()
    assert answers[3] == "@everyone: Demo images per day is now 3."
    assert answers[4] == f"<@&{artists.id}>: Demo images per day is now no limit."

    result = await server.admin.slash(server.general, "tada-admin show")
    assert result.response is not None
    fields = {f.name.split(" (")[0]: f.value for f in result.response.embeds[0].fields}
    # Channels by name (a mention in an embed is not resolved everywhere).
    assert "LoRA: #art" in fields["Channels"], fields["Channels"]
    assert "<#" not in fields["Channels"] + fields["Community demo channels"]
    assert "Demo: everywhere" in fields["Channels"]
    assert f"Voice: <@&{artists.id}>" in fields["Roles"]
    assert f"#{demo.name}" in fields["Community demo channels"]
    assert fields["Results"] == "shown only to the member who asked"
    assert "@everyone: Demo images per day: 3" in fields["Quotas"]
    assert f"<@&{artists.id}>: Demo images per day: no limit" in fields["Quotas"]
    moderation = fields["Moderation"]
    assert "Allowed anyway: nude" in moderation
    assert "Your words: pineapple pizza" in moderation
    assert r"`buy\s+now`" in moderation


async def test_bad_settings_are_refused_and_change_nothing(
    simcord_env: simcord.Env, server: Server, services: BotServices
) -> None:
    result = await server.admin.slash(
        server.general,
        "tada-admin quota set",
        role=server.guild.default_role,
        feature="voice",
        limit="images_per_day",
        amount=5,
    )
    assert result.ephemeral and result.response is not None
    assert "Voice has no “images per day” limit" in result.response.content
    result = await server.admin.slash(
        server.general, "tada-admin moderation pattern", pattern="(a|aa)+$"
    )
    assert result.response is not None and "too slow" in result.response.content
    assert len(take_refusals(simcord_env)) == 2
    assert services.policy is not None
    settings = await services.policy.settings(server.guild.id)
    assert settings.quotas == () and settings.moderation.blocked_patterns == ()


async def test_a_member_without_the_role_is_refused(
    simcord_env: simcord.Env, server: Server, services: BotServices, api: httpx.AsyncClient
) -> None:
    artists = server.guild.create_role("Artists")
    await admin_says(server, "roles allow", feature="demo", role=artists)
    await link(services, api, server.alice)
    calls = count_engine_calls(api)

    result = await server.alice.slash(server.general, "demo tadz", prompt="a cat")

    assert result.ephemeral and result.response is not None
    assert f"<@&{artists.id}>" in result.response.content
    assert take_refusals(simcord_env) and calls == []
    # With the role, the same member gets the image.
    painter = server.guild.add_member(simcord_env.create_user("paula"), roles=[artists])
    await link(services, api, painter)
    posted = (await painter.slash(server.general, "demo tadz", prompt="a cat")).followups[-1]
    assert posted.attachments and painter.mention in posted.content


async def test_a_command_in_a_channel_not_allowed_says_where_to_go(
    simcord_env: simcord.Env, server: Server, services: BotServices, api: httpx.AsyncClient
) -> None:
    art = server.guild.create_text_channel("art")
    await admin_says(server, "channels allow", feature="demo", channel=art)
    await link(services, api, server.alice)
    calls = count_engine_calls(api)

    result = await server.alice.slash(server.general, "demo tadz", prompt="a cat")

    assert result.ephemeral and result.response is not None
    assert result.response.content == (
        f"`/demo` does not work in this channel on this server. It works in: <#{art.id}>."
    )
    assert take_refusals(simcord_env) and calls == []
    assert server.general.last_message is None


async def test_a_blocked_prompt_is_refused_without_any_ta_da_call(
    simcord_env: simcord.Env, server: Server, services: BotServices, api: httpx.AsyncClient
) -> None:
    await link(services, api, server.alice)
    await admin_says(server, "moderation block", word="pineapple pizza")
    calls = count_engine_calls(api)

    built_in = await server.alice.slash(server.general, "demo tadz", prompt="a NUDE cat")
    own = await server.alice.slash(server.general, "demo pudgy", prompt="pineapple  pizza party")

    assert built_in.response is not None and "“nude”" in built_in.response.content
    assert own.response is not None and "“pineapple pizza”" in own.response.content
    assert built_in.ephemeral and own.ephemeral
    assert len(take_refusals(simcord_env)) == 2
    assert calls == []
    jobs = await simcord_env.bot.jobs.store.for_member(server.alice.id)  # type: ignore[attr-defined]
    assert jobs == []


async def test_the_bot_missing_attach_files_is_reported_before_work_starts(
    simcord_env: simcord.Env, server: Server, services: BotServices, api: httpx.AsyncClient
) -> None:
    me = server.guild.me
    assert me is not None
    locked = server.guild.create_text_channel(
        "no-files", overwrites={me: discord.PermissionOverwrite(attach_files=False)}
    )
    await link(services, api, server.alice)
    calls = count_engine_calls(api)

    result = await server.alice.slash(locked, "demo tadz", prompt="a cat")

    assert result.ephemeral and result.response is not None
    assert "missing **Attach Files**" in result.response.content
    assert take_refusals(simcord_env) and calls == []
    assert locked.last_message is None


async def test_demo_in_a_demo_channel_runs_on_the_guild_key_for_a_member_without_account(
    simcord_env: simcord.Env, server: Server, services: BotServices, api: httpx.AsyncClient
) -> None:
    demo = server.guild.create_text_channel("demo")
    await admin_says(server, "demo add", channel=demo)
    shared = await register(api, "server@example.com")
    shown = await server.admin.slash(server.general, "tada-admin demo key")
    assert shown.modal is not None
    saved = await server.admin.submit_modal(shown, {"api_key": shared})
    assert saved.ephemeral and saved.response is not None
    assert "Saved the shared key `tada_…" in saved.response.content
    assert shared not in saved.response.content
    carol = server.guild.add_member(simcord_env.create_user("carol"))
    assert await services.members.get(carol.id) is None

    result = await carol.slash(demo, "demo pudgy", prompt="on a beach")

    posted = result.followups[-1]
    assert not posted.ephemeral and carol.mention in posted.content
    [image] = posted.attachments
    with Image.open(io.BytesIO(await image.read())) as decoded:
        assert decoded.width > 0
    # The job ran on the guild's key, not on an account of carol's.
    [job] = await simcord_env.bot.jobs.store.for_member(carol.id)  # type: ignore[attr-defined]
    assert job.has_shared_key
    # The key is stored encrypted and the show page never prints it.
    async with services.store.session() as session:
        row = await session.get(GuildSettingsRow, server.guild.id)
    assert row is not None and row.shared_key_encrypted is not None
    assert shared.encode() not in row.shared_key_encrypted
    page = await server.admin.slash(server.general, "tada-admin show")
    assert page.response is not None
    assert shared not in str([f.value for f in page.response.embeds[0].fields])
    # Usage says what ran on the shared key.
    usage = await admin_says(server, "usage", days=1)
    assert "1 demo image (1 on the shared key)" in usage
    assert f"1. <@{carol.id}>: 1 request" in usage
    # Outside the demo channel the same member needs an account.
    elsewhere = await carol.slash(server.general, "demo pudgy", prompt="on a beach")
    assert elsewhere.response is not None and "/tada register" in elsewhere.response.content
    take_refusals(simcord_env)


async def test_a_wrong_shared_key_is_not_saved(
    simcord_env: simcord.Env, server: Server, services: BotServices
) -> None:
    shown = await server.admin.slash(server.general, "tada-admin demo key")
    saved = await server.admin.submit_modal(shown, {"api_key": "tada_not_a_real_key_000"})
    assert saved.response is not None and "not saved" in saved.response.content
    take_refusals(simcord_env)
    assert services.policy is not None
    assert (await services.policy.shared_key_info(server.guild.id)).set_at is None
    forgot = await admin_says(server, "demo forget-key")
    assert forgot == "There was no shared key to delete."


async def test_help_lists_tada_admin_as_one_line(server: Server) -> None:
    result = await server.alice.slash(server.general, "tada help")
    assert result.response is not None
    text = result.response.content
    assert "`/tada-admin`: Set up Ta-da for this server (server managers)" in text
    assert "`/quota`:" in text and "tada-admin show" not in text


async def test_a_thread_works_where_its_channel_does(
    simcord_env: simcord.Env, server: Server, services: BotServices, api: httpx.AsyncClient
) -> None:
    art = server.guild.create_text_channel("art")
    await admin_says(server, "channels allow", feature="demo", channel=art)
    await link(services, api, server.alice)
    parent = simcord_env.bot.get_channel(art.id)
    assert isinstance(parent, discord.TextChannel)
    await parent.create_thread(name="cats", type=discord.ChannelType.public_thread)
    [thread] = art.threads

    result = await server.alice.slash(thread, "demo tadz", prompt="a cat")

    posted = result.followups[-1]
    assert posted.attachments and server.alice.mention in posted.content


@pytest.mark.simcord(strict_sync=False, settle_timeout=120)
async def test_request_for_reads_roles_administrators_and_the_bots_permissions(
    simcord_env: simcord.Env, server: Server
) -> None:
    seen: list[GateRequest] = []

    @app_commands.command(name="probe", description="What the gate would see")
    async def probe(interaction: discord.Interaction[Any]) -> None:
        seen.append(request_for(interaction, Feature.DEMO, Action.DEMO_GENERATE, text="hi"))
        await interaction.response.send_message("ok", ephemeral=True)

    simcord_env.bot.tree.add_command(probe)
    artists = server.guild.create_role("Artists")
    boss = server.guild.create_role("Boss", permissions=discord.Permissions(administrator=True))
    painter = server.guild.add_member(simcord_env.create_user("paula"), roles=[artists])
    owner = server.guild.add_member(simcord_env.create_user("olga"), roles=[boss])
    me = server.guild.me
    assert me is not None
    locked = server.guild.create_text_channel(
        "no-files", overwrites={me: discord.PermissionOverwrite(attach_files=False)}
    )

    await painter.slash(locked, "probe")
    await owner.slash(server.general, "probe")

    member, admin = seen
    assert member.user_id == painter.id and member.guild_id == server.guild.id
    assert member.channel_id == locked.id and member.text == "hi"
    assert artists.id in member.role_ids and not member.is_admin
    assert member.bot_permissions is not None and not member.bot_permissions.attach_files
    assert admin.is_admin
    assert admin.bot_permissions is not None and admin.bot_permissions.attach_files


@pytest.mark.simcord(strict_sync=False, settle_timeout=120)
async def test_job_requests_carry_the_bots_permissions_in_the_channel(
    simcord_env: simcord.Env, server: Server
) -> None:
    """The runner asks the gate with Discord's ``app_permissions`` (not the bot's cache)."""
    seen: list[GateRequest] = []
    runner = simcord_env.bot.jobs  # type: ignore[attr-defined]

    @app_commands.command(name="probe", description="What the runner's gate would see")
    async def probe(interaction: discord.Interaction[Any]) -> None:
        seen.append(gate_request(interaction, runner.demo_request("tadz", "a cat")))
        await interaction.response.send_message("ok", ephemeral=True)

    simcord_env.bot.tree.add_command(probe)
    me = server.guild.me
    assert me is not None
    locked = server.guild.create_text_channel(
        "no-files", overwrites={me: discord.PermissionOverwrite(attach_files=False)}
    )

    await server.alice.slash(locked, "probe")
    await server.alice.slash(server.general, "probe")

    there, here = seen
    assert there.text == "a cat" and there.feature is Feature.DEMO
    assert there.bot_permissions is not None and not there.bot_permissions.attach_files
    assert here.bot_permissions is not None and here.bot_permissions.attach_files
