"""Logging set-up for the entry points (library modules only get loggers).

Three formats (``HEATMAP_LOG_FORMAT``):

- ``json``: one JSON object per line (python-json-logger), the format the
  deployments use: ``ts``, ``level``, ``logger``, ``msg``, ``exc`` when there
  is an exception, and every ``extra=`` field as a top-level key.
- ``text``: human-readable lines; coloured columns (rich) when the stream is a
  terminal, plain ``asctime level logger: message key=value`` lines otherwise
  (rich would wrap long lines at the terminal width it guesses for a file).
- ``auto`` (the default): ``text`` on a terminal, ``json`` otherwise, so a
  person at a terminal reads sentences and a log collector gets JSON.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

FORMATS = ("auto", "json", "text")

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(_LibraryJsonFormatter):
    """python-json-logger with the field names and the UTC millisecond ``ts``
    (``2026-01-31T12:00:00.123Z``) that the JSON lines have always had."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={
                "asctime": "ts",
                "levelname": "level",
                "name": "logger",
                "message": "msg",
                "exc_info": "exc",
            },
            json_default=str,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and k[0] != "_"}


class _TextFormatter(logging.Formatter):
    """``logger: message key=value ...``: the ``extra=`` fields stay visible."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def resolve_format(fmt: str, stream: TextIO) -> str:
    """``json`` or ``text``: ``auto`` becomes ``text`` on a terminal."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "auto":
        return "text" if _is_terminal(stream) else "json"
    return fmt


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def make_handler(fmt: str = "auto", stream: TextIO | None = None) -> logging.Handler:
    stream = stream if stream is not None else sys.stderr
    if resolve_format(fmt, stream) == "json":
        handler: logging.Handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        return handler
    if _is_terminal(stream):
        # Imported here: rich is only needed when a person is watching.
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(file=stream),
            show_path=False,
            markup=False,
            log_time_format="%H:%M:%S",
        )
        handler.setFormatter(_TextFormatter("%(name)s: %(message)s"))
        return handler
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    root = logging.getLogger()
    root.handlers[:] = [make_handler(fmt, stream)]
    root.setLevel(level)
    # Faust/aiokafka are chatty at INFO; their warnings still come through.
    for noisy in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
