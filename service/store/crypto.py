"""Hub tokens at rest: Fernet with a key derived from ``SLIMFORMER_TOKEN_ENCRYPTION_KEY``."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken


class TokenCipher:
    """Encrypts Hub tokens at rest with a key derived from ``SLIMFORMER_TOKEN_ENCRYPTION_KEY``."""

    def __init__(self, secret: str) -> None:
        digest = hashlib.sha256(("slimformer-hub-token:" + secret).encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def encrypt(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def decrypt(self, ciphertext: str) -> str | None:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            return None
