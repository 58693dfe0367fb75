"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.models import User
from engine.security import hash_api_key
from engine.services import EngineServices


async def get_services(request: Request) -> EngineServices:
    # async: a plain ``def`` dependency costs a threadpool hop on every request.
    services: EngineServices = request.app.state.services
    return services


Services = Annotated[EngineServices, Depends(get_services)]


async def get_session(services: Services) -> AsyncIterator[AsyncSession]:
    async with services.db.session() as session:
        yield session


Session = Annotated[AsyncSession, Depends(get_session)]

# Built once: building the expression is most of the cost of a one-row read (SQLAlchemy then
# finds the compiled form in its statement cache by this object's key). The id only, on the
# session's connection: no ORM entity to build, track and expire for each request.
_USER_ID_BY_KEY = select(User.id).where(User.key_hash == bindparam("key_hash"))


@dataclass(frozen=True, slots=True)
class Caller:
    """The account a request's ``X-API-Key`` belongs to: its id scopes every read."""

    id: str


async def get_current_user(
    session: Session,
    x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None,
) -> Caller:
    """The account owning ``X-API-Key``; 401 when it is missing or unknown."""
    if not x_api_key:
        raise HTTPException(401, "missing X-API-Key header")
    # Read every time: an account deleted (or a key replaced) must stop working at once,
    # in every API process; a per-process cache would keep it alive.
    conn = await session.connection()
    found = await conn.execute(_USER_ID_BY_KEY, {"key_hash": hash_api_key(x_api_key)})
    user_id = found.scalar_one_or_none()
    if user_id is None:
        raise HTTPException(401, "invalid API key")
    return Caller(id=user_id)


CurrentUser = Annotated[Caller, Depends(get_current_user)]


def base_url(request: Request, services: Services) -> str:
    """The base of absolute signed URLs: the configured public URL, else the address the
    server listens on. Never the request's ``Host`` (or forwarded host) header, which any
    client sets: signed URLs would point wherever the caller likes.
    """
    if services.settings.public_url:
        return services.settings.public_url.rstrip("/") + "/"
    server = request.scope.get("server")
    if server is None:
        settings = services.settings
        return f"http://{settings.host}:{settings.port}/"
    host, port = server[0], server[1]
    host = f"[{host}]" if ":" in str(host) else host
    default = port is None or port == 80
    return f"http://{host}/" if default else f"http://{host}:{port}/"


BaseUrl = Annotated[str, Depends(base_url)]
