"""``jwt``: a Bearer JSON Web Token, verified with PyJWT, identifies the caller.

A ``sub`` listed in a consumer's ``jwt_subjects`` makes that consumer ``request.consumer``
(sent upstream as ``X-Consumer``). Any other ``sub`` is only ``request.subject`` (sent as
``X-Consumer-Subject``), or refused with ``require_consumer = true``: a token can never
claim a configured consumer's name by carrying it as its ``sub``.

The key material fixes the algorithm family, checked when the config is loaded: ``secret``
verifies HS256/384/512 only; ``public_key`` (PEM) or ``jwks_url`` verify RS*/PS*/ES*/EdDSA
only. So ``alg=none`` and HS/RS confusion (an HS256 token "signed" with the public key)
never verify, whatever the token's header says. Keys from a JWKS are kept by ``JwksKeys``.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator

from gateway import DURATION_SCHEMA, Duration, Handler, PluginContext, Request, Response, parse_duration
from plugins.auth_common import AuthConfig, AuthPlugin, HeaderName, Reason, safe_header_value
from plugins.jwks import JwkEntry, JwksKeys, PublicKey, key_fits, load_public_key

if TYPE_CHECKING:
    from jwt.types import Options

log = logging.getLogger("gateway.plugins.jwt")

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
KNOWN_ALGORITHMS = HMAC_ALGORITHMS | {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                      "ES256", "ES256K", "ES384", "ES512", "EdDSA"}
# Unlike gateway.config_model.Duration this allows "0s" (no clock leeway at all).
Leeway = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_SCHEMA)]


class JwtConfig(AuthConfig):
    """Which tokens are accepted and what is taken from them."""

    algorithms: list[str] = Field(min_length=1)  # required: an explicit allow-list
    secret: str | None = None  # HS256/384/512
    public_key: str | None = None  # PEM, for RS*/PS*/ES*/EdDSA
    jwks_url: str | None = Field(default=None, pattern=r"^https?://")
    jwks_ttl: Duration = 300.0  # how often the JWKS is fetched again in the background
    audience: str | list[str] | None = None
    issuer: str | list[str] | None = None
    leeway: Leeway = 30.0  # clock skew allowed for exp / nbf / iat
    required_claims: list[str] = Field(default_factory=list)
    claims_to_headers: dict[str, HeaderName] = Field(default_factory=dict)
    require_consumer: bool = False  # refuse a token whose sub is in no consumer's jwt_subjects

    @field_validator("claims_to_headers")
    @classmethod
    def _no_identity_headers(cls, headers: dict[str, HeaderName]) -> dict[str, HeaderName]:
        for claim, name in headers.items():
            # "X_Consumer" too: some upstreams (CGI/WSGI) read "_" and "-" as the same.
            if name.lower().replace("_", "-").startswith("x-consumer"):
                raise ValueError(f"claim {claim!r}: the header {name!r} is not allowed; X-Consumer* headers "
                                 "are set by the gateway only (the consumer, or X-Consumer-Subject)")
        return headers


def _need(algorithms: list[str]) -> str:
    return "needs" if len(algorithms) == 1 else "need"


def check_algorithms(config: JwtConfig) -> tuple[bytes | PublicKey | None, JwksKeys | None]:
    """Validate the option combination; return the static key or the JWKS holder."""
    if config.audience == [] or config.issuer == []:
        raise ValueError("`audience` and `issuer` must not be empty lists (leave them out to not check them)")
    sources = [name for name in ("secret", "public_key", "jwks_url") if getattr(config, name)]
    if len(sources) != 1:
        raise ValueError("set exactly one of `secret` (HS256/384/512), `public_key` (PEM) or "
                         f"`jwks_url` (RS*/PS*/ES*/EdDSA); got {', '.join(sources) or 'none'}")
    for alg in config.algorithms:
        if alg.lower() == "none":
            raise ValueError('`algorithms` must not contain "none": unsigned tokens are never accepted')
        if alg not in KNOWN_ALGORITHMS:
            raise ValueError(f"unknown algorithm {alg!r} (known: {', '.join(sorted(KNOWN_ALGORITHMS))})")
    hmac_algs = [a for a in config.algorithms if a in HMAC_ALGORITHMS]
    other = [a for a in config.algorithms if a not in HMAC_ALGORITHMS]
    if config.secret is not None:
        if other:
            raise ValueError(f"{', '.join(other)} {_need(other)} `public_key` or `jwks_url`: `secret` verifies "
                             "HS256/HS384/HS512 only (one key never serves both families)")
        secret = config.secret.encode()
        for alg in hmac_algs:
            need = {"HS256": 32, "HS384": 48, "HS512": 64}[alg]
            if len(secret) < need:  # accepted, as other gateways do, but said loudly
                log.warning("jwt: the `secret` is %d bytes; %s should have at least %d (RFC 7518 §3.2), "
                            "e.g. `openssl rand -base64 %d`", len(secret), alg, need, need)
        return secret, None
    if hmac_algs:
        raise ValueError(f"{', '.join(hmac_algs)} {_need(hmac_algs)} `secret`: HS and RS/ES/EdDSA algorithms cannot "
                         "share a key (that is the algorithm-confusion attack)")
    if config.jwks_url is not None:
        return None, JwksKeys(config.jwks_url, config.jwks_ttl)
    key = load_public_key(config.public_key or "")
    for alg in config.algorithms:
        if not key_fits(key, alg):
            raise ValueError(f"the `public_key` ({type(key).__name__}) cannot verify {alg}")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ValueError("the RSA `public_key` is shorter than 2048 bits")
    return key, None


# PyJWT's errors, most specific first, as the failure reason and a safe description.
_DESCRIPTIONS: tuple[tuple[type[Exception], Reason, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "invalid", "the token is not valid yet"),
    (jwt.InvalidAudienceError, "invalid", "the token is not meant for this audience"),
    (jwt.InvalidIssuerError, "invalid", "the token's issuer is not accepted"),
    (jwt.InvalidSignatureError, "invalid", "the token's signature is not valid"),
    (jwt.InvalidAlgorithmError, "invalid", "the token's algorithm is not accepted"),
    (jwt.DecodeError, "invalid", "the token is malformed"),
)


def describe(exc: Exception) -> tuple[Reason, str]:
    """The failure reason and a short, safe description (never the token) of a PyJWT error."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return "invalid", f"the token lacks the required claim {exc.claim}"
    for kind, reason, description in _DESCRIPTIONS:
        if isinstance(exc, kind):
            return reason, description
    return "invalid", "the token is not valid"


