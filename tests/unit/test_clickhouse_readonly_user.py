"""The query service's read-only ClickHouse user: the SQL, its settings, and the migrate flag.

chDB (in-process) has no writable user directory and refuses CREATE USER, so
the statements are run by ClickHouse's own parser in
tests/integration/test_clickhouse_readonly_user.py and applied only on a server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from heatmap.clickhouse import readonly_credentials, readonly_user_statements
from heatmap.settings import Settings, SettingsError
from heatmap_cli import cli


def test_the_user_may_only_select_from_the_database() -> None:
    create, alter, grant = readonly_user_statements("heatmap_reader", "pw", "heatmap")
    assert create.startswith("CREATE USER IF NOT EXISTS `heatmap_reader` IDENTIFIED WITH ")
    # The password and profile are re-stated, so a rotated secret is applied on re-run.
    assert alter.startswith("ALTER USER `heatmap_reader` IDENTIFIED WITH ")
    for statement in (create, alter):
        assert statement.endswith("SETTINGS readonly = 2")
        assert "BY 'pw'" in statement
    assert grant == "GRANT SELECT ON `heatmap`.* TO `heatmap_reader`"


def test_on_a_cluster_every_statement_runs_on_cluster() -> None:
    statements = readonly_user_statements("r", "pw", "hm", cluster="prod")
    assert all(" ON CLUSTER `prod` " in s for s in statements)
    assert statements[2] == "GRANT ON CLUSTER `prod` SELECT ON `hm`.* TO `r`"


def test_names_and_passwords_are_quoted() -> None:
    [create, _, grant] = readonly_user_statements("odd`name", "it's\\x", "db")
    assert "`odd\\`name`" in create
    assert "`odd\\`name`" in grant
    assert "BY 'it\\'s\\\\x'" in create


def test_credentials_come_from_the_url_percent_decoded() -> None:
    user, password = readonly_credentials("https://heatmap_reader:p%40ss%3Aw%2Fd@ch:8443/heatmap")
    assert (user, password) == ("heatmap_reader", "p@ss:w/d")
    with pytest.raises(ValueError, match="no user name and password"):
        readonly_credentials("https://ch:8443/heatmap")


@pytest.mark.parametrize(
    "url",
    ["chdb:///var/lib/chdb", "https://reader@ch:8443/heatmap", "https://ch:8443/heatmap"],
)
def test_the_readonly_url_needs_a_server_user_and_password(url: str) -> None:
    with pytest.raises(SettingsError, match="HEATMAP_CLICKHOUSE_READONLY_URL"):
        Settings.from_env({"HEATMAP_CLICKHOUSE_READONLY_URL": url})


def test_the_readonly_url_stays_out_of_repr() -> None:
    settings = Settings.from_env(
        {"HEATMAP_CLICKHOUSE_READONLY_URL": "https://reader:hunter2@ch:8443/heatmap"}
    )
    assert "hunter2" not in repr(settings)


def test_migrate_refuses_the_flag_on_chdb_before_touching_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "chdb"
    monkeypatch.setenv("HEATMAP_CLICKHOUSE_URL", f"chdb://{store}")
    monkeypatch.setenv("HEATMAP_CLICKHOUSE_READONLY_URL", "http://reader:pw@127.0.0.1:1/heatmap")
    assert cli.main(["migrate", "--create-readonly-user"]) == 2
    assert "HEATMAP_CLICKHOUSE_URL" in capsys.readouterr().err
    assert not store.exists()  # no schema was created either


def test_migrate_needs_the_readonly_url_with_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 1 answers nothing: exit 2 (not a connection error) shows it was checked first.
    monkeypatch.setenv("HEATMAP_CLICKHOUSE_URL", "http://heatmap:pw@127.0.0.1:1/heatmap")
    monkeypatch.delenv("HEATMAP_CLICKHOUSE_READONLY_URL", raising=False)
    assert cli.main(["migrate", "--create-readonly-user"]) == 2
    assert "HEATMAP_CLICKHOUSE_READONLY_URL" in capsys.readouterr().err
