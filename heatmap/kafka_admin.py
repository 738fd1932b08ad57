"""Topic creation for the touch-batch topic and its dead-letter topic."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from heatmap.kafka_security import confluent_config
from heatmap.settings import KafkaSettings

logger = logging.getLogger(__name__)


def ensure_topics(settings: KafkaSettings, timeout_s: float = 30.0) -> None:
    """Create the topics if missing; existing topics are left as they are.

    The partition count caps worker parallelism (one partition is consumed by
    one worker at a time); raise it before scaling workers past it.
    """
    if not settings.bootstrap:
        raise ValueError("Kafka bootstrap is not configured")
    admin = AdminClient({"bootstrap.servers": settings.bootstrap, **confluent_config(settings)})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [
        NewTopic(name, num_partitions=settings.partitions, replication_factor=settings.replication)
        for name in (settings.topic, settings.dlq_topic)
        if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            logger.info("created topic %s (%d partitions)", name, settings.partitions)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
