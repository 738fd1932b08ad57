"""Bearer-JWT authentication and per-method permissions, shared by both servers.

``Authenticator`` verifies a token (HS256 with ``HEATMAP_JWT_SECRET``, or
RS256/ES256 with a configured public key; ``exp`` and ``sub`` required) and
returns the caller as a ``Principal``. ``authorize`` checks the permission a
method needs. ``heatmap.grpc_server`` calls both before every handler and puts
the principal where ``current_principal()`` finds it.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import jwt

from heatmap.errors import PermissionDenied, Unauthenticated
from heatmap.settings import AuthSettings

VIEW_HEATMAPS = "VIEW_HEATMAPS"
MANAGE_HEATMAPS = "MANAGE_HEATMAPS"

_SERVICE = "/heatmap.v1.HeatmapService/"
# None: any authenticated caller. Methods not listed (health, reflection)
# need no token: load balancers and grpcurl must reach them.
METHOD_PERMISSIONS: Mapping[str, str | None] = {
    _SERVICE + "IngestTouchEvents": None,
    _SERVICE + "QueryHeatmapData": VIEW_HEATMAPS,
    _SERVICE + "ListScreenshots": VIEW_HEATMAPS,
    _SERVICE + "GetScreenshot": VIEW_HEATMAPS,
    _SERVICE + "RenderHeatmap": VIEW_HEATMAPS,
    _SERVICE + "UploadScreenshot": MANAGE_HEATMAPS,
}


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


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._hmac_algs = [a for a in settings.jwt_algorithms if a.startswith("HS")]
        self._public_algs = [a for a in settings.jwt_algorithms if not a.startswith("HS")]
        self._public_key = (
            jwt.PyJWK.from_json(settings.jwt_public_key).key
            if settings.jwt_public_key and settings.jwt_public_key.lstrip().startswith("{")
            else settings.jwt_public_key
        )

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        token = _bearer_token(metadata)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"malformed token: {e}") from e
        alg = header.get("alg")
        if alg in self._hmac_algs and self._settings.jwt_secret:
            key: object = self._settings.jwt_secret
        elif alg in self._public_algs and self._public_key:
            key = self._public_key
        else:
            raise Unauthenticated(f"token algorithm {alg!r} is not accepted")
        try:
            claims = jwt.decode(
                token,
                key,  # type: ignore[arg-type]
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
        return Principal(user_id=_subject(claims), permissions=_permissions(claims))


def authorize(principal: Principal, method: str) -> None:
    needed = METHOD_PERMISSIONS.get(method)
    if needed is not None and needed not in principal.permissions:
        raise PermissionDenied(f"{method.rsplit('/', 1)[-1]} requires {needed}")


def is_protected(method: str) -> bool:
    return method in METHOD_PERMISSIONS


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
