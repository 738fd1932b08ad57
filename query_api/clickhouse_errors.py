"""A failed ClickHouse call as the gRPC status a client can act on.

* UNAVAILABLE (retry with backoff): connection refused or reset, NETWORK_ERROR
  (210), TOO_MANY_SIMULTANEOUS_QUERIES (202), the client closed (stopping).
* DEADLINE_EXCEEDED (narrow the query): a read timeout, TIMEOUT_EXCEEDED
  (159), TOO_SLOW (160), SOCKET_TIMEOUT (209).
* RESOURCE_EXHAUSTED (narrow the query): MEMORY_LIMIT_EXCEEDED (241),
  CANNOT_ALLOCATE_MEMORY (173).
* INTERNAL (do not retry): everything else: unknown table or column, syntax,
  types, authentication, codes not listed here.

Only UNAVAILABLE is retryable: a schema or SQL error is a bug or a broken
deployment that no retry fixes, and Envoy retries UNAVAILABLE. ClickHouse's
own text names tables, columns and hosts, so it goes only to the log; the
client gets a generic message with a correlation id (``ref``) that is in
that log line.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator

from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    OperationalError,
    ProgrammingError,
)
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError

from heatmap.errors import (
    DeadlineExceeded,
    HeatmapError,
    InternalError,
    ResourceExhausted,
    Unavailable,
)

logger = logging.getLogger(__name__)

UNAVAILABLE_CODES = frozenset({202, 210})  # TOO_MANY_SIMULTANEOUS_QUERIES, NETWORK_ERROR
TIMEOUT_CODES = frozenset({159, 160, 209})  # TIMEOUT_EXCEEDED, TOO_SLOW, SOCKET_TIMEOUT
MEMORY_CODES = frozenset({173, 241})  # CANNOT_ALLOCATE_MEMORY, MEMORY_LIMIT_EXCEEDED


def clickhouse_error(error: BaseException) -> HeatmapError:
    """The status for ``error``; logs the raw message under a fresh correlation id."""
    ref = uuid.uuid4().hex[:16]
    kind = _classify(error, _code(error))
    if kind is InternalError:
        logger.error("ClickHouse query failed [ref %s]: %s", ref, _raw(error))
    else:
        logger.warning(
            "ClickHouse query failed [ref %s] (%s): %s", ref, kind.code.name, _raw(error)
        )
    return kind(f"{_MESSAGES[kind]} (ref {ref})")


_MESSAGES: dict[type[HeatmapError], str] = {
    Unavailable: "the heatmap store is unavailable; retry later",
    DeadlineExceeded: "the query took longer than allowed; narrow it (time range, campaign, "
    "event types) or use a smaller grid_size",
    ResourceExhausted: "the query needs more memory than the heatmap store allows; narrow it",
    InternalError: "internal error",
}


def _classify(error: BaseException, code: int | None) -> type[HeatmapError]:
    if code in UNAVAILABLE_CODES:
        return Unavailable
    if code in TIMEOUT_CODES:
        return DeadlineExceeded
    if code in MEMORY_CODES:
        return ResourceExhausted
    if code is not None:
        return InternalError
    for cause in _chain(error):
        # NewConnectionError subclasses urllib3's TimeoutError: test it first.
        if isinstance(cause, NewConnectionError | ConnectionError):
            return Unavailable
        if isinstance(cause, ReadTimeoutError | TimeoutError):
            return DeadlineExceeded
    if isinstance(error, ProgrammingError) and "client has been closed" in str(error):
        return Unavailable  # the service is stopping
    if isinstance(error, OSError | OperationalError):
        return Unavailable  # transport trouble without a server answer
    return InternalError


_CODE = re.compile(r"\bCode: (\d+)\.")


def _code(error: BaseException) -> int | None:
    """ClickHouse's error code: the driver's attribute, else the one in the text."""
    code = getattr(error, "code", None)
    if isinstance(code, int):
        return code
    match = _CODE.search(str(error)) if isinstance(error, DatabaseError) else None
    return int(match.group(1)) if match else None


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, its causes and contexts, and what urllib3's retry wrapper wraps."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, MaxRetryError) and current.reason is not None:
            todo.append(current.reason)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _raw(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".replace("\n", " ")[:4000]
