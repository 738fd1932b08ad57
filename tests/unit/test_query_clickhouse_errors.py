"""The ClickHouse -> gRPC mapping by error code and cause (no I/O; the engine's own
errors are exercised in tests/integration/test_query_clickhouse_errors.py)."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from heatmap.errors import (
    DeadlineExceeded,
    HeatmapError,
    InternalError,
    ResourceExhausted,
    Unavailable,
)
from query_api.clickhouse_errors import clickhouse_error


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (DatabaseError("Timeout exceeded", code=159), DeadlineExceeded),
        (DatabaseError("Code: 159. DB::Exception: Timeout exceeded"), DeadlineExceeded),
        (DatabaseError("socket timeout", code=209), DeadlineExceeded),
        (DatabaseError("Memory limit (MEMORY_LIMIT_EXCEEDED)", code=241), ResourceExhausted),
        (DatabaseError("Code: 210. NETWORK_ERROR"), Unavailable),
        (DatabaseError("too many", code=202), Unavailable),
        (DatabaseError("Unknown table hm.touch_cells (UNKNOWN_TABLE)", code=60), InternalError),
        (DatabaseError("Authentication failed", code=516), InternalError),
        (DatabaseError("something new"), InternalError),
        (ProgrammingError("The client has been closed"), Unavailable),
        (OperationalError("Error executing HTTP request"), Unavailable),
        (ConnectionRefusedError(111, "refused"), Unavailable),
        (TimeoutError("timed out"), DeadlineExceeded),
    ],
)
def test_codes(error: Exception, kind: type[HeatmapError]) -> None:
    mapped = clickhouse_error(error)
    assert type(mapped) is kind
    assert "touch_cells" not in str(mapped)
    assert "(ref " in str(mapped)


def test_cause_chain_decides_for_transport_errors() -> None:
    outer = OperationalError("Error executing HTTP request")
    outer.__cause__ = TimeoutError("read timed out")
    assert isinstance(clickhouse_error(outer), DeadlineExceeded)


def test_each_error_gets_its_own_ref() -> None:
    refs = {str(clickhouse_error(DatabaseError("x", code=60))) for _ in range(100)}
    assert len(refs) == 100
