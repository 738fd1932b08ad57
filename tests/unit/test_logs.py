"""Log formats: JSON lines with the deployments' field names off a terminal,
readable (rich) lines on one, ``HEATMAP_LOG_FORMAT`` deciding over both."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from rich.logging import RichHandler

from heatmap.logs import configure_logging, make_handler, resolve_format
from heatmap.settings import Settings, SettingsError


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_auto_is_json_off_a_terminal_and_text_on_one() -> None:
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("auto", Terminal()) == "text"
    assert resolve_format("json", Terminal()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"
    with pytest.raises(ValueError, match="auto, json, text"):
        resolve_format("yaml", io.StringIO())


def test_json_lines_keep_the_field_names_and_the_extra_fields() -> None:
    out = io.StringIO()
    configure_logging("INFO", "auto", out)
    log = logging.getLogger("heatmap.test")
    log.info("flushed %d cells", 12, extra={"topic": "touch", "partition": 3, "path": object()})
    try:
        raise RuntimeError("broken")
    except RuntimeError:
        log.exception("flush failed")
    log.debug("not at INFO")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert list(first)[:4] == ["ts", "level", "logger", "msg"]
    assert first["level"] == "INFO"
    assert first["logger"] == "heatmap.test"
    assert first["msg"] == "flushed 12 cells"
    assert (first["topic"], first["partition"]) == ("touch", 3)
    assert first["path"].startswith("<object")  # not JSON: its str()
    assert len(first["ts"]) == len("2026-01-31T12:00:00.123Z")
    assert first["ts"].endswith("Z")
    assert second["level"] == "ERROR"
    assert "RuntimeError: broken" in second["exc"]


def test_text_on_a_terminal_is_rich_and_shows_the_extra_fields() -> None:
    out = Terminal()
    handler = make_handler("auto", out)
    assert isinstance(handler, RichHandler)
    configure_logging("INFO", "auto", out)
    logging.getLogger("heatmap.test").warning("careful", extra={"topic": "touch"})
    coloured = out.getvalue()
    assert "\x1b[" in coloured
    text = re.sub(r"\x1b\[[0-9;]*m", "", coloured)
    assert "WARNING" in text
    assert "heatmap.test: careful topic=touch" in text
    assert not text.lstrip().startswith("{")


def test_text_off_a_terminal_is_one_plain_line_per_record() -> None:
    out = io.StringIO()
    configure_logging("INFO", "text", out)
    logging.getLogger("heatmap.test").info("x" * 300, extra={"topic": "touch"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1  # no wrapping at a guessed terminal width
    assert " INFO heatmap.test: " + "x" * 300 + " topic=touch" in lines[0]
    assert "\x1b[" not in lines[0]


def test_the_setting_defaults_to_auto_and_names_the_variable_when_bad() -> None:
    assert Settings.from_env({}).log_format == "auto"
    assert Settings.from_env({"HEATMAP_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(SettingsError, match="HEATMAP_LOG_FORMAT"):
        Settings.from_env({"HEATMAP_LOG_FORMAT": "yaml"})
