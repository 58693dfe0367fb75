"""Members' Ta-da accounts: register, link, summarise, forget, and a client per member."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import SecretStr

from bot.errors import NotLinked, UserFacingError
from bot.store import LinkedAccount, LinkedVia, MemberStore, mask_key
from bot.tada import Conflict, InvalidRequest, TadaClient, TadaError, Unauthorized

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NewAccount:
    """A registered account; ``api_key`` is for showing the member once, ephemerally."""

    email: str
    api_key: SecretStr

    @property
    def masked_key(self) -> str:
        """The key masked for display."""
        return mask_key(self.api_key)


@dataclass(frozen=True, slots=True)
class AccountSummary:
    """What ``/tada account`` shows. A count is ``None`` when the API could not give it."""

    masked_key: str
    linked_via: LinkedVia
    email: str | None
    linked_at: datetime
    voices: int | None
    loras: int | None
    generations: int | None


async def verified_key(
    tada: TadaClient, api_key: SecretStr, *, empty: str, otherwise: str = ""
) -> SecretStr:
    """``api_key`` stripped of what a paste brings around it, once Ta-da accepted it: the one
    check before the bot saves a key (a member's own, a guild's shared demo key).

    A refusal is a :class:`UserFacingError`: ``empty`` when nothing is left after stripping,
    else that Ta-da does not accept the key (``otherwise`` ends that sentence with another
    way out, e.g. ``", or create a new account with `/tada register`"``).
    """
    cleaned = SecretStr(api_key.get_secret_value().strip())
    if not cleaned.get_secret_value():
        raise UserFacingError(empty)
    try:
        await tada.with_key(cleaned).verify_key()
    except Unauthorized as exc:
        raise UserFacingError(
            "Ta-da does not accept that API key, so it was not saved. Check that you "
            f"copied all of it{otherwise}."
        ) from exc
    return cleaned


class AccountService:
    """Everything about members' accounts; cogs call this and only render the result."""

    def __init__(self, members: MemberStore, tada: TadaClient) -> None:
        self._members = members
        self._tada = tada

    async def account(self, discord_user_id: int) -> LinkedAccount | None:
        """The member's linked account, if any."""
        return await self._members.get(discord_user_id)

    async def client_for(
        self, discord_user_id: int, *, shared_key: SecretStr | None = None
    ) -> TadaClient:
        """A Ta-da client acting for the member: with ``shared_key`` (a guild's demo key the
        gate lent) when given, else with their own key; :class:`NotLinked` when they have
        none. The one place the bot chooses whose key a call uses."""
        if shared_key is not None:
            return self._tada.with_key(shared_key)
        account = await self._members.get(discord_user_id)
        if account is None:
            raise NotLinked()
        return self._tada.with_key(account.api_key)

    async def register(self, discord_user_id: int, email: str) -> NewAccount:
        """Create a Ta-da account for ``email`` and keep its key for the member."""
        try:
            registration = await self._tada.register(email.strip())
        except Conflict as exc:
            raise UserFacingError(
                "That email already has a Ta-da account. If it is yours, use `/tada link` "
                "with its API key."
            ) from exc
        except InvalidRequest as exc:
            raise UserFacingError(
                f"That does not look like a valid email address ({exc.message}). "
                "Run `/tada register` again."
            ) from exc
        await self._members.save(
            discord_user_id,
            registration.api_key,
            via=LinkedVia.REGISTER,
            email=registration.email or email.strip(),
        )
        log.info("member %s registered a Ta-da account", discord_user_id)
        return NewAccount(email=registration.email or email.strip(), api_key=registration.api_key)

    async def link(self, discord_user_id: int, api_key: SecretStr) -> str:
        """Check ``api_key`` against the API, then keep it; returns the masked key."""
        cleaned = await verified_key(
            self._tada,
            api_key,
            empty="The API key was empty. Run `/tada link` again and paste it.",
            otherwise=", or create a new account with `/tada register`",
        )
        await self._members.save(discord_user_id, cleaned, via=LinkedVia.LINK)
        log.info("member %s linked a Ta-da API key", discord_user_id)
        return mask_key(cleaned)

    async def summary(self, discord_user_id: int) -> AccountSummary:
        """The member's account and how much they have made (counts read from the API)."""
        account = await self._members.get(discord_user_id)
        if account is None:
            raise NotLinked()
        client = self._tada.with_key(account.api_key)
        voices, loras, voice_gens, lora_gens = await asyncio.gather(
            _count(client.list_voices(), "voices"),
            _count(client.list_lora_uploads(), "loras"),
            _total(client.list_all_voice_generations(limit=1)),
            _count(client.list_all_lora_generations(limit=100), "lora generations"),
        )
        generations = None
        if voice_gens is not None or lora_gens is not None:
            generations = (voice_gens or 0) + (lora_gens or 0)
        return AccountSummary(
            masked_key=account.masked_key,
            linked_via=account.linked_via,
            email=account.email,
            linked_at=account.created_at,
            voices=voices,
            loras=loras,
            generations=generations,
        )

    async def forget(self, discord_user_id: int) -> int:
        """Delete the member's key and every row the bot keeps about them."""
        deleted = await self._members.forget(discord_user_id)
        log.info("member %s asked to be forgotten: %d row(s) deleted", discord_user_id, deleted)
        return deleted


async def _count(call: Awaitable[Sequence[Any]], what: str) -> int | None:
    try:
        return len(await call)
    except Unauthorized:
        raise
    except TadaError as exc:
        # One missing count must not hide the rest of the summary.
        log.info("account summary: %s unavailable: %s", what, exc)
        return None


async def _total(call: Awaitable[object]) -> int | None:
    try:
        page = await call
    except Unauthorized:
        raise
    except TadaError as exc:
        log.info("account summary: voice generations unavailable: %s", exc)
        return None
    total = getattr(page, "total", None)
    return total if isinstance(total, int) else None