def is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode text (JSON escapes can make lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def header_value(value: Any) -> str:
    """A claim as a header value: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class JwtAuth(AuthPlugin[JwtConfig]):
    """401 + ``WWW-Authenticate: Bearer`` unless a valid token is presented; sets the consumer
    (a mapped ``sub``) or the subject (any other ``sub``)."""

    name = "jwt"
    Config = JwtConfig
    scheme = "Bearer"

    def __init__(self, config: JwtConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self._key, self.jwks = check_algorithms(config)
        self._allowed = frozenset(config.algorithms)
        self._subjects: dict[str, str] = {}
        for name, consumer in context.consumers.items():
            for sub in consumer.jwt_subjects:
                if self._subjects.setdefault(sub, name) != name:
                    raise ValueError(f"jwt subject {sub!r} belongs to consumers {self._subjects[sub]!r} and {name!r}")
        self._audience = config.audience
        self._issuer = config.issuer
        self._options: Options = {
            "require": list(config.required_claims),
            "verify_aud": config.audience is not None,  # unset: the aud claim is not checked
            "enforce_minimum_key_length": True,
        }

    async def startup(self) -> None:
        if self.jwks is not None:
            await self.jwks.start(lambda: self.context.http)

    async def shutdown(self) -> None:
        if self.jwks is not None:
            await self.jwks.stop()

    def _fail(self, request: Request, reason: Reason, detail: str) -> NoReturn:
        quoted = detail.replace("\\", "").replace('"', "'")
        challenge = f'{self.challenge}, error="invalid_token", error_description="{quoted}"'
        self.reject(request, reason, detail, challenge)

    async def _candidates(self, kid: Any, alg: str) -> list[JwkEntry]:
        if self.jwks is None:
            return [JwkEntry(None, self._key, None)]
        kid = kid if isinstance(kid, str) else None
        entries = self.jwks.lookup(kid)
        if not entries:
            entries = await self.jwks.refetch(kid)  # at most once per 10 s
        return [e for e in entries if e.alg in (None, alg) and key_fits(e.key, alg)]

    async def handle(self, request: Request, call_next: Handler) -> Response:
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self.reject(request, "missing", "a Bearer token is required")
        if not token.isascii():  # base64url and dots only; raw bytes arrive as lone surrogates
            self._fail(request, "invalid", "the token is malformed")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError):
            self._fail(request, "invalid", "the token is malformed")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._allowed:
            self._fail(request, "invalid", "the token's algorithm is not accepted")
        claims = await self._verify(request, token, alg, header.get("kid"))
        sub = claims.get("sub")
        sub = sub if isinstance(sub, str) and sub else None
        if sub is not None and not is_text(sub):
            self._fail(request, "invalid", "the token's subject is not valid Unicode text")
        consumer = self._subjects.get(sub) if sub is not None else None
        subject: str | None = None
        if consumer is None:
            if self.config.require_consumer:
                self._fail(request, "invalid", "the token's subject is not a known consumer")
            if sub is not None and not safe_header_value(sub):
                self._fail(request, "invalid", "the token's subject contains control characters")
            subject = sub
        for claim, name in self.config.claims_to_headers.items():
            request.headers.popall(name, None)  # a client never sets these itself
            if claim in claims:
                value = header_value(claims[claim])
                if safe_header_value(value) and is_text(value):
                    request.headers[name] = value
        if self.config.hide_credentials:
            request.headers.popall("Authorization", None)
        request.consumer = consumer
        request.subject = subject
        request.state["jwt_claims"] = claims
        return await call_next(request)

    async def _verify(self, request: Request, token: str, alg: str, kid: Any) -> dict[str, Any]:
        candidates = await self._candidates(kid, alg)
        if not candidates:
            self._fail(request, "invalid", "the token's signing key is not known")
        for entry in candidates:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, entry.key, algorithms=[alg], audience=self._audience, issuer=self._issuer,
                    leeway=self.config.leeway, options=self._options,
                )
                return claims
            except jwt.InvalidSignatureError:
                continue  # another key of the set (a token without kid) may have signed it
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                self._fail(request, *describe(exc))
        self._fail(request, "invalid", "the token's signature is not valid")
