"""Entry point (not built yet: see the open issue for this stage)."""

from __future__ import annotations

from heatmap.settings import Settings


def run(settings: Settings) -> int:
    raise SystemExit("not built yet")
