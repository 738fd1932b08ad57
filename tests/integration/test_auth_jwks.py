"""Bearer tokens verified with keys from a JWKS URL, over real HTTP and a real gRPC channel.

The JWKS is served on loopback by a tiny ``http.server`` thread whose key
set the test rotates; the gRPC server is the shared scaffolding with the
real interceptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from heatmap.auth import Authenticator, current_principal
from heatmap.grpc_server import ServiceInterceptor, bind, init_health, new_server
from heatmap.settings import AuthSettings
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc


@dataclass
class Jwks:
    """The key set a loopback HTTP server answers with; ``delay_s`` slows each answer."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    delay_s: float = 0.0
    url: str = ""


@contextlib.contextmanager
def jwks_server(jwks: Jwks) -> Iterator[ThreadingHTTPServer]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            jwks.fetches += 1
            time.sleep(jwks.delay_s)
            body = json.dumps({"keys": jwks.keys}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    jwks.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass(frozen=True)
class Key:
    kid: str
    private: Any
    alg: str

    def jwk(self) -> dict[str, Any]:
        algorithm = (
            jwt.algorithms.RSAAlgorithm if self.alg == "RS256" else jwt.algorithms.ECAlgorithm
        )
        public: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig", "alg": self.alg}

    def token(self, sub: str = "device-1", kid: str | None = None) -> str:
        claims = {"sub": sub, "exp": int(time.time()) + 600, "permissions": []}
        return jwt.encode(claims, self.private, self.alg, headers={"kid": kid or self.kid})


def rsa_key(kid: str) -> Key:
    return Key(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def ec_key(kid: str) -> Key:
    return Key(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


class Echo(heatmap_pb2_grpc.HeatmapServiceServicer):
    async def IngestTouchEvents(
        self, request: heatmap_pb2.IngestTouchEventsRequest, context: grpc.aio.ServicerContext
    ) -> heatmap_pb2.IngestTouchEventsResponse:
        return heatmap_pb2.IngestTouchEventsResponse(
            ingested_count=len(current_principal().user_id)
        )


@contextlib.asynccontextmanager
async def grpc_server(settings: AuthSettings) -> AsyncIterator[grpc.aio.Channel]:
    server, health = new_server(
        interceptors=[ServiceInterceptor(Authenticator(settings))],
        max_message_bytes=1 << 20,
        register=[lambda s: heatmap_pb2_grpc.add_HeatmapServiceServicer_to_server(Echo(), s)],  # type: ignore[abstract]
    )
    port = bind(server, "127.0.0.1", 0)
    await init_health(health)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(0)


def settings_for(jwks: Jwks, lifespan_s: float = 300.0, cooldown_s: float = 0.0) -> AuthSettings:
    return AuthSettings(
        jwt_jwks_url=jwks.url,
        jwt_algorithms=("RS256", "ES256"),
        jwt_jwks_lifespan_s=lifespan_s,
        jwt_jwks_cooldown_s=cooldown_s,
    )


async def ingest(channel: grpc.aio.Channel, token: str) -> grpc.StatusCode:
    stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
    try:
        reply = await stub.IngestTouchEvents(
            heatmap_pb2.IngestTouchEventsRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    except grpc.aio.AioRpcError as e:
        return e.code()
    assert reply.ingested_count == len("device-1")
    return grpc.StatusCode.OK


async def test_rotation_by_kid_needs_no_restart_and_unknown_kids_are_refused() -> None:
    a, b = rsa_key("key-a"), ec_key("key-b")
    jwks = Jwks(keys=[a.jwk()])
    with jwks_server(jwks):
        async with grpc_server(settings_for(jwks)) as channel:
            assert await ingest(channel, a.token()) == grpc.StatusCode.OK
            assert await ingest(channel, a.token()) == grpc.StatusCode.OK
            assert jwks.fetches == 1, "the key set is cached"

            jwks.keys = [b.jwk()]  # the provider rotates to key B
            assert await ingest(channel, b.token()) == grpc.StatusCode.OK
            assert jwks.fetches == 2
            # The provider withdrew key A: tokens signed with it stop verifying.
            assert await ingest(channel, a.token()) == grpc.StatusCode.UNAUTHENTICATED

            stranger = rsa_key("key-z")
            assert await ingest(channel, stranger.token()) == grpc.StatusCode.UNAUTHENTICATED
            # A known kid with another key's signature.
            forged = stranger.token(kid="key-a")
            assert await ingest(channel, forged) == grpc.StatusCode.UNAUTHENTICATED
            # alg confusion: an HS256 token is not accepted with JWKS keys.
            hs = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "s" * 40, "HS256")
            assert await ingest(channel, hs) == grpc.StatusCode.UNAUTHENTICATED


async def test_made_up_kids_cost_at_most_one_fetch_per_cooldown() -> None:
    a = rsa_key("key-a")
    jwks = Jwks(keys=[a.jwk()])
    with jwks_server(jwks):
        async with grpc_server(settings_for(jwks, cooldown_s=60)) as channel:
            assert await ingest(channel, a.token()) == grpc.StatusCode.OK
            codes = await asyncio.gather(
                *(ingest(channel, a.token(kid=f"made-up-{i}")) for i in range(20))
            )
            assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
            assert jwks.fetches == 1


async def test_jwks_down_known_keys_keep_working_unknown_ones_are_unavailable() -> None:
    a, b = rsa_key("key-a"), rsa_key("key-b")
    jwks = Jwks(keys=[a.jwk(), b.jwk()])
    with jwks_server(jwks) as provider:
        async with grpc_server(settings_for(jwks, lifespan_s=0.5)) as channel:
            assert await ingest(channel, a.token()) == grpc.StatusCode.OK
            provider.shutdown()
            provider.server_close()  # nothing listens on its port any more
            await asyncio.sleep(0.6)  # and the cached set has expired
            # The key fetched before still verifies: an IdP outage logs nobody out.
            assert await ingest(channel, a.token()) == grpc.StatusCode.OK
            # A key never fetched cannot be checked now: retry later, not "bad token".
            assert await ingest(channel, b.token()) == grpc.StatusCode.UNAVAILABLE
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="liveness"), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_slow_jwks_fetch_does_not_block_other_calls() -> None:
    a = rsa_key("key-a")
    jwks = Jwks(keys=[a.jwk()], delay_s=1.5)
    with jwks_server(jwks):
        async with grpc_server(settings_for(jwks)) as channel:
            pending = asyncio.ensure_future(ingest(channel, a.token()))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="liveness"), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert time.monotonic() - started < 0.5
            assert not pending.done()
            assert await pending == grpc.StatusCode.OK
