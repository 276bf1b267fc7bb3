"""``basic_auth``: HTTP Basic authentication against password hashes; the user is the consumer.

Only hashes are accepted in the config — bcrypt (``$2b$...``, also ``$2a$``/``$2y$``) or
``pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`` (Django's format) — so a plain-text
password is a load-time error. Hashes are checked in a worker thread (bcrypt and PBKDF2 are
slow on purpose and must not stall the event loop); a successful check is remembered in a
small in-memory cache keyed by a peppered SHA-256 of the credentials, so the slow hash is
paid once per credential rather than once per request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import OrderedDict
from collections.abc import Callable

import bcrypt
from pydantic import Field, field_validator

from gateway import Handler, PluginContext, Request, Response
from plugins.auth_common import AuthConfig, AuthPlugin

_BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_PBKDF2 = re.compile(r"^pbkdf2_sha256\$([1-9][0-9]{0,9})\$([^$\s]+)\$([A-Za-z0-9+/]{22,}={0,2})$")
HASH_FORMATS = "a bcrypt hash ($2b$...) or pbkdf2_sha256$<iterations>$<salt>$<base64 hash>"

Verifier = Callable[[bytes], bool]


def make_verifier(stored: str) -> Verifier:
    """A function telling whether a password matches ``stored``; ValueError for a non-hash."""
    if _BCRYPT.match(stored):
        hashed = stored.encode()

        def check_bcrypt(password: bytes) -> bool:
            if len(password) > 72:  # bcrypt reads 72 bytes at most; never accept "the first 72"
                return False
            try:
                return bcrypt.checkpw(password, hashed)
            except ValueError:
                return False

        return check_bcrypt
    match = _PBKDF2.match(stored)
    if match is None:
        raise ValueError(f"is not {HASH_FORMATS}")
    iterations, salt = int(match.group(1)), match.group(2).encode()
    try:
        expected = base64.b64decode(match.group(3), validate=True)
    except binascii.Error:
        raise ValueError(f"is not {HASH_FORMATS} (the hash is not valid base64)") from None

    def check_pbkdf2(password: bytes) -> bool:
        got = hashlib.pbkdf2_hmac("sha256", password, salt, iterations, len(expected))
        return hmac.compare_digest(got, expected)

    return check_pbkdf2


def parse_basic(value: str) -> tuple[str, bytes] | None:
    """``(user, password)`` from ``Basic base64(user:password)``; None when malformed."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


class BasicAuthConfig(AuthConfig):
    """Users and their password hashes (bring them in with ``${ENV}``)."""

    users: dict[str, str] = Field(min_length=1)
    cache_size: int = Field(default=1024, ge=0)  # credentials remembered after a successful check; 0: none

    @field_validator("users")
    @classmethod
    def _only_hashes(cls, users: dict[str, str]) -> dict[str, str]:
        for name, stored in users.items():
            if not name or ":" in name or re.search(r"[\x00-\x1f\x7f]", name):
                raise ValueError(f"user {name!r}: a user name must not be empty or contain ':' "
                                 "or control characters")
            try:
                make_verifier(stored)
            except ValueError as exc:  # the message never repeats the value: it may be a password
                raise ValueError(f"user {name!r}: the password {exc}; plain-text passwords "
                                 "are not accepted") from None
        return users


class BasicAuth(AuthPlugin[BasicAuthConfig]):
    """401 + ``WWW-Authenticate: Basic`` unless the user and password match; the user is the consumer."""

    name = "basic_auth"
    Config = BasicAuthConfig
    scheme = "Basic"

    def __init__(self, config: BasicAuthConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.challenge = f'Basic realm="{config.realm}", charset="UTF-8"'
        self._users = {name: make_verifier(stored) for name, stored in config.users.items()}
        # Unknown users are checked against a real hash too, so timing does not tell who exists.
        self._decoy = next(iter(self._users.values()))
        self._pepper = os.urandom(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    def _cache_key(self, user: str, password: bytes) -> bytes:
        name = user.encode()
        return hashlib.sha256(self._pepper + len(name).to_bytes(4, "big") + name + password).digest()

    async def _check(self, user: str, password: bytes) -> bool:
        key = self._cache_key(user, password)
        if key in self._verified:
            self._verified.move_to_end(key)
            return True
        verifier = self._users.get(user)
        ok = await asyncio.to_thread(verifier or self._decoy, password)
        if not ok or verifier is None:
            return False
        if self.config.cache_size:
            self._verified[key] = None
            if len(self._verified) > self.config.cache_size:
                self._verified.popitem(last=False)
        return True

    async def handle(self, request: Request, call_next: Handler) -> Response:
        scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "basic" or not value.strip():
            self.reject(request, "missing", "user name and password required (HTTP Basic)")
        credentials = parse_basic(value)
        if credentials is None:
            self.reject(request, "invalid", "malformed Basic credentials")
        user, password = credentials
        if not await self._check(user, password):
            self.reject(request, "invalid", "wrong user name or password")
        if self.config.hide_credentials:
            request.headers.popall("Authorization", None)
        request.consumer = user
        request.subject = None
        return await call_next(request)
