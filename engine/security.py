"""API keys (generated, hashed) and HMAC-signed, expiring URLs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
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
