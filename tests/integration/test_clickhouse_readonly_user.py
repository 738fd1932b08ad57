"""The read-only user's SQL through the real ClickHouse engine (chDB).

chDB has no writable user directory, so CREATE USER cannot run here; what
can be checked with the engine is that ClickHouse's own parser accepts every
statement ``heatmap migrate --create-readonly-user`` sends (``formatQuery``
raises on a syntax error) and that a password full of quotes and
backslashes reaches the server unchanged. Applying the SQL to a ClickHouse
server is not run here (no server on this machine): docs/operations.md.
"""

from __future__ import annotations

import pytest

from heatmap.clickhouse import connect, quote_string, readonly_user_statements
from heatmap.settings import ClickHouseSettings

PASSWORDS = ["plain", "it's", "back\\slash", "\\'", 'q"uote', "ünï €", "a;b -- c /* d */"]


@pytest.mark.parametrize("cluster", [None, "heatmap"])
def test_clickhouse_parses_every_statement(
    clickhouse: ClickHouseSettings, cluster: str | None
) -> None:
    client = connect(clickhouse)
    try:
        statements = readonly_user_statements("heatmap_reader", "it's\\x", "heatmap", cluster)
        for statement in statements:
            [[formatted]] = client.query(
                "SELECT formatQuery({q:String})", parameters={"q": statement}
            ).result_rows
            assert formatted.split()[:2] == statement.split()[:2]
            assert "heatmap_reader" in formatted
        with pytest.raises(Exception, match="Syntax error"):
            client.query(
                "SELECT formatQuery({q:String})",
                parameters={"q": statements[0].replace("IDENTIFIED WITH", "IDENTIFIED WIHT")},
            )
    finally:
        client.close()


def test_passwords_reach_the_server_unchanged(clickhouse: ClickHouseSettings) -> None:
    client = connect(clickhouse)
    try:
        for password in PASSWORDS:
            [[parsed]] = client.query(f"SELECT {quote_string(password)}").result_rows
            assert parsed == password
    finally:
        client.close()
