"""``/api/users``: registration."""

from __future__ import annotations

import unicodedata
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from engine.api.deps import Session
from engine.api.errors import invalid
from engine.models import User, as_utc
from engine.schemas import RegisterResponse
from engine.security import generate_api_key, hash_api_key

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


@router.post("/register", response_model=RegisterResponse)
async def register(
    session: Session, email: Annotated[str, Query(min_length=3, max_length=320)]
) -> RegisterResponse:
    """Create an account and return its API key, once. An email already registered is 409."""
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
