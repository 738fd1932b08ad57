"""Bearer-JWT authentication and per-method permissions, shared by both servers.

``Authenticator`` verifies a token (HS256 with ``HEATMAP_JWT_SECRET``;
RS256/ES256 with a configured public key, or with the key a JWKS URL names
by the token's ``kid``; ``exp`` and ``sub`` required) and returns the caller
as a ``Principal``. ``authorize`` checks the permission a method needs.
``heatmap.grpc_server`` calls both before every handler and puts the
principal where ``current_principal()`` finds it.

Deny by default: a method is served only if it is in ``METHOD_PERMISSIONS``
(then it needs a valid token and the permission named there) or in
``ANONYMOUS_METHODS`` (health and reflection: load balancers and grpcurl
reach them without a token). Anything else, streaming or unary, answers
UNAUTHENTICATED without a valid token and PERMISSION_DENIED with one (a
method no servicer implements: UNIMPLEMENTED, once the token is valid).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from heatmap.errors import PermissionDenied, Unauthenticated
from heatmap.jwks import JwksKeys
from heatmap.reflection import METHODS as REFLECTION_METHODS
from heatmap.settings import AuthSettings
from schemas.api import method_path

VIEW_HEATMAPS = "VIEW_HEATMAPS"
MANAGE_HEATMAPS = "MANAGE_HEATMAPS"
# Erase / un-erase one user's touch data (EraseUserData): an admin right.
ERASE_USER_DATA = "ERASE_USER_DATA"
# PER_USER answers when k-anonymity is on (HEATMAP_MIN_USERS_PER_CELL set).
VIEW_USER_HEATMAPS = "VIEW_USER_HEATMAPS"

# None: any authenticated caller. A method missing here is not served.
METHOD_PERMISSIONS: Mapping[str, str | None] = {
    method_path("IngestTouchEvents"): None,
    method_path("QueryHeatmapData"): VIEW_HEATMAPS,
    method_path("ListScreenshots"): VIEW_HEATMAPS,
    method_path("GetScreenshot"): VIEW_HEATMAPS,
    method_path("RenderHeatmap"): VIEW_HEATMAPS,
    method_path("ListScreens"): VIEW_HEATMAPS,
    method_path("UploadScreenshot"): MANAGE_HEATMAPS,
    method_path("EraseUserData"): ERASE_USER_DATA,
}
ANONYMOUS_METHODS: frozenset[str] = frozenset(
    {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", *REFLECTION_METHODS}
)


@dataclass(frozen=True)
class Principal:
    user_id: str
    permissions: frozenset[str]


_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("heatmap_principal")


def current_principal() -> Principal:
    """The authenticated caller of the RPC being handled."""
    return _principal.get()


def set_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _principal.set(principal)


def reset_principal(token: contextvars.Token[Principal]) -> None:
    _principal.reset(token)


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token that verified: who it names, and what its verification depended on."""

    principal: Principal
    alg: str
    kid: str | None
    key: Any  # the key object it verified with: a rotated-out key is another object
    valid_until: float  # exp + leeway (PyJWT: expired once exp <= now - leeway)


