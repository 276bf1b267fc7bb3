"""Credentials for the auth tests: signed and forged JWTs, JWKs, Basic headers and hashes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from functools import cache
from typing import Any

import bcrypt
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SECRET = "0123456789abcdef0123456789abcdef-test-secret"  # 44 bytes: enough for HS256, not HS384


@cache
def rsa_key(n: int = 0) -> rsa.RSAPrivateKey:
    """An RSA private key; ``n`` picks one of several (cached: generating takes a moment)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: Any) -> str:
    return str(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    """The public half of an RSA key as a JWK."""
    data: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, **extra}


def token(key: Any, alg: str = "HS256", kid: str | None = None, **claims: Any) -> str:
    """A signed token; ``exp`` defaults to an hour from now (pass ``exp=None`` to leave it out)."""
    payload = {"sub": "alice@example.com", "exp": int(time.time()) + 3600, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_token(alg: str, hmac_key: bytes | None, **claims: Any) -> str:
    """A token PyJWT would refuse to make: ``alg=none`` (no signature), or HS* "signed" with
    arbitrary bytes such as a public key's PEM (the algorithm-confusion attack)."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps({"sub": "admin", "exp": int(time.time()) + 3600, **claims}).encode())
    signing_input = f"{header}.{body}".encode()
    signature = "" if hmac_key is None else b64url(hmac.new(hmac_key, signing_input, hashlib.sha256).digest())
    return f"{header}.{body}.{signature}"


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash with the lowest cost, so tests stay fast."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def pbkdf2_hash(password: str, salt: str = "s4lt", iterations: int = 1000) -> str:
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
