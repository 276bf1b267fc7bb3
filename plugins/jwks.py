"""Public keys for the ``jwt`` plugin: PEM loading, which key fits which algorithm, and
``JwksKeys`` — a JWKS fetched at startup with the gateway's client, refreshed in the
background, refetched (at most once per 10 s) for an unknown ``kid``, kept through outages."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import aiohttp
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from yarl import URL

log = logging.getLogger("gateway.plugins.jwt")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1", "ES256K": "secp256k1"}

def key_fits(key: object, alg: str) -> bool:
    """Tell whether ``key`` is the kind of public key algorithm ``alg`` verifies with."""
    if alg[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _CURVES[alg]
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def load_public_key(pem: str) -> PublicKey:
    """A public key from PEM text (``PUBLIC KEY`` or a ``CERTIFICATE``); ValueError otherwise."""
    data = pem.strip().replace("\\n", "\n").encode()  # tolerate "\n" escapes from an env var
    try:
        if b"CERTIFICATE" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("`public_key` is not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    if not isinstance(key, PublicKey):
        raise ValueError(f"`public_key` is a {type(key).__name__}, not an RSA, EC or Ed25519/Ed448 key")
    return key


class JwkEntry(NamedTuple):
    """One verification key: its ``kid``, the key, and the ``alg`` it is bound to (if any)."""

    kid: str | None
    key: Any
    alg: str | None


def parse_jwks(document: Any) -> list[JwkEntry]:
    """The usable signature keys of a JWKS document; symmetric (``oct``) keys are never used."""
    entries = []
    keys = document.get("keys") if isinstance(document, dict) else None
    for jwk in keys if isinstance(keys, list) else []:
        if not isinstance(jwk, dict) or jwk.get("kty") == "oct" or jwk.get("use", "sig") != "sig":
            continue
        try:
            key: Any = jwt.PyJWK(jwk).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if not isinstance(key, PublicKey) and callable(getattr(key, "public_key", None)):
            key = key.public_key()  # a JWKS should not carry private parts; use the public half
        kid, alg = jwk.get("kid"), jwk.get("alg")
        if isinstance(key, PublicKey):
            entries.append(JwkEntry(kid if isinstance(kid, str) else None, key, alg if isinstance(alg, str) else None))
    return entries


class JwksKeys:
    """Signing keys from a JWKS URL, never fetched per request.

    Fetched at startup and every ``ttl`` in the background (sooner after a failure); a token
    with an unknown ``kid`` triggers one refetch at most every ``REFETCH_INTERVAL`` seconds.
    A failed fetch keeps the keys already known.
    """

    REFETCH_INTERVAL = 10.0
    FETCH_TIMEOUT = 5.0
    MAX_BYTES = 1024 * 1024

    def __init__(self, url: str, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.ttl = ttl
        self.clock = clock
        self.entries: list[JwkEntry] = []
        self._by_kid: dict[str, list[JwkEntry]] = {}
        self._session: Callable[[], aiohttp.ClientSession] | None = None
        self._last_refetch: float | None = None
        self._inflight: asyncio.Future[bool] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._shown = str(URL(url).with_query(None).with_fragment(None))  # logs never show a query

    async def start(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        """Fetch once (a failure is logged, not fatal) and start the background refresh."""
        self._session = session
        ok = await self.refresh()
        self._loop_task = asyncio.create_task(self._refresh_loop(ok))

    async def stop(self) -> None:
        """Stop the background refresh (and a fetch under way)."""
        tasks = [task for task in (self._loop_task, self._inflight) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = self._inflight = None

    def use(self, entries: list[JwkEntry]) -> None:
        """Replace the known keys (as a successful fetch does)."""
        by_kid: dict[str, list[JwkEntry]] = {}
        for entry in entries:
            if entry.kid is not None:
                by_kid.setdefault(entry.kid, []).append(entry)
        self.entries, self._by_kid = entries, by_kid

    def lookup(self, kid: str | None) -> list[JwkEntry]:
        """The keys for ``kid``; every key for a token without one."""
        return list(self.entries) if kid is None else self._by_kid.get(kid, [])

    async def refetch(self, kid: str | None) -> list[JwkEntry]:
        """Refetch for an unknown ``kid`` unless that was done less than 10 s ago."""
        if self._inflight is not None:  # a fetch is under way: its keys may include this kid
            await self.refresh()
            return self.lookup(kid)
        now = self.clock()
        if self._last_refetch is not None and now - self._last_refetch < self.REFETCH_INTERVAL:
            return []
        self._last_refetch = now
        await self.refresh()
        return self.lookup(kid)

    async def refresh(self) -> bool:
        """Fetch the JWKS (one fetch at a time, shared by concurrent callers)."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._fetched)
        return await asyncio.shield(self._inflight)

    def _fetched(self, future: asyncio.Future[bool]) -> None:
        if self._inflight is future:
            self._inflight = None

    async def _refresh_loop(self, ok: bool) -> None:
        while True:
            await asyncio.sleep(self.ttl if ok else min(self.ttl, self.REFETCH_INTERVAL))
            ok = await self.refresh()

    async def _fetch(self) -> bool:
        if self._session is None:
            return False
        try:
            async with self._session().get(
                self.url, headers={"Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.FETCH_TIMEOUT),
            ) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                body = await response.content.read(self.MAX_BYTES + 1)
                if len(body) > self.MAX_BYTES:
                    raise ValueError(f"larger than {self.MAX_BYTES} bytes")
            entries = parse_jwks(json.loads(body))
            if not entries:
                raise ValueError("no usable signature keys in it")
        except Exception as exc:  # any failure here must leave the cached keys in use
            log.warning("JWKS %s could not be fetched (%s: %s); keeping %d cached keys",
                        self._shown, type(exc).__name__, exc, len(self.entries))
            return False
        self.use(entries)
        log.info("JWKS %s: %d keys", self._shown, len(entries))
        return True
