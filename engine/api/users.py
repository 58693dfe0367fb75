"""``/api/users``: registration."""

from __future__ import annotations

import hmac
import unicodedata
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from fastapi import APIRouter, Header, HTTPException, Query
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from engine.api.deps import Services, Session
from engine.api.errors import invalid
from engine.models import User, as_utc
from engine.schemas import RegisterResponse
from engine.security import generate_api_key, hash_api_key
from engine.settings import RegistrationSettings

router = APIRouter(prefix="/api/users", tags=["users"])


MAX_LOCAL_PART = 64  # RFC 5321 section 4.5.3.1.1


def normalise_email(raw: str) -> str:
    """One spelling per address: NFKC (fullwidth and other compatibility forms fold to
    their plain letters), case-folded, validated, local part at most 64 characters."""
    folded = unicodedata.normalize("NFKC", raw.strip()).casefold()
    try:
        info = validate_email(folded, check_deliverability=False)
    except EmailNotValidError as exc:
        invalid("query", "email", f"not a valid email address: {exc}", raw)
    if len(info.local_part) > MAX_LOCAL_PART:
        invalid(
            "query", "email", f"the part before @ must be at most {MAX_LOCAL_PART} characters", raw
        )
    return unicodedata.normalize("NFKC", info.normalized).casefold()


def check_registration_allowed(settings: RegistrationSettings, token: str | None) -> None:
    """403 unless this engine's registration mode lets the caller create an account."""
    if settings.mode == "closed":
        raise HTTPException(
            403, "registration is closed on this engine; ask its operator for a key"
        )
    if settings.mode == "token":
        expected = settings.token.get_secret_value() if settings.token else ""
        if not token or not hmac.compare_digest(token.encode(), expected.encode()):
            raise HTTPException(
                403, "registration on this engine needs the operator's X-Registration-Token"
            )


@router.post("/register", response_model=RegisterResponse)
async def register(
    session: Session,
    services: Services,
    email: Annotated[str, Query(min_length=3, max_length=320)],
    x_registration_token: Annotated[
        str | None,
        Header(
            alias="X-Registration-Token",
            description="Engine extension: needed when registration.mode = 'token'",
        ),
    ] = None,
) -> RegisterResponse:
    """Create an account and return its API key, once. An email already registered is 409."""
    check_registration_allowed(services.settings.registration, x_registration_token)
    address = normalise_email(email)
    if await session.scalar(select(User.id).where(User.email == address)):
        raise HTTPException(409, "this email is already registered; use its existing API key")
    key = generate_api_key()
    user = User(email=address, key_hash=hash_api_key(key), key_prefix=key[:9])
    session.add(user)
    try:
        await session.commit()
    except IntegrityError as exc:  # a concurrent registration of the same email won
        await session.rollback()
        raise HTTPException(
            409, "this email is already registered; use its existing API key"
        ) from exc
    return RegisterResponse(
        id=user.id, email=address, api_key=key, created_at=as_utc(user.created_at)
    )
