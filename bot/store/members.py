"""Members and their API keys: encrypted on the way in, decrypted only to make a call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import SecretStr
from sqlalchemy import delete, select, update

from bot.crypto import KeyBox
from bot.store.db import Store
from bot.store.models import MEMBER_COLUMN, Base, LinkedVia, Member, utcnow


def mask_key(key: SecretStr) -> str:
    """A recognisable but useless form of a key: its prefix and last four characters."""
    value = key.get_secret_value()
    if len(value) <= 12:
        return "•" * len(value)
    head = value[:5] if value.startswith("tada_") else value[:2]
    return f"{head}…{value[-4:]}"


@dataclass(frozen=True, slots=True)
class LinkedAccount:
    """What the store knows about a linked member (the key stays secret in reprs)."""

    discord_user_id: int
    api_key: SecretStr
    linked_via: LinkedVia
    email: str | None
    created_at: datetime

    @property
    def masked_key(self) -> str:
        """The key masked for display."""
        return mask_key(self.api_key)


class MemberStore:
    """Reads and writes members; every key crosses this class encrypted."""

    def __init__(self, store: Store, keys: KeyBox) -> None:
        self._store = store
        self._keys = keys

    def __repr__(self) -> str:
        return f"<MemberStore {self._store!r}>"

    @property
    def keys(self) -> KeyBox:
        """The key box, for other secrets kept at rest the same way (a shared demo key)."""
        return self._keys

    async def get(self, discord_user_id: int) -> LinkedAccount | None:
        """The member's account, or ``None`` when they never linked one."""
        async with self._store.session() as session:
            row = await session.get(Member, discord_user_id)
        if row is None:
            return None
        return LinkedAccount(
            discord_user_id=row.discord_user_id,
            api_key=self._keys.decrypt(row.api_key_encrypted),
            linked_via=LinkedVia(row.linked_via),
            email=row.email,
            created_at=row.created_at,
        )

    async def save(
        self,
        discord_user_id: int,
        api_key: SecretStr,
        *,
        via: LinkedVia,
        email: str | None = None,
    ) -> None:
        """Store (or replace) the member's key, encrypted."""
        ciphertext = self._keys.encrypt(api_key)
        async with self._store.session() as session:
            row = await session.get(Member, discord_user_id)
            if row is None:
                session.add(
                    Member(
                        discord_user_id=discord_user_id,
                        api_key_encrypted=ciphertext,
                        linked_via=via.value,
                        email=email,
                    )
                )
            else:
                row.api_key_encrypted = ciphertext
                row.linked_via = via.value
                row.email = email
                row.updated_at = utcnow()
            await session.commit()

    async def forget(self, discord_user_id: int) -> int:
        """Delete every row the bot keeps about the member; returns how many went.

        Every table with a ``discord_user_id`` column is included, so tables added later
        (jobs, usage counters) are covered without touching this method. A table whose
        ``info["on_forget"]`` is ``"unlink"`` keeps its rows with that column cleared.
        """
        deleted = 0
        async with self._store.session() as session:
            for table in reversed(Base.metadata.sorted_tables):
                column = table.columns.get(MEMBER_COLUMN)
                if column is None:
                    continue
                if table.info.get("on_forget") == "unlink":
                    # Kept without the member's id (usage counts, found by pseudonym).
                    result = await session.execute(
                        update(table).where(column == discord_user_id).values({column.name: None})
                    )
                else:
                    result = await session.execute(delete(table).where(column == discord_user_id))
                deleted += int(getattr(result, "rowcount", 0) or 0)
            await session.commit()
        return deleted

    async def count(self) -> int:
        """How many members have a key stored."""
        async with self._store.session() as session:
            return len((await session.scalars(select(Member.discord_user_id))).all())
