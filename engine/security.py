"""API keys (generated, hashed) and HMAC-signed, expiring URLs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

API_KEY_PREFIX = "tada_"


def generate_api_key() -> str:
    """A new API key: recognisable prefix plus 256 bits of randomness."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 of the key. Keys are high-entropy, so a fast hash is the right tool."""
    return hashlib.sha256(key.encode()).hexdigest()


class SignatureError(Exception):
    """A signed URL was tampered with, is for something else, or has expired."""


@dataclass(frozen=True, slots=True)
class UrlSigner:
    """Signs ``(method, resource, expires)`` with HMAC-SHA256."""

    key: bytes

    def sign(self, method: str, resource: str, expires: int) -> str:
        msg = f"{method.upper()}\n{resource}\n{expires}".encode()
        return hmac.new(self.key, msg, hashlib.sha256).hexdigest()

    def issue(self, method: str, resource: str, ttl_seconds: int) -> tuple[int, str]:
        """An expiry timestamp and its signature, ``ttl_seconds`` from now."""
        expires = int(time.time()) + ttl_seconds
        return expires, self.sign(method, resource, expires)

    def verify(self, method: str, resource: str, expires: int, signature: str) -> None:
        """Raise :class:`SignatureError` unless the signature matches and has not expired."""
        expected = self.sign(method, resource, expires)
        # Bytes, not str: compare_digest raises TypeError on non-ASCII str, and a signature
        # comes straight from the query string.
        if not hmac.compare_digest(expected.encode(), signature.encode(errors="replace")):
            raise SignatureError("signature does not match")
        if expires < int(time.time()):
            raise SignatureError("URL has expired")


class KeyCache:
    """Recently seen API key hashes and the user id each belongs to, for ``ttl`` seconds.

    Every authenticated request would otherwise read the user row first. Keys are never
    revoked or reassigned through the API, so a short-lived entry cannot grant what the
    database would refuse; unknown keys are not cached (a wrong key always reads the row).
    Bounded: past ``size`` entries the oldest is dropped.
    """

    def __init__(self, ttl: float = 60.0, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, key_hash: str) -> str | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        user_id, expires = entry
        if expires < time.monotonic():
            del self._entries[key_hash]
            return None
        return user_id

    def put(self, key_hash: str, user_id: str) -> None:
        self._entries[key_hash] = (user_id, time.monotonic() + self.ttl)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
