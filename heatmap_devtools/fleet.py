"""Mobile fleets: the documented workloads of benchmarks, loadgen and demo.

Two kinds (``FleetSpec.kind``), same API (``Fleet(spec)``, ``events(n)``,
``screen_names``, ``campaign_ids``, ``user_id``, ``buttons``):

``synthetic`` (the default, unchanged):

* ``users`` devices, each sending batches for one screen visit at a time;
* screens drawn from a Zipf distribution (a few screens get most touches);
* touches clustered around each screen's buttons (Gaussian, sd ``spread``),
  plus ``background`` share of uniform touches; scrolls spread along a column;
* event types TAP 70 %, SCROLL 20 %, ACTION_CLICK 10 %;
* timestamps over ``hours`` hours from ``start``, with a day/night cycle.

``realistic`` (``RealisticFleet``): power-law users, sessions of a few
screens, fingertip-spread taps on buttons laid out per screen size, scroll
traces, action buttons, per-session campaigns; see docs/fleets.md.

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


FLEET_KINDS = ("synthetic", "realistic")


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
    # "synthetic": independent events (the original workload, class Fleet);
    # "realistic": users, sessions, fingertips (RealisticFleet, docs/fleets.md).
    # The fields below are read by the realistic fleet only.
    kind: str = "synthetic"
    # Realistic: the world (users' activity and devices, screen layouts) comes
    # from world_seed and the event stream from seed, so chunks generated with
    # different seeds (bench_worker's fill) are the same users and screens.
    world_seed: int = 7
    user_zipf: float = 0.7
    batch_events: int = 500
    screens_per_session: float = 3.0
    no_campaign_share: float = 0.6
    gesture_gap_ms: float = 2_500.0

    def __post_init__(self) -> None:
        if self.kind not in FLEET_KINDS:
            raise ValueError(f"fleet kind must be one of {FLEET_KINDS}, not {self.kind!r}")
        if self.batch_events < 1:
            raise ValueError("batch_events must be at least 1")
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
    def __new__(cls, spec: FleetSpec = FleetSpec()) -> Fleet:
        # Fleet(spec) is how every bench, test helper and the demo build a
        # fleet: the spec's kind picks the generator behind the same API.
        if cls is Fleet and spec.kind == "realistic":
            return super().__new__(RealisticFleet)
        return super().__new__(cls)

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


# ---------------------------------------------------------------- realistic fleet

# Device classes: (name, width mm, height mm, share of users). Content-relative
# coordinates scale with the screen, a fingertip does not: the same 7 mm
# contact is a larger share of a small phone's width than of a tablet's.
DEVICES: tuple[tuple[str, float, float, float], ...] = (
    ("phone-19.5:9", 68.0, 147.0, 0.40),
    ("phone-20:9", 71.0, 158.0, 0.25),
    ("phone-16:9", 62.0, 110.0, 0.12),
    ("phone-21:9", 65.0, 152.0, 0.13),
    ("tablet-4:3", 150.0, 200.0, 0.10),
)

# Standard deviation of a tap around the aimed point: a fingertip's contact
# patch is ~7 mm across; taps aimed at one spot scatter about a third of it.
TAP_SD_MM = 2.5
# Gesture mix (per gesture, not per event: a scroll trace is many events).
P_TAP, P_ACTION, P_SCROLL = 0.855, 0.11, 0.035
SCROLL_EVENTS = (4, 20)  # events per scroll trace, uniform
# Gesture kinds 0 tap, 1 action click, 2 scroll as TouchEventType numbers.
GESTURE_EVENT_TYPE = np.array([1, 3, 2], dtype=np.uint8)
# Buttons 0..ACTION_BUTTONS-1 of every screen are its action buttons (CTAs).
ACTION_BUTTONS = 2


class RealisticFleet(Fleet):
    """Users, sessions, fingertip-spread taps, scroll traces (docs/fleets.md).

    ``events(n)`` returns whole sessions of ``spec.batch_events`` events each,
    in order: events ``[k * batch_events, (k + 1) * batch_events)`` are session
    ``k``, one user's batch, so a caller that cuts the columns into batches of
    that size (``tests/worker_support.fleet_batches``, the benches) sends one
    session per batch. A trailing partial session is cut short.
    """

    def __init__(self, spec: FleetSpec = FleetSpec(kind="realistic")) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.world_seed)
        ranks = np.arange(1, spec.screens + 1, dtype=np.float64)
        weights = ranks**-spec.zipf_s
        self.screen_p = weights / weights.sum()
        self.screen_names = [
            SCREEN_NAMES[i] if i < len(SCREEN_NAMES) else f"Screen{i:03d}"
            for i in range(spec.screens)
        ]
        self.campaign_ids = [""] + [f"campaign-{i}" for i in range(1, spec.campaigns)]
        # Power-law activity: the user of rank r starts sessions with weight
        # r^-user_zipf; ranks are shuffled so that ids say nothing about activity.
        user_w = np.arange(1, spec.users + 1, dtype=np.float64) ** -spec.user_zipf
        rng.shuffle(user_w)
        self.user_p = user_w / user_w.sum()
        self._user_cdf = np.cumsum(self.user_p)
        shares = np.array([d[3] for d in DEVICES])
        self.device_of_user = rng.choice(len(DEVICES), size=spec.users, p=shares / shares.sum())
        self.device_mm = np.array([(d[1], d[2]) for d in DEVICES])
        self.button_centres = _layouts(rng, spec.screens, spec.buttons_per_screen, self.device_mm)
        # The demo draws one reference layout (the commonest phone).
        self.buttons = self.button_centres[0]
        bw = np.arange(1, spec.buttons_per_screen + 1, dtype=np.float64) ** -1.0
        self.button_p = bw / bw.sum()
        self._rng = np.random.default_rng(spec.seed + 1)

    def events(self, n: int) -> Events:
        spec, rng = self.spec, self._rng
        size = spec.batch_events
        sessions = -(-n // size)
        shape = (sessions, size)
        user = np.minimum(
            np.searchsorted(self._user_cdf, rng.random(sessions)), spec.users - 1
        ).astype(np.int64)
        device = self.device_of_user[user]
        campaign = np.where(
            rng.random(sessions) < spec.no_campaign_share,
            0,
            rng.integers(1, max(spec.campaigns, 2), size=sessions),
        ).astype(np.uint32)
        if spec.campaigns <= 1:
            campaign[:] = 0

        # Gestures: at most one per event slot; each row's gesture lengths
        # are cumulated and every event slot finds its gesture by searchsorted
        # in one flat array (rows offset by `span` so they never overlap).
        kind = rng.choice(3, size=shape, p=[P_TAP, P_ACTION, P_SCROLL])
        length = np.where(kind == 2, rng.integers(*SCROLL_EVENTS, size=shape, endpoint=True), 1)
        end = np.cumsum(length, axis=1)
        span = size * SCROLL_EVENTS[1] + 1
        row_offset = (np.arange(sessions, dtype=np.int64) * span)[:, None]
        slot = np.arange(size, dtype=np.int64)[None, :] + row_offset
        g = np.searchsorted((end + row_offset).ravel(), slot.ravel(), side="right")
        g_row = g // size
        start = (end - length).ravel()[g]
        step = slot.ravel() - row_offset.ravel()[g_row] - start  # position inside a scroll trace
        gkind = kind.ravel()[g]

        # Screens in sequence: a session visits 1 + Poisson(2) screens, each
        # for a contiguous run of gestures; a gesture's screen is the one
        # shown where it starts, so a scroll trace stays on one screen.
        visits = np.minimum(1 + rng.poisson(spec.screens_per_session - 1, sessions), 8)
        cuts = np.sort(rng.integers(1, max(size, 2), size=(sessions, 7)), axis=1)
        cuts = np.where(np.arange(7)[None, :] < (visits - 1)[:, None], cuts, size)
        screen_seq = self._draw_screens((sessions, 8))
        which = (start[:, None] >= cuts[g_row]).sum(axis=1)
        screen = screen_seq[g_row, which].astype(np.uint32)
        dev = device[g_row]

        # Aimed points: a button (popular ones more often) for a tap, an
        # action button for ACTION_CLICK, a start point for a scroll trace.
        gesture_button = rng.choice(spec.buttons_per_screen, size=shape, p=self.button_p)
        gesture_action = rng.integers(0, min(ACTION_BUTTONS, spec.buttons_per_screen), size=shape)
        button = np.where(kind == 1, gesture_action, gesture_button).ravel()[g]
        centre = self.button_centres[dev, screen, button]
        sd = TAP_SD_MM / self.device_mm[dev]
        # One jitter per gesture (a scroll's finger position is drawn once, then moves).
        jitter = rng.normal(0.0, 1.0, size=(sessions * size, 2))
        x = centre[:, 0] + jitter[g, 0] * sd[:, 0]
        y = centre[:, 1] + jitter[g, 1] * sd[:, 1]
        background = (rng.random(shape) < spec.background).ravel()[g] & (gkind == 0)
        bx, by = rng.random(shape).ravel()[g], rng.random(shape).ravel()[g]
        x = np.where(background, bx, x)
        y = np.where(background, by, y)

        scroll = gkind == 2
        sx = rng.uniform(0.2, 0.8, size=shape).ravel()[g]
        sy0 = rng.uniform(0.3, 0.85, size=shape).ravel()[g]
        # Mostly upward swipes (reading on), a few back down; 12-40 px per
        # sample on a ~2,400 px screen; the finger drifts sideways a little.
        direction = np.where(rng.random(shape) < 0.8, -1.0, 1.0).ravel()[g]
        dy = rng.uniform(0.005, 0.017, size=shape).ravel()[g]
        dx = rng.normal(0.0, 0.002, size=shape).ravel()[g]
        x = np.where(scroll, sx + dx * step, x)
        y = np.where(scroll, sy0 + direction * dy * step, y)

        # Time: a tap every ~2.5 s (exponential), scroll samples every 16 ms.
        gap = np.where(
            step > 0,
            16.0,
            rng.exponential(spec.gesture_gap_ms, size=shape).ravel()[g] + 50.0,
        ).reshape(shape)
        offset = np.cumsum(gap, axis=1).astype(np.int64)
        duration = offset[:, -1]
        span_ms = spec.hours * 3_600_000
        session_start = np.minimum(
            self._diurnal_ms(sessions), np.maximum(span_ms - 1 - duration, 0)
        )
        start_ms = int(spec.first_hour.timestamp() * 1000)
        timestamp = np.minimum(start_ms + session_start[:, None] + offset, start_ms + span_ms - 1)

        top = np.float32(np.nextafter(np.float32(1.0), np.float32(0.0)))
        out = slice(0, n)
        return Events(
            user=np.repeat(user, size)[out],
            screen=screen[out],
            campaign=np.repeat(campaign, size)[out],
            x=np.clip(x, 0.0, top).astype(np.float32)[out],
            y=np.clip(y, 0.0, top).astype(np.float32)[out],
            timestamp_ms=timestamp.ravel().astype(np.int64)[out],
            event_type=GESTURE_EVENT_TYPE[gkind][out],
        )

    def _draw_screens(self, shape: tuple[int, int]) -> npt.NDArray[np.int64]:
        cdf = np.cumsum(self.screen_p)
        drawn = np.searchsorted(cdf, self._rng.random(shape))
        return np.minimum(drawn, self.spec.screens - 1).astype(np.int64)

    def _diurnal_ms(self, n: int) -> npt.NDArray[np.int64]:
        """Session start offsets (ms from the span start), evening peak, night trough."""
        spec, rng = self.spec, self._rng
        hours = np.arange(spec.hours)
        weight = 1.2 + np.sin((hours % 24 - 9) / 24 * 2 * np.pi)
        hour = rng.choice(spec.hours, size=n, p=weight / weight.sum())
        ms: npt.NDArray[np.int64] = hour.astype(np.int64) * 3_600_000 + rng.integers(
            0, 3_600_000, size=n
        )
        return ms


def _layouts(
    rng: np.random.Generator, screens: int, buttons: int, device_mm: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Button centres per (device, screen, button), content-relative.

    A screen's layout is fixed in millimetres from an anchor: action buttons
    sit at the bottom (a CTA above the navigation bar), a third of the rest in
    the top bar, the others in the content at a share of the height. So the
    same button is at different relative heights on different aspects, as it
    is on real phones; horizontal positions scale with the width.
    """
    x_share = rng.uniform(0.12, 0.88, size=(screens, buttons))
    where = rng.random((screens, buttons))
    anchor = np.where(where < 0.33, 0, 2)  # 0 top, 1 bottom, 2 content
    anchor[:, : min(ACTION_BUTTONS, buttons)] = 1
    top_mm = rng.uniform(6.0, 16.0, size=(screens, buttons))
    bottom_mm = rng.uniform(10.0, 22.0, size=(screens, buttons))
    content_share = rng.uniform(0.2, 0.8, size=(screens, buttons))
    height = device_mm[:, 1][:, None, None]
    y = np.where(
        anchor == 0,
        top_mm / height,
        np.where(anchor == 1, 1.0 - bottom_mm / height, content_share + 0 * height),
    )
    x = np.broadcast_to(x_share, y.shape)
    centres: npt.NDArray[np.float64] = np.stack([x, y], axis=-1)
    return centres
