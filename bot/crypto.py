"""Encryption at rest of members' API keys (Fernet: AES-128-CBC + HMAC-SHA256).

Several keys may be configured (``MultiFernet``): the first encrypts, every one decrypts,
so a key can be rotated without losing stored API keys (:meth:`KeyBox.rotate`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

from bot.config import ENCRYPTION_KEY_ENV, BotConfig, ConfigError


class DecryptionError(Exception):
    """A stored value could not be decrypted with any configured key."""


class KeyBox:
    """Encrypts and decrypts secrets; never shows its keys in a repr."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        if not keys:
            raise ConfigError("at least one encryption key is needed")
        try:
            fernets = [Fernet(k.get_secret_value().encode()) for k in keys]
        except ValueError as exc:
            raise ConfigError(
                f"{ENCRYPTION_KEY_ENV} must be Fernet keys (32 url-safe base64-encoded bytes)"
            ) from exc
        self._fernet = MultiFernet(fernets)
        # Keys of the pseudonyms (one per configured key, the first one for new rows);
        # derived, so a pseudonym reveals nothing about the encryption key.
        self._pseudonym_keys = tuple(
            hashlib.sha256(b"tada-bot pseudonym\0" + k.get_secret_value().encode()).digest()
            for k in keys
        )

    def __repr__(self) -> str:
        return "<KeyBox>"

    def encrypt(self, secret: SecretStr) -> bytes:
        """The ciphertext of ``secret`` under the first key."""
        return self._fernet.encrypt(secret.get_secret_value().encode())

    def decrypt(self, token: bytes) -> SecretStr:
        """The secret inside ``token`` (any configured key)."""
        try:
            return SecretStr(self._fernet.decrypt(token).decode())
        except InvalidToken as exc:
            raise DecryptionError(
                "stored secret cannot be decrypted with the configured keys"
            ) from exc

    def pseudonym(self, value: str) -> str:
        """A keyed hash of ``value`` (HMAC-SHA256 under the first key): the same value
        gives the same pseudonym, and without the bot's key it cannot be traced back."""
        return self.pseudonyms(value)[0]

    def pseudonyms(self, value: str) -> tuple[str, ...]:
        """The pseudonyms of ``value`` under every configured key (first key first), so
        rows written before a key rotation are still found."""
        data = value.encode()
        return tuple(hmac.new(k, data, hashlib.sha256).hexdigest() for k in self._pseudonym_keys)

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt ``token`` under the first key."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken as exc:
            raise DecryptionError(
                "stored secret cannot be decrypted with the configured keys"
            ) from exc


def dev_key_file(path: Path) -> SecretStr:
    """Read the development key file, creating it (mode 0600) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key())
    return SecretStr(path.read_text().strip())


def keybox_for(config: BotConfig) -> KeyBox:
    """The key box of this configuration: keys from the environment, or the dev key file."""
    if config.store.encryption_keys:
        return KeyBox(config.store.encryption_keys)
    if config.mode == "production":  # pragma: no cover - refused by BotConfig's validator
        raise ConfigError(f"{ENCRYPTION_KEY_ENV} is not set")
    return KeyBox([dev_key_file(config.key_file)])
