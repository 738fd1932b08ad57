"""A synthetic mobile fleet: the documented workload of benchmarks, loadgen and demo.

* ``users`` devices, each sending batches for one screen visit at a time;
* screens drawn from a Zipf distribution (a few screens get most touches);
* touches clustered around each screen's buttons (Gaussian, sd ``spread``),
  plus ``background`` share of uniform touches; scrolls spread along a column;
* event types TAP 70 %, SCROLL 20 %, ACTION_CLICK 10 %;
* timestamps over ``hours`` hours from ``start``, with a day/night cycle.

Everything is vectorised numpy and seeded, so a run is reproducible.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SCREEN_NAMES = (
    "Home",
    "Search",
    "ProductDetail",
    "Cart",
    "Checkout",
    "Profile",
    "Settings",
    "Feed",
    "Notifications",
    "Onboarding",
    "Login",
    "OrderHistory",
    "Wishlist",
    "Help",
    "Categories",
    "Deals",
)


@dataclass(frozen=True)
class FleetSpec:
    users: int = 100_000
    screens: int = 40
    campaigns: int = 5
    zipf_s: float = 1.1
    buttons_per_screen: int = 8
    spread: float = 0.02
    background: float = 0.1
    # None: the span ends one day before now (whole UTC hours), so the gateway's
    # time window (at most 30 days old by default) accepts the events on any day.
    start: dt.datetime | None = None
    hours: int = 24
    seed: int = 7

    def __post_init__(self) -> None:
        if self.start is None:
            now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
            object.__setattr__(self, "start", now - dt.timedelta(hours=self.hours + 24))

    @property
    def first_hour(self) -> dt.datetime:
        assert self.start is not None  # set by __post_init__
        return self.start


@dataclass(frozen=True)
class Events:
    """Event columns; names are looked up through the fleet's dictionaries."""

    user: npt.NDArray[np.int64]
    screen: npt.NDArray[np.uint32]
    campaign: npt.NDArray[np.uint32]
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    timestamp_ms: npt.NDArray[np.int64]
    event_type: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Fleet:
    def __init__(self, spec: FleetSpec = FleetSpec()) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        ranks = np.arange(1, spec.screens + 1, dtype=np.float64)
        weights = ranks**-spec.zipf_s
        self.screen_p = weights / weights.sum()
        self.screen_names = [
            SCREEN_NAMES[i] if i < len(SCREEN_NAMES) else f"Screen{i:03d}"
            for i in range(spec.screens)
        ]
        # "" (no campaign) is the most common campaign value.
        self.campaign_ids = [""] + [f"campaign-{i}" for i in range(1, spec.campaigns)]
        self.buttons = rng.uniform(0.08, 0.92, size=(spec.screens, spec.buttons_per_screen, 2))
        self._rng = np.random.default_rng(spec.seed + 1)

    def user_id(self, index: int) -> str:
        return f"device-{index:08d}"

    def events(self, n: int) -> Events:
        spec, rng = self.spec, self._rng
        screen = rng.choice(spec.screens, size=n, p=self.screen_p).astype(np.uint32)
        button = rng.integers(0, spec.buttons_per_screen, size=n)
        centre = self.buttons[screen, button]
        x = centre[:, 0] + rng.normal(0, spec.spread, n)
        y = centre[:, 1] + rng.normal(0, spec.spread, n)
        event_type = rng.choice(np.array([1, 2, 3], dtype=np.uint8), size=n, p=[0.7, 0.2, 0.1])
        scroll = event_type == 2
        y[scroll] = rng.uniform(0.2, 0.95, int(scroll.sum()))
        background = rng.random(n) < spec.background
        x[background] = rng.random(int(background.sum()))
        y[background] = rng.random(int(background.sum()))
        return Events(
            user=rng.integers(0, spec.users, size=n, dtype=np.int64),
            screen=screen,
            campaign=rng.choice(spec.campaigns, size=n, p=_campaign_p(spec.campaigns)).astype(
                np.uint32
            ),
            x=np.clip(x, 0.0, 1.0).astype(np.float32),
            y=np.clip(y, 0.0, 1.0).astype(np.float32),
            timestamp_ms=self._timestamps(n),
            event_type=event_type,
        )

    def _timestamps(self, n: int) -> npt.NDArray[np.int64]:
        spec, rng = self.spec, self._rng
        hours = np.arange(spec.hours)
        # Day/night cycle: peak in the evening, trough at night (UTC here).
        weight = 1.2 + np.sin((hours % 24 - 9) / 24 * 2 * np.pi)
        hour = rng.choice(spec.hours, size=n, p=weight / weight.sum())
        start_ms = int(spec.first_hour.timestamp() * 1000)
        offset = hour.astype(np.int64) * 3_600_000 + rng.integers(0, 3_600_000, size=n)
        return (start_ms + offset).astype(np.int64)


def _campaign_p(campaigns: int) -> npt.NDArray[np.float64]:
    weights = np.ones(campaigns)
    weights[0] = campaigns  # half the traffic carries no campaign
    p: npt.NDArray[np.float64] = weights / weights.sum()
    return p
