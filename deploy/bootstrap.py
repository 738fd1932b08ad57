"""One-shot init for a deployment: Kafka topics and the screenshot bucket.

Runs in the project image as ``heatmap-bootstrap`` (docker-compose service
``init``, Kubernetes Job ``heatmap-init``) before the gateway and workers
start. Idempotent: existing topics and buckets are left as they are (a topic's
partition count is only ever raised by an operator, see docs/operations.md).
Configured by the same HEATMAP_* variables as the services; retries until
the backing systems answer or ``--timeout`` seconds (default 120) run out.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from heatmap.kafka_admin import ensure_topics
from heatmap.settings import Settings

logger = logging.getLogger("heatmap.bootstrap")


def _retry(what: str, step: Callable[[], None], deadline: float) -> None:
    delay = 1.0
    while True:
        try:
            step()
            return
        except Exception as e:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("%s not ready (%s); retrying in %.0fs", what, e, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _ensure_bucket(settings: Settings) -> None:
    from minio import Minio

    s3 = settings.s3
    if not s3.endpoint:
        logger.info("no HEATMAP_S3_ENDPOINT: skipping the bucket")
        return
    parts = urlsplit(s3.endpoint)
    client = Minio(
        parts.netloc,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        secure=parts.scheme == "https",
        region=s3.region,
    )
    if not client.bucket_exists(s3.bucket):
        client.make_bucket(s3.bucket)
        logger.info("created bucket %s", s3.bucket)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heatmap-bootstrap", description=__doc__)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to keep retrying")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    deadline = time.monotonic() + args.timeout
    settings.require_kafka()
    _retry("kafka", lambda: ensure_topics(settings.kafka, timeout_s=10.0), deadline)
    logger.info(
        "topics ready: %s, %s (%d partitions for new topics)",
        settings.kafka.topic,
        settings.kafka.dlq_topic,
        settings.kafka.partitions,
    )
    _retry("object store", lambda: _ensure_bucket(settings), deadline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
