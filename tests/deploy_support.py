"""What each deployable needs from its environment: shared by the compose and Kubernetes tests,
which each rebuild a container's environment their own way and then check the same rules."""

from __future__ import annotations

from heatmap.settings import Settings

SECTION_PREFIXES = ("KAFKA", "CLICKHOUSE", "S3", "JWT")


def sections(env: dict[str, str]) -> set[str]:
    """Which kinds of backing-system settings (and so credentials) an environment holds."""
    return {p for key in env for p in SECTION_PREFIXES if key.startswith(f"HEATMAP_{p}_")}


def assert_complete(settings: Settings, role: str) -> None:
    """``settings`` are enough for ``role`` (gateway, worker, query-api, init, migrate) to start."""
    needs = {
        "gateway": (settings.require_kafka, settings.require_auth),
        "worker": (settings.require_kafka, settings.require_clickhouse),
        "query-api": (
            settings.require_clickhouse,
            settings.require_auth,
            settings.require_screenshot_store,
        ),
        "init": (settings.require_kafka,),
        "migrate": (settings.require_clickhouse,),
    }
    for require in needs[role]:
        require()
    if role == "init":
        assert settings.s3.endpoint  # the bucket is created there
    if role == "migrate":
        assert settings.clickhouse.readonly_url
