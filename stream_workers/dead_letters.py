"""Dead-letter topic: poison messages are copied there with why and where they came from."""

from __future__ import annotations

from typing import Any

from stream_workers.processor import RawRecord


class DeadLetterTopic:
    """Sends through the Faust app's producer and waits for the broker's ack."""

    def __init__(self, app: Any, source_topic: str, dlq_topic: str) -> None:
        self._app = app
        self._source = source_topic
        self._dlq = dlq_topic

    async def __call__(self, record: RawRecord, reason: str) -> None:
        headers = [
            ("heatmap-error", reason.encode("utf-8", "replace")[:1000]),
            ("heatmap-source", f"{self._source}[{record.partition}]@{record.offset}".encode()),
        ]
        await self._app.producer.send_and_wait(
            self._dlq, None, record.value or b"", None, None, headers
        )
