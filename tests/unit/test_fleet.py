"""The realistic fleet's documented properties (docs/fleets.md), checked on its output."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from heatmap_devtools.fleet import ACTION_BUTTONS, Events, Fleet, FleetSpec, RealisticFleet

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
SPEC = FleetSpec(kind="realistic", users=20_000, start=START, seed=5)


@pytest.fixture(scope="module")
def fleet_and_events() -> tuple[RealisticFleet, Events]:
    fleet = Fleet(SPEC)
    assert isinstance(fleet, RealisticFleet)
    return fleet, fleet.events(1_000_000)


def test_kind_picks_the_generator_and_the_synthetic_fleet_is_unchanged() -> None:
    assert type(Fleet(FleetSpec(start=START))) is Fleet
    assert type(Fleet(SPEC)) is RealisticFleet
    with pytest.raises(ValueError, match="fleet kind"):
        FleetSpec(kind="weird")


def test_seeded_and_reproducible_and_the_seed_matters() -> None:
    small = dataclasses.replace(SPEC, users=500)
    first, second = Fleet(small).events(50_000), Fleet(small).events(50_000)
    other = Fleet(dataclasses.replace(small, seed=6)).events(50_000)
    for name in ("user", "screen", "campaign", "x", "y", "timestamp_ms", "event_type"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(first.x, other.x)
    # Another seed is another stretch of the same world (bench_worker's chunks).
    world, stretch = RealisticFleet(small), RealisticFleet(dataclasses.replace(small, seed=6))
    np.testing.assert_array_equal(world.user_p, stretch.user_p)
    np.testing.assert_array_equal(world.button_centres, stretch.button_centres)


def test_ranges_within_the_contract(fleet_and_events: tuple[RealisticFleet, Events]) -> None:
    _, ev = fleet_and_events
    assert len(ev) == 1_000_000
    for column in (ev.x, ev.y):
        assert column.dtype == np.float32
        assert column.min() >= 0.0
        assert column.max() < 1.0
    start = int(START.timestamp() * 1000)
    assert ev.timestamp_ms.min() >= start
    assert ev.timestamp_ms.max() < start + SPEC.hours * 3_600_000
    assert ev.user.min() >= 0
    assert ev.user.max() < SPEC.users
    assert ev.screen.max() < SPEC.screens
    assert ev.campaign.max() < SPEC.campaigns
    share = np.bincount(ev.event_type, minlength=4)[1:] / len(ev)
    assert 0.5 < share[0] < 0.75  # TAP
    assert 0.2 < share[1] < 0.4  # SCROLL (traces of many events)
    assert 0.04 < share[2] < 0.15  # ACTION_CLICK
    # A share of the traffic carries no campaign.
    none = float(np.mean(ev.campaign == 0))
    assert abs(none - SPEC.no_campaign_share) < 0.05


def test_a_batch_is_one_session_of_one_user(
    fleet_and_events: tuple[RealisticFleet, Events],
) -> None:
    _, ev = fleet_and_events
    size = SPEC.batch_events
    users = ev.user.reshape(-1, size)
    assert (users == users[:, :1]).all()
    campaigns = ev.campaign.reshape(-1, size)
    assert (campaigns == campaigns[:, :1]).all()
    ts = ev.timestamp_ms.reshape(-1, size)
    assert (np.diff(ts, axis=1) >= 0).all()  # in order within a session
    minutes = (ts[:, -1] - ts[:, 0]) / 60_000
    assert 3 < np.median(minutes) < 60
    # A few screens in sequence: screen changes per session are few, not per event.
    screens = ev.screen.reshape(-1, size)
    changes = (np.diff(screens.astype(np.int64), axis=1) != 0).sum(axis=1)
    assert 0.5 < changes.mean() < 8


def test_user_activity_follows_a_power_law(
    fleet_and_events: tuple[RealisticFleet, Events],
) -> None:
    _, ev = fleet_and_events
    sessions = np.bincount(ev.user[:: SPEC.batch_events], minlength=SPEC.users)
    ranked = np.sort(sessions)[::-1].astype(np.float64)
    # Rank-frequency slope on log-log axes over ranks 3..300 (enough sessions
    # per user there for the counts to be more than noise).
    ranks = np.arange(3, 300)
    slope = np.polyfit(np.log(ranks), np.log(ranked[ranks - 1]), 1)[0]
    assert -0.95 < slope < -0.45, slope
    # Heavy users: the top 1 % start far more than 1 % of the sessions.
    top = ranked[: SPEC.users // 100].sum() / ranked.sum()
    assert top > 0.15, top
    # The synthetic fleet, for contrast: flat activity.
    flat = Fleet(FleetSpec(users=SPEC.users, start=START)).events(1_000_000)
    flat_ranked = np.sort(np.bincount(flat.user, minlength=SPEC.users))[::-1]
    assert flat_ranked[: SPEC.users // 100].sum() / flat_ranked.sum() < 0.03


def test_taps_cluster_on_buttons_with_a_fingertip_spread(
    fleet_and_events: tuple[RealisticFleet, Events],
) -> None:
    fleet, ev = fleet_and_events
    tap = ev.event_type == 1
    device = fleet.device_of_user[ev.user[tap]]
    centres = fleet.button_centres[device, ev.screen[tap]]
    point = np.stack([ev.x[tap], ev.y[tap]], axis=-1)[:, None, :]
    nearest = np.sqrt(((centres - point) ** 2).sum(axis=-1)).min(axis=1)
    # Uniform points on the same screens, for the same measure.
    uniform = np.random.default_rng(0).random(point.shape)
    uniform_nearest = np.sqrt(((centres - uniform) ** 2).sum(axis=-1)).min(axis=1)
    # Within 8 % of the screen (~5.5 mm on a phone) of a button: most taps,
    # several times the share of uniform points.
    assert np.mean(nearest < 0.08) > 0.75
    assert np.mean(nearest < 0.08) > 3 * np.mean(uniform_nearest < 0.08)
    # ...but not on the button's exact point: a fingertip's spread (a few %).
    assert 0.01 < np.median(nearest) < 0.05
    # ACTION_CLICKs land on the action buttons.
    click = ev.event_type == 3
    device = fleet.device_of_user[ev.user[click]]
    action = fleet.button_centres[device, ev.screen[click], :ACTION_BUTTONS]
    point = np.stack([ev.x[click], ev.y[click]], axis=-1)[:, None, :]
    assert np.mean(np.sqrt(((action - point) ** 2).sum(axis=-1)).min(axis=1) < 0.08) > 0.8


def test_scrolls_are_vertical_traces(fleet_and_events: tuple[RealisticFleet, Events]) -> None:
    _, ev = fleet_and_events
    scroll = ev.event_type == 2
    # Consecutive SCROLL samples of one trace: 16 ms apart, same screen.
    nxt = scroll[:-1] & scroll[1:] & (np.diff(ev.timestamp_ms) == 16)
    assert nxt.sum() > 0.7 * scroll.sum()
    dx = np.abs(np.diff(ev.x.astype(np.float64))[nxt])
    dy = np.abs(np.diff(ev.y.astype(np.float64))[nxt])
    assert np.median(dy) > 3 * np.median(dx)
    assert (np.diff(ev.screen.astype(np.int64))[nxt] == 0).all()


def test_screen_sizes_move_bottom_buttons(fleet_and_events: tuple[RealisticFleet, Events]) -> None:
    fleet, ev = fleet_and_events
    # Several device classes are in use, and an action button (anchored in
    # millimetres above the bottom) sits at a different relative height on each.
    used = np.unique(fleet.device_of_user[ev.user])
    assert len(used) >= 4
    heights = fleet.button_centres[:, 0, 0, 1]
    assert len(np.unique(np.round(heights, 4))) == len(heights)


def test_sessions_follow_the_day(fleet_and_events: tuple[RealisticFleet, Events]) -> None:
    _, ev = fleet_and_events
    hour = (ev.timestamp_ms - int(START.timestamp() * 1000)) // 3_600_000
    per_hour = np.bincount(hour, minlength=24)
    assert per_hour[15:21].mean() > 3 * per_hour[1:6].mean()  # evening peak, night trough
