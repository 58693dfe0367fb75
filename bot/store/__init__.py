"""The bot's store: SQLAlchemy 2 (async) over SQLite by default, PostgreSQL by URL."""

from bot.store.db import Store
from bot.store.members import LinkedAccount, MemberStore, mask_key
from bot.store.models import Base, JobRow, LinkedVia, Member

__all__ = [
    "Base",
    "JobRow",
    "LinkedAccount",
    "LinkedVia",
    "Member",
    "MemberStore",
    "Store",
    "mask_key",
]