class Authenticator:
    """Verifies bearer tokens. A token that verified is remembered (up to
    ``verified_cache_size`` of them, oldest dropped first) until its ``exp``:
    apart from ``exp`` the verdict is a pure function of the token's bytes, the
    settings and the key, so a cached verdict is used only while the key the
    token names is still the very key object it verified with (a JWKS refresh
    or rotation yields new objects and so a fresh verification, and a key that
    left the set stops verifying). Failures are never cached."""

    def __init__(self, settings: AuthSettings, verified_cache_size: int = 4096) -> None:
        self._settings = settings
        self._verified: dict[str, _Verified] = {}
        self._cache_size = verified_cache_size
        self._hmac_algs = [a for a in settings.jwt_algorithms if a.startswith("HS")]
        self._public_algs = [a for a in settings.jwt_algorithms if not a.startswith("HS")]
        self._public_key = (
            jwt.PyJWK.from_json(settings.jwt_public_key).key
            if settings.jwt_public_key and settings.jwt_public_key.lstrip().startswith("{")
            else settings.jwt_public_key
        )
        self._jwks = (
            JwksKeys(
                settings.jwt_jwks_url, settings.jwt_jwks_lifespan_s, settings.jwt_jwks_cooldown_s
            )
            if settings.jwt_jwks_url
            else None
        )

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        """The caller; a JWKS key not cached yet is fetched here (blocking)."""
        token = _bearer_token(metadata)
        known = self._remembered(token)
        if known is not None:
            return known
        alg, kid = self._header(token)
        if kid is not None:
            assert self._jwks is not None
            return self._verify(token, self._jwks.get_blocking(kid), alg, kid)
        return self._verify(token, self._static_key(alg), alg, kid)

    async def authenticate_async(
        self, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> Principal:
        """The caller, without blocking the event loop on a JWKS fetch."""
        token = _bearer_token(metadata)
        known = self._remembered(token)
        if known is not None:
            return known
        alg, kid = self._header(token)
        if kid is not None:
            assert self._jwks is not None
            return self._verify(token, await self._jwks.get(kid), alg, kid)
        return self._verify(token, self._static_key(alg), alg, kid)

    def _remembered(self, token: str) -> Principal | None:
        """The principal of a token that verified before, if that verdict still holds."""
        known = self._verified.get(token)
        if known is None:
            return None
        if time.time() >= known.valid_until:
            self._verified.pop(token, None)
            return None  # verified again, and so answered "token expired"
        if known.kid is None:
            key = self._static_key(known.alg)
        else:
            assert self._jwks is not None
            key = self._jwks.cached(known.kid)  # no I/O; None: the full path decides
        return known.principal if key is known.key else None

    def _header(self, token: str) -> tuple[str, str | None]:
        """(alg, the kid to look up in the JWKS or None for a configured key)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"malformed token: {e}") from e
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._settings.jwt_algorithms:
            raise Unauthenticated(f"token algorithm {str(alg)[:16]!r} is not accepted")
        kid = header.get("kid")
        if alg in self._public_algs and self._jwks is not None:
            if isinstance(kid, str) and kid and len(kid) <= 256:
                return alg, kid
            if not self._public_key:
                raise Unauthenticated("token has no 'kid' naming a key of the identity provider")
        return alg, None

    def _static_key(self, alg: str) -> Any:
        if alg in self._hmac_algs and self._settings.jwt_secret:
            return self._settings.jwt_secret
        if alg in self._public_algs and self._public_key:
            return self._public_key
        raise Unauthenticated(f"token algorithm {alg!r} is not accepted")

    def _verify(self, token: str, key: Any, alg: str, kid: str | None) -> Principal:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                leeway=self._settings.jwt_leeway_s,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self._settings.jwt_audience is not None,
                },
            )
        except jwt.ExpiredSignatureError as e:
            raise Unauthenticated("token expired") from e
        except jwt.InvalidSignatureError as e:
            raise Unauthenticated("token signature is invalid") from e
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"invalid token: {e}") from e
        principal = Principal(user_id=_subject(claims), permissions=_permissions(claims))
        if self._cache_size > 0:
            verified = self._verified
            if len(verified) >= self._cache_size:
                # ``authenticate`` may run on other threads: losing a race here
                # only means one entry more or less is dropped.
                with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                    del verified[next(iter(verified))]
            verified[token] = _Verified(
                principal, alg, kid, key, float(claims["exp"]) + self._settings.jwt_leeway_s
            )
        return principal


def authorize(principal: Principal, method: str) -> None:
    """Deny by default: only methods in the permission table are served."""
    if method not in METHOD_PERMISSIONS:
        raise PermissionDenied("this method is not served to callers")
    needed = METHOD_PERMISSIONS[method]
    if needed is not None and needed not in principal.permissions:
        raise PermissionDenied(f"{method.rsplit('/', 1)[-1]} requires {needed}")


def needs_no_token(method: str) -> bool:
    return method in ANONYMOUS_METHODS


def mint_token(
    secret: str,
    user_id: str,
    permissions: Iterable[str] = (VIEW_HEATMAPS, MANAGE_HEATMAPS),
    ttl_s: float = 24 * 3600,
    algorithm: str = "HS256",
) -> str:
    """An HS256 token for development, tests and the load generator."""
    now = int(time.time())
    claims = {"sub": user_id, "permissions": list(permissions), "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm=algorithm)


def _bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
    if not values:
        raise Unauthenticated("missing authorization metadata (expected 'Bearer <JWT>')")
    value = values[0]
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    scheme, _, token = text.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization metadata must be 'Bearer <JWT>'")
    return token.strip()


def _subject(claims: Mapping[str, object]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 256:
        raise Unauthenticated("token 'sub' must be a non-empty string of at most 256 characters")
    return sub


def _permissions(claims: Mapping[str, object]) -> frozenset[str]:
    perms = claims.get("permissions", [])
    if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
        raise Unauthenticated("token 'permissions' must be a list of strings")
    return frozenset(perms)
