"""The verified-token cache of ``heatmap.auth.Authenticator``: a repeated token is not
verified again, and nothing a fresh verification would refuse is let through."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from heatmap.auth import Authenticator, Principal, mint_token
from heatmap.errors import Unauthenticated
from heatmap.settings import AuthSettings

SECRET = "unit-test-secret-0123456789-0123456789"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def counting_decode(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every signature verification (PyJWT's own decode still does the work)."""
    calls: list[str] = []
    real = jwt.decode

    def decode(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", decode)
    return calls


def test_a_repeated_token_is_verified_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_decode(monkeypatch)
    auth = Authenticator(AuthSettings(jwt_secret=SECRET))
    token = mint_token(SECRET, "user-1", ["VIEW_HEATMAPS"])
    first = auth.authenticate(bearer(token))
    assert [auth.authenticate(bearer(token)) for _ in range(5)] == [first] * 5
    assert first == Principal("user-1", frozenset({"VIEW_HEATMAPS"}))
    assert calls == [token]


def test_a_tampered_copy_of_a_cached_token_is_still_refused() -> None:
    auth = Authenticator(AuthSettings(jwt_secret=SECRET))
    token = mint_token(SECRET, "user-1", [])
    auth.authenticate(bearer(token))
    header, _payload, signature = token.split(".")
    forged = jwt.encode({"sub": "admin", "exp": int(time.time()) + 3600}, "other-secret-" * 3)
    with pytest.raises(Unauthenticated, match="signature"):
        auth.authenticate(bearer(".".join([header, forged.split(".")[1], signature])))
    with pytest.raises(Unauthenticated):
        auth.authenticate(bearer(token[:-2] + ("AA" if token[-2:] != "AA" else "BB")))


def test_failures_are_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_decode(monkeypatch)
    auth = Authenticator(AuthSettings(jwt_secret=SECRET))
    bad = mint_token("not-the-secret-0123456789-0123456789", "user-1")
    for _ in range(3):
        with pytest.raises(Unauthenticated, match="signature"):
            auth.authenticate(bearer(bad))
    assert calls == [bad] * 3


def test_a_cached_token_stops_verifying_when_it_expires() -> None:
    auth = Authenticator(AuthSettings(jwt_secret=SECRET, jwt_leeway_s=0))
    exp = int(time.time()) + 1
    token = jwt.encode({"sub": "user-1", "exp": exp}, SECRET, algorithm="HS256")
    assert auth.authenticate(bearer(token)).user_id == "user-1"
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    with pytest.raises(Unauthenticated, match="expired"):
        auth.authenticate(bearer(token))


def test_the_cache_is_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_decode(monkeypatch)
    auth = Authenticator(AuthSettings(jwt_secret=SECRET), verified_cache_size=2)
    tokens = [mint_token(SECRET, f"user-{i}", []) for i in range(3)]
    for token in tokens:
        auth.authenticate(bearer(token))
    assert len(auth._verified) == 2
    auth.authenticate(bearer(tokens[2]))  # still cached
    auth.authenticate(bearer(tokens[0]))  # dropped first: verified again
    assert calls == [*tokens, tokens[0]]


class RotatingKeys:
    """Stands in for ``heatmap.jwks.JwksKeys``: the identity provider's current set."""

    def __init__(self, keys: dict[str, jwt.PyJWK]) -> None:
        self.keys = keys

    def cached(self, kid: str) -> jwt.PyJWK | None:
        return self.keys.get(kid)

    async def get(self, kid: str) -> jwt.PyJWK:
        return self.get_blocking(kid)

    def get_blocking(self, kid: str) -> jwt.PyJWK:
        if kid not in self.keys:
            raise Unauthenticated("token 'kid' is not a key of the identity provider")
        return self.keys[kid]


def es256_key(kid: str) -> tuple[Any, jwt.PyJWK]:
    private = ec.generate_private_key(ec.SECP256R1())
    public = jwt.PyJWK.from_dict(
        {**jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid},
        algorithm="ES256",
    )
    return private, public


def jwks_auth(keys: RotatingKeys) -> Authenticator:
    auth = Authenticator(
        AuthSettings(jwt_algorithms=("ES256",), jwt_jwks_url="https://idp.example/jwks")
    )
    auth._jwks = keys  # type: ignore[assignment]
    return auth


@pytest.mark.asyncio
async def test_a_key_rotated_out_of_the_set_stops_verifying_cached_tokens() -> None:
    private, public = es256_key("k1")
    keys = RotatingKeys({"k1": public})
    auth = jwks_auth(keys)
    token = jwt.encode(
        {"sub": "user-1", "exp": int(time.time()) + 3600},
        private,
        algorithm="ES256",
        headers={"kid": "k1"},
    )
    assert (await auth.authenticate_async(bearer(token))).user_id == "user-1"
    assert (await auth.authenticate_async(bearer(token))).user_id == "user-1"
    keys.keys = {}  # the provider dropped k1
    with pytest.raises(Unauthenticated, match="kid"):
        await auth.authenticate_async(bearer(token))
    with pytest.raises(Unauthenticated, match="kid"):
        auth.authenticate(bearer(token))


@pytest.mark.asyncio
async def test_a_new_key_under_the_same_kid_verifies_afresh() -> None:
    private, public = es256_key("k1")
    keys = RotatingKeys({"k1": public})
    auth = jwks_auth(keys)
    token = jwt.encode(
        {"sub": "user-1", "exp": int(time.time()) + 3600},
        private,
        algorithm="ES256",
        headers={"kid": "k1"},
    )
    await auth.authenticate_async(bearer(token))
    keys.keys = {"k1": es256_key("k1")[1]}  # same kid, another key: the old signature fails
    with pytest.raises(Unauthenticated, match="signature"):
        await auth.authenticate_async(bearer(token))
