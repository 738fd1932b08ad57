from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from heatmap.auth import (
    MANAGE_HEATMAPS,
    VIEW_HEATMAPS,
    Authenticator,
    Principal,
    authorize,
    mint_token,
)
from heatmap.errors import PermissionDenied, Unauthenticated
from heatmap.settings import AuthSettings, Settings, SettingsError

SECRET = "unit-test-secret-0123456789-0123456789"
SERVICE = "/heatmap.v1.HeatmapService/"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def hs_auth() -> Authenticator:
    return Authenticator(AuthSettings(jwt_secret=SECRET, jwt_algorithms=("HS256",)))


def test_valid_hs256_token_yields_user_and_permissions() -> None:
    principal = hs_auth().authenticate(bearer(mint_token(SECRET, "user-1", [VIEW_HEATMAPS])))
    assert principal == Principal("user-1", frozenset({VIEW_HEATMAPS}))


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        [],
        [("authorization", "Basic dXNlcjpwYXNz")],
        [("authorization", "Bearer")],
        [("authorization", "Bearer not-a-jwt")],
        [("authorization", "Bearer a.b.c")],
    ],
)
def test_missing_or_malformed_token_is_unauthenticated(
    metadata: list[tuple[str, str]] | None,
) -> None:
    with pytest.raises(Unauthenticated):
        hs_auth().authenticate(metadata)


def test_expired_token_is_unauthenticated() -> None:
    token = jwt.encode({"sub": "u", "exp": int(time.time()) - 120}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="expired"):
        hs_auth().authenticate(bearer(token))


def test_wrong_signature_is_unauthenticated() -> None:
    token = mint_token("another-secret-0123456789-0123456789", "u")
    with pytest.raises(Unauthenticated, match="signature"):
        hs_auth().authenticate(bearer(token))


def test_token_without_exp_or_sub_is_unauthenticated() -> None:
    for claims in ({"sub": "u"}, {"exp": int(time.time()) + 60}):
        with pytest.raises(Unauthenticated):
            hs_auth().authenticate(bearer(jwt.encode(claims, SECRET, algorithm="HS256")))


def test_unsigned_alg_none_is_rejected() -> None:
    token = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, "", algorithm="none")
    with pytest.raises(Unauthenticated, match="algorithm"):
        hs_auth().authenticate(bearer(token))


def test_permissions_claim_must_be_list_of_strings() -> None:
    token = jwt.encode(
        {"sub": "u", "exp": int(time.time()) + 60, "permissions": "VIEW_HEATMAPS"},
        SECRET,
        algorithm="HS256",
    )
    with pytest.raises(Unauthenticated, match="permissions"):
        hs_auth().authenticate(bearer(token))


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_public_key_algorithms(kind: str) -> None:
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    auth = Authenticator(AuthSettings(jwt_public_key=public_pem, jwt_algorithms=("RS256", "ES256")))
    claims = {"sub": "svc", "exp": int(time.time()) + 60, "permissions": [MANAGE_HEATMAPS]}
    token = jwt.encode(claims, private, algorithm=kind)
    assert auth.authenticate(bearer(token)).user_id == "svc"
    # An HS256 token signed with the public key as secret (alg confusion) must fail.
    forged = jwt.encode(claims, "x" * 40, algorithm="HS256")
    with pytest.raises(Unauthenticated):
        auth.authenticate(bearer(forged))


def test_audience_and_issuer_are_checked_when_configured() -> None:
    auth = Authenticator(
        AuthSettings(jwt_secret=SECRET, jwt_audience="heatmaps", jwt_issuer="https://idp")
    )
    now = int(time.time())
    good = jwt.encode(
        {"sub": "u", "exp": now + 60, "aud": "heatmaps", "iss": "https://idp"}, SECRET, "HS256"
    )
    assert auth.authenticate(bearer(good)).user_id == "u"
    bad = jwt.encode({"sub": "u", "exp": now + 60, "aud": "other", "iss": "https://idp"}, SECRET)
    with pytest.raises(Unauthenticated):
        auth.authenticate(bearer(bad))


def test_authorize_per_method() -> None:
    viewer = Principal("v", frozenset({VIEW_HEATMAPS}))
    device = Principal("d", frozenset())
    authorize(device, SERVICE + "IngestTouchEvents")
    authorize(viewer, SERVICE + "QueryHeatmapData")
    authorize(viewer, SERVICE + "RenderHeatmap")
    with pytest.raises(PermissionDenied, match=VIEW_HEATMAPS):
        authorize(device, SERVICE + "ListScreenshots")
    with pytest.raises(PermissionDenied, match=MANAGE_HEATMAPS):
        authorize(viewer, SERVICE + "UploadScreenshot")


def test_settings_read_the_jwks_variables() -> None:
    env = {
        "HEATMAP_JWT_JWKS_URL": "https://idp.example/.well-known/jwks.json",
        "HEATMAP_JWT_JWKS_LIFESPAN_S": "600",
        "HEATMAP_JWT_JWKS_COOLDOWN_S": "0",
    }
    settings = Settings.from_env(env)
    settings.require_auth()
    assert settings.auth.jwt_jwks_url == env["HEATMAP_JWT_JWKS_URL"]
    assert settings.auth.jwt_algorithms == ("RS256", "ES256")
    assert (settings.auth.jwt_jwks_lifespan_s, settings.auth.jwt_jwks_cooldown_s) == (600.0, 0.0)
    for name, bad in [("JWT_JWKS_URL", "ftp://idp"), ("JWT_JWKS_LIFESPAN_S", "0")]:
        with pytest.raises(SettingsError, match="HEATMAP_" + name):
            Settings.from_env({**env, "HEATMAP_" + name: bad})


def test_jwks_token_without_kid_is_unauthenticated() -> None:
    auth = Authenticator(
        AuthSettings(jwt_jwks_url="http://127.0.0.1:9/jwks", jwt_algorithms=("RS256",))
    )
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, private, algorithm="RS256")
    with pytest.raises(Unauthenticated, match="kid"):
        auth.authenticate(bearer(token))


def test_only_listed_methods_are_authorized() -> None:
    root = Principal("root", frozenset({VIEW_HEATMAPS, MANAGE_HEATMAPS}))
    for method in (SERVICE + "Unlisted", "/grpc.health.v1.Health/Check", ""):
        with pytest.raises(PermissionDenied):
            authorize(root, method)
