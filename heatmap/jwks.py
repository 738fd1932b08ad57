"""Signing keys from an identity provider's JWKS URL, for RS256/ES256 bearer tokens.

PyJWT's ``PyJWKClient`` fetches and parses the set, caches it for
``lifespan_s``, refetches when a token names a ``kid`` it has not seen (key
rotation, no restart) and, within ``cooldown_s`` of the last fetch, answers
an unknown ``kid`` from the cache instead, so a flood of made-up kids costs
the provider at most one request per cooldown.

Its fetch is blocking HTTP, so ``get`` serves cache hits inline and runs a
fetch in a worker thread, one at a time (callers waiting for the same
refresh share it instead of each holding a thread). A key once fetched stays
usable while the provider is unreachable: an outage of the IdP must not log
every device out.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import jwt

from heatmap.errors import Unauthenticated, Unavailable

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 5.0


class JwksKeys:
    def __init__(self, url: str, lifespan_s: float, cooldown_s: float) -> None:
        self._client = jwt.PyJWKClient(
            url,
            cache_jwk_set=True,
            lifespan=lifespan_s,
            timeout=FETCH_TIMEOUT_S,
            cooldown_duration=cooldown_s,
        )
        self._url = url
        self._known: dict[str, jwt.PyJWK] = {}
        self._known_lock = threading.Lock()
        self._fetching: asyncio.Lock | None = None

    def cached(self, kid: str) -> jwt.PyJWK | None:
        """The key for ``kid`` if the cached set is fresh and has it (no I/O)."""
        cache = self._client.jwk_set_cache
        jwk_set = cache.get() if cache is not None else None
        if jwk_set is None:
            return None
        for key in jwk_set.keys:
            if key.key_id == kid and key.public_key_use in ("sig", None):
                return key
        return None

    async def get(self, kid: str) -> jwt.PyJWK:
        """The key for ``kid``: from the cache, else after one (shared) fetch."""
        key = self.cached(kid)
        if key is not None:
            return key
        if self._fetching is None:
            self._fetching = asyncio.Lock()
        async with self._fetching:
            key = self.cached(kid)
            if key is not None:
                return key
            return await asyncio.to_thread(self.get_blocking, kid)

    def get_blocking(self, kid: str) -> jwt.PyJWK:
        try:
            key = self._client.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as e:
            with self._known_lock:
                known = self._known.get(kid)
            if known is not None:
                logger.warning(
                    "JWKS %s unreachable, using the key %r fetched before", self._url, kid
                )
                return known
            logger.warning("JWKS %s unreachable: %s", self._url, e)
            raise Unavailable("cannot fetch the token signing keys now; retry later") from e
        except (jwt.PyJWKClientError, jwt.PyJWKSetError) as e:
            raise Unauthenticated("token 'kid' is not a key of the identity provider") from e
        with self._known_lock:
            self._known[kid] = key
        return key
