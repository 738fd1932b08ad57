"""The ``heatmap`` command line: help for everything, one-line usage errors, render's filters."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

import pytest

from heatmap_cli.cli import _parser, main
from query_api.render_cli import build_request
from schemas.heatmap.v1 import heatmap_pb2


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return dict(actions[0].choices)


def test_every_subcommand_and_every_option_has_help_text() -> None:
    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    commands = _subcommands(parser)
    assert len(commands) >= 10
    missing = [f"heatmap {name}" for name in commands if not (helps.get(name) or "").strip()]
    for name, sub in commands.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"heatmap {name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_a_usage_error_is_one_line_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["render", "--out", "x.png"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "--screen" in err
    assert "heatmap render --help" in err


@pytest.mark.parametrize(
    ("option", "value"),
    [("--event-types", "tap,swipe"), ("--start", "yesterday"), ("--mode", "some-users")],
)
def test_a_bad_render_filter_is_a_usage_error(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["render", "--screen", "Home", "--out", "x.png", option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert option in err


def test_render_sends_the_query_filters() -> None:
    args = _parser().parse_args(
        [
            "render",
            "--screen",
            "Home",
            "--out",
            "x.png",
            "--campaign",
            "spring",
            "--mode",
            "per-user",
            "--user",
            "u-1",
            "--top-users",
            "5",
            "--event-types",
            "tap, Action_Click",
            "--start",
            "2026-01-31",
            "--end",
            "2026-02-01T06:30:00+02:00",
            "--grid-size",
            "128",
        ]
    )
    query = build_request(args).query
    assert query.screen_name == "Home"
    assert query.campaign_id == "spring"
    assert query.mode == heatmap_pb2.PER_USER
    assert query.user_id == "u-1"
    assert query.top_users == 5
    assert list(query.event_types) == [heatmap_pb2.TAP, heatmap_pb2.ACTION_CLICK]
    assert query.start_time.ToDatetime(UTC) == datetime(2026, 1, 31, tzinfo=UTC)
    assert query.end_time.ToDatetime(UTC) == datetime(2026, 2, 1, 4, 30, tzinfo=UTC)
    assert query.grid_size == 128


def test_render_defaults_leave_the_filters_open() -> None:
    args = _parser().parse_args(["render", "--screen", "Home", "--out", "x.png"])
    query = build_request(args).query
    assert query.mode == heatmap_pb2.ALL_USERS
    assert not query.user_id
    assert not query.event_types
    assert not query.campaign_id
    assert not query.HasField("start_time")
    assert not query.HasField("end_time")


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("loadgen", ["loadgen", "--token-secret", "s"]),
        ("demo", ["demo", "--token-secret", "s"]),
        ("dev", ["dev"]),
        ("infra", ["infra", "status"]),
    ],
)
def test_dev_tools_missing_from_the_install_is_one_line_exit_2(
    command: str,
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As in the runtime image: no heatmap_devtools (None in sys.modules makes
    # every import of it raise ModuleNotFoundError).
    for name in [m for m in sys.modules if m.startswith("heatmap_devtools")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "heatmap_cli.dev", raising=False)
    monkeypatch.setitem(sys.modules, "heatmap_devtools", None)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"`heatmap {command}` is a development tool" in err
    assert "heatmap_devtools" in err
