"""ClickHouse failures as gRPC codes, produced by the real chDB engine (and real sockets).

Through QueryHeatmapData over a real channel wherever the engine can be made
to fail that way: a dropped table or renamed column (INTERNAL), a tiny
max_execution_time (DEADLINE_EXCEEDED), a tiny memory limit
(RESOURCE_EXHAUSTED), a closed client (UNAVAILABLE). Errors only a server
connection gives (refused, read timeout) and SQL the planner never writes
(syntax, types) are real exceptions from real calls, fed to the mapping.
Clients never see ClickHouse's text; the correlation id they get is in the
server's log line with it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import clickhouse_connect
import grpc
import pytest
from clickhouse_connect.driver.client import Client
from prometheus_client import CollectorRegistry

from heatmap.auth import VIEW_HEATMAPS, mint_token
from heatmap.clickhouse import connect
from heatmap.errors import DeadlineExceeded, InternalError, Unavailable
from heatmap.settings import ClickHouseSettings, Settings
from heatmap_devtools.localinfra.process import free_port
from query_api.app import QueryService
from query_api.clickhouse_errors import clickhouse_error
from schemas.heatmap.v1 import heatmap_pb2 as pb
from schemas.heatmap.v1 import heatmap_pb2_grpc
from tests.conftest import TEST_JWT_SECRET
from tests.grpc_support import serving

VIEW = (("authorization", f"Bearer {mint_token(TEST_JWT_SECRET, 'analyst', [VIEW_HEATMAPS])}"),)
REF = re.compile(r"\(ref ([0-9a-f]{16})\)$")
PER_USER = pb.QueryHeatmapDataRequest(screen_name="Home", grid_size=512, mode=pb.PER_USER)
ALL_USERS = pb.QueryHeatmapDataRequest(screen_name="Home", grid_size=512)
COARSE_PER_USER = pb.QueryHeatmapDataRequest(screen_name="Home", grid_size=8, mode=pb.PER_USER)


@pytest.fixture
def settings(base_settings: Settings, clickhouse: ClickHouseSettings, tmp_path: Path) -> Settings:
    return replace(base_settings, clickhouse=clickhouse, screenshot_dir=tmp_path / "shots")


def fill(settings: ClickHouseSettings, rows: int = 500_000) -> None:
    """Enough per-user cells that a PER_USER query takes ms and MBs to answer."""
    # A busy machine may need more than the query budget to insert them.
    client = connect(replace(settings, max_execution_time_s=300))
    try:
        client.command(
            "INSERT INTO touch_cells_by_user (screen_name, user_id, campaign_id, event_type, "
            "hour, cell_x, cell_y, events, source_offset) SELECT 'Home', toString(number % 500), "
            "'', 1, toDateTime('2026-11-27 10:00:00', 'UTC'), number % 512, "
            f"intDiv(number, 512) % 512, 1, 0 FROM numbers({rows})"
        )
    finally:
        client.close()


@contextlib.asynccontextmanager
async def query_server(
    settings: Settings, client: Client | None = None
) -> AsyncIterator[heatmap_pb2_grpc.HeatmapServiceStub]:
    service = QueryService(settings, CollectorRegistry(), clickhouse_client=client)
    async with (
        serving(settings, [service]) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield heatmap_pb2_grpc.HeatmapServiceStub(channel)


async def failed(
    stub: heatmap_pb2_grpc.HeatmapServiceStub, request: pb.QueryHeatmapDataRequest
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.QueryHeatmapData(request, metadata=VIEW, timeout=30)
    return err.value


def logged_with(caplog: pytest.LogCaptureFixture, ref: str) -> str:
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "query_api.clickhouse_errors" and ref in r.getMessage()
    ]
    assert len(lines) == 1, lines
    return lines[0]


def assert_generic(
    error: grpc.aio.AioRpcError, caplog: pytest.LogCaptureFixture, *raw: str
) -> None:
    """No ClickHouse text reaches the client; its correlation id finds the log line that has it."""
    details = error.details() or ""
    match = REF.search(details)
    assert match, details
    for text in raw:
        assert text not in details
        assert text in logged_with(caplog, match.group(1))


async def test_dropped_table_is_internal_with_a_correlation_id(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with query_server(settings) as stub:
        admin = connect(settings.clickhouse)
        admin.command("DROP TABLE touch_cells")
        admin.close()
        error = await failed(stub, ALL_USERS)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert (error.details() or "").startswith("internal error (ref ")
    assert_generic(error, caplog, "UNKNOWN_TABLE", "touch_cells")


async def test_renamed_column_is_internal(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    admin = connect(settings.clickhouse)
    admin.command("DROP TABLE touch_cells_by_user")
    admin.command(
        "CREATE TABLE touch_cells_by_user (screen_name String, user_id String, "
        "campaign_id String, event_type UInt8, hour DateTime('UTC'), cell_x UInt16, "
        "cell_y UInt16, touches UInt64) ENGINE = MergeTree ORDER BY screen_name"
    )
    admin.close()
    async with query_server(settings) as stub:
        error = await failed(stub, PER_USER)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert_generic(error, caplog, "UNKNOWN_IDENTIFIER", "events")


async def test_tiny_max_execution_time_is_deadline_exceeded(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    fill(settings.clickhouse)
    slow = replace(settings, clickhouse=replace(settings.clickhouse, max_execution_time_s=0.001))
    async with query_server(slow) as stub:
        error = await failed(stub, COARSE_PER_USER)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_generic(error, caplog, "TIMEOUT_EXCEEDED")
    # The same query within the normal budget answers (with room for its points).
    roomy = replace(settings, query=replace(settings.query, max_per_user_points=3_000_000))
    async with query_server(roomy) as stub:
        reply = await stub.QueryHeatmapData(COARSE_PER_USER, metadata=VIEW, timeout=60)
    assert len(reply.data_points) == 500 * 64


async def test_memory_limit_is_resource_exhausted(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    fill(settings.clickhouse)
    small = clickhouse_connect.get_client(
        dsn=settings.clickhouse.url,
        database=settings.clickhouse.database,
        settings={"max_memory_usage": 2_000_000},
    )
    try:
        async with query_server(settings, small) as stub:
            error = await failed(stub, PER_USER)
    finally:
        small.close()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_generic(error, caplog, "MEMORY_LIMIT_EXCEEDED")


async def test_closed_client_is_unavailable(settings: Settings) -> None:
    client = connect(settings.clickhouse)
    async with query_server(settings, client) as stub:
        client.close()
        error = await failed(stub, ALL_USERS)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert REF.search(error.details() or "")


# ------------------------------------- real exceptions fed to the mapping


def raised(call: Callable[[], object]) -> Exception:
    try:
        call()
    except Exception as e:
        return e
    raise AssertionError("did not fail")


def test_connection_refused_is_unavailable() -> None:
    port = free_port()  # nothing listens there
    error = raised(lambda: clickhouse_connect.get_client(dsn=f"http://127.0.0.1:{port}"))
    assert isinstance(clickhouse_error(error), Unavailable)


def test_server_that_never_answers_is_deadline_exceeded() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        error = raised(
            lambda: clickhouse_connect.get_client(
                dsn=f"http://127.0.0.1:{port}", connect_timeout=1, send_receive_timeout=1
            )
        )
    assert isinstance(clickhouse_error(error), DeadlineExceeded)


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        ("SELEC 1", "SYNTAX_ERROR"),
        ("SELECT 'a' + 1", "ILLEGAL_TYPE_OF_ARGUMENT"),
        ("SELECT CAST('x' AS UInt8)", "CANNOT_PARSE_TEXT"),
        ("SELECT nothere FROM system.one", "UNKNOWN_IDENTIFIER"),
    ],
)
def test_sql_and_type_errors_are_internal(
    clickhouse: ClickHouseSettings, caplog: pytest.LogCaptureFixture, sql: str, name: str
) -> None:
    caplog.set_level(logging.WARNING)
    client = connect(clickhouse)
    try:
        error = raised(lambda: client.query(sql))
    finally:
        client.close()
    mapped = clickhouse_error(error)
    assert isinstance(mapped, InternalError)
    match = REF.search(str(mapped))
    assert match
    assert str(mapped) == f"internal error (ref {match.group(1)})"
    assert name in logged_with(caplog, match.group(1))
