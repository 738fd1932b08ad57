"""Chaos soak: ``heatmap dev`` under steady load while a seeded schedule kills and
restarts its parts; at the end every acknowledged event must be counted exactly once.

    python -m bench.soak --minutes 10 [--rate EVENTS_PER_S] [--seed 1]

Not run in CI (minutes long). What runs, all on loopback and all stopped at the end:

* an external Kafka broker (``heatmap_devtools.localinfra.kafka.KafkaBroker`` in a temp
  dir) and ``heatmap dev`` pointed at it with ``HEATMAP_KAFKA_BOOTSTRAP``;
* a load client in this process (``LoadClient``): 500-event requests from the
  synthetic fleet (``heatmap_devtools.loadgen.DistinctRequests``: no two alike, every
  event timestamped), half with an explicit ``batch_id`` and half without (the
  gateway's implicit key then applies). Like a mobile SDK it resends the *same
  bytes* after UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED or a broken
  connection, with capped backoff, until it gets an answer - across a dev
  process that is killed and restarted. It counts acknowledged events per
  screen and per (device, screen).

First a **calibration**: closed-loop load for ``--calibrate-s``, then the wait
until it is all counted; capacity = events / (time from the first send until
all counted), the whole stack's sustained throughput on this machine now.
The soak offers half of it (open loop) unless ``--rate`` is given.

Then the **schedule** (seeded, printed up front) cycles through the fault kinds
in a shuffled order, with a seeded hold time and a gap of steady load after
each recovery:

==================  ==========================================================
``dev-kill``        SIGKILL the dev process alone, restart it on the same data dir
``dev-group-kill``  SIGKILL the dev process group, restart it
``dev-pause``       SIGSTOP the dev process past the client deadline and the
                    consumer session timeout, then SIGCONT
``broker-stop``     stop the broker (SIGTERM), start it again on the same log dir
``broker-kill``     SIGKILL the broker JVM, start it again
``broker-pause``    SIGSTOP the broker past the gateway's publish timeout, SIGCONT
==================  ==========================================================

Time to recover (TTR) = from the fault until the first acknowledgement of a
request attempt started once the fault was in full effect (a stopping broker
serves until it is gone), so it includes the hold, the restart and the
client's backoff of at most ``MAX_BACKOFF_S``; "no-ack" is the longest time
without any acknowledgement in that span. A dev process or broker that exits
on its own is restarted and reported as an unplanned fault.

At the end the load stops (every request in flight is resent until answered),
and QueryHeatmapData (ALL_USERS, grid 8, unbounded time, through gRPC) must
equal the acknowledged events per screen, and PER_USER per (device, screen),
exactly. Exit 0 only then; on a mismatch the retry history of the requests of
the devices concerned is printed and the work dir is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from heatmap.auth import VIEW_HEATMAPS, mint_token
from heatmap_devtools.fleet import Fleet, FleetSpec
from heatmap_devtools.loadgen import INGEST, DistinctRequests, build_requests
from heatmap_devtools.localinfra.dev_process import DevProcess
from heatmap_devtools.localinfra.kafka import KafkaBroker
from heatmap_devtools.localinfra.process import cmdline
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc

BATCH = 500
DEVICES = 500
TEMPLATES = 400
CONCURRENCY = 32
CALL_TIMEOUT_S = 10.0
MAX_BACKOFF_S = 1.0
RECOVERY_LIMIT_S = 240.0
# Codes a client cannot fix by resending: anything else is resent as is.
FINAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
KINDS = (
    "dev-kill",
    "dev-group-kill",
    "dev-pause",
    "broker-stop",
    "broker-kill",
    "broker-pause",
)


# ---------------------------------------------------------------------------- load


@dataclass
class Attempts:
    """The send history of one request that was not answered OK at once."""

    user: str
    screens: Counter[str]
    tries: list[tuple[float, str]] = field(default_factory=list)  # (started, outcome)


class LoadClient:
    """Retrying load in its own thread and event loop; ``start(rate)`` / ``stop()``
    may be called several times (request numbers continue, so every request stays
    distinct for the whole run)."""

    def __init__(
        self,
        target: str,
        requests: DistinctRequests,
        fleet: Fleet,
        secret: str,
        *,
        resend_new_bytes: bool = False,
    ) -> None:
        self.target = target
        self.requests = requests
        self.resend_new_bytes = resend_new_bytes
        self.users = [fleet.user_id(i) for i in range(DEVICES)]
        self.tokens = [mint_token(secret, u, []) for u in self.users]
        self.acked_screen: Counter[str] = Counter()
        self.acked_user_screen: Counter[tuple[str, str]] = Counter()
        self.acked_events = 0
        self.acked_requests = 0
        self.explicit_requests = 0
        self.retries: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()  # final errors: the events are not stored
        self.wrong_counts = 0  # replies whose ingested_count is not the batch size
        self.retried: dict[int, Attempts] = {}
        self.unresolved: dict[int, Attempts] = {}  # given up at stop: stored or not, unknown
        # Appended in acknowledgement order (one event loop), read by the fault thread.
        self.ack_times: list[float] = []
        self.ack_starts: list[float] = []
        self._next_k = 0
        self._stopping = False
        self._abandon = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, rate: float | None) -> None:
        """``rate`` events/s open loop, or ``None``: closed loop, as fast as answered."""
        self._stopping = False
        self._abandon = False
        self._thread = threading.Thread(target=self._run, args=(rate,), daemon=True)
        self._thread.start()

    def stop(self, drain_s: float) -> None:
        """Take no new request; resend those in flight until answered, for up to ``drain_s``."""
        self._stopping = True
        if self._thread is None:
            return
        self._thread.join(drain_s)
        if self._thread.is_alive():
            self._abandon = True
            self._thread.join(30)
        self._thread = None
        if self.error is not None:
            raise RuntimeError("load client failed") from self.error

    def first_ack_after(self, t: float) -> float | None:
        """When the first attempt started at or after ``t`` was acknowledged."""
        i = bisect.bisect_left(self.ack_times, t)
        n = len(self.ack_times)
        while i < n:
            if self.ack_starts[i] >= t:
                return self.ack_times[i]
            i += 1
        return None

    def longest_silence(self, start: float, end: float) -> float:
        """The longest time in [start, end] without any acknowledgement."""
        lo = bisect.bisect_right(self.ack_times, start)
        hi = bisect.bisect_right(self.ack_times, end)
        points = [start, *self.ack_times[lo:hi], end]
        return max(b - a for a, b in itertools.pairwise(points))

    def timeline(self, start: float, end: float, step_s: float = 30.0) -> list[int]:
        """Events acknowledged per second in each ``step_s`` window of [start, end]."""
        edges = [start + i * step_s for i in range(int((end - start) / step_s) + 1)]
        marks = [bisect.bisect_left(self.ack_times, t) for t in edges]
        return [round((b - a) * BATCH / step_s) for a, b in itertools.pairwise(marks)]

    def _run(self, rate: float | None) -> None:
        try:
            asyncio.run(self._main(rate))
        except BaseException as e:  # reported by stop(), in the main thread
            self.error = e

    async def _main(self, rate: float | None) -> None:
        options = [
            ("grpc.max_send_message_length", 4 << 20),
            # A restarted server is found within a second (as an SDK would
            # configure), not after grpc's default backoff of up to 120 s.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        async with grpc.aio.insecure_channel(self.target, options=options) as channel:
            call = channel.unary_unary(
                INGEST,
                request_serializer=None,
                response_deserializer=heatmap_pb2.IngestTouchEventsResponse.FromString,
            )
            first_k = self._next_k
            start = time.monotonic()

            async def sender() -> None:
                while not self._stopping:
                    k = self._next_k
                    self._next_k += 1
                    if rate is not None:
                        delay = start + (k - first_k) * BATCH / rate - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        if self._stopping:
                            return
                    await self._send(call, k)

            await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))

    async def _send(self, call: grpc.aio.UnaryUnaryMultiCallable, k: int) -> None:
        data = self.requests[k]
        if k % 2 == 0:
            # Field 2 after the events: the canonical order, so the fast parser applies.
            data += heatmap_pb2.IngestTouchEventsRequest(batch_id=f"soak-{k}").SerializeToString()
        i = k % DEVICES
        metadata = (("authorization", f"Bearer {self.tokens[i]}"),)
        screens = self.requests.screen_counts(k)
        attempts: Attempts | None = None
        backoff = 0.05
        while True:
            started = time.monotonic()
            try:
                reply = await call(data, metadata=metadata, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if attempts is None:
                    attempts = self.retried[k] = Attempts(self.users[i], screens)
                attempts.tries.append((started, code.name))
                if code in FINAL_CODES:
                    self.rejected[code.name] += 1
                    return
                self.retries[code.name] += 1
                if self._abandon:
                    self.unresolved[k] = attempts
                    return
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                if self.resend_new_bytes and k % 2:
                    # The control: a client that rebuilds its request (same events
                    # and screens, one timestamp moved 1,000 s per attempt, still
                    # in the past) - no server can tell it from a new batch.
                    data = self.requests[k + TEMPLATES * 10**6 * min(len(attempts.tries), 60)]
                continue
            break
        if attempts is not None:
            attempts.tries.append((started, "OK"))
        if reply.ingested_count != BATCH:
            self.wrong_counts += 1
        self.acked_screen.update(screens)
        for screen, n in screens.items():
            self.acked_user_screen[(self.users[i], screen)] += n
        self.acked_events += BATCH
        self.acked_requests += 1
        self.explicit_requests += k % 2 == 0
        self.ack_starts.append(started)
        self.ack_times.append(time.monotonic())


# ---------------------------------------------------------------------------- counts


class Counts:
    """What the stack counted, through the public query RPC."""

    def __init__(self, target: str, secret: str, screens: list[str]) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = heatmap_pb2_grpc.HeatmapServiceStub(self.channel)
        self.metadata = (
            ("authorization", "Bearer " + mint_token(secret, "soak", [VIEW_HEATMAPS])),
        )
        self.screens = screens

    def per_screen(self) -> dict[str, int] | None:
        try:
            return {
                s: self.stub.QueryHeatmapData(
                    heatmap_pb2.QueryHeatmapDataRequest(screen_name=s, grid_size=8),
                    metadata=self.metadata,
                    timeout=10,
                ).total_count
                for s in self.screens
            }
        except grpc.RpcError:
            return None

    def per_user(self, screen: str) -> dict[str, int]:
        reply = self.stub.QueryHeatmapData(
            heatmap_pb2.QueryHeatmapDataRequest(
                screen_name=screen, grid_size=8, mode=heatmap_pb2.PER_USER
            ),
            metadata=self.metadata,
            timeout=30,
        )
        return {u.user_id: u.touch_count for u in reply.user_touch_counts}

    def wait_equal(self, expected: Counter[str], timeout_s: float) -> tuple[dict[str, int], float]:
        """Poll until the counts equal ``expected`` (then once more, a few flushes
        later: a replay counted twice would show), or until they stop changing for
        60 s (20 s after the deadline). Returns the last counts and when they were
        first equal (NaN: never)."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, int] | None = None
        last_change = time.monotonic()
        while True:
            now = self.per_screen()
            if now is not None and all(now[s] == expected[s] for s in self.screens):
                equal_at = time.monotonic()
                time.sleep(3.0)
                again = self.per_screen()
                return (again if again is not None else now), equal_at
            if now != last:
                last, last_change = now, time.monotonic()
            still_s = time.monotonic() - last_change
            if still_s > 60 or (time.monotonic() > deadline and still_s > 20):
                return last or {}, float("nan")
            time.sleep(0.5)

    def close(self) -> None:
        self.channel.close()


# ---------------------------------------------------------------------------- faults


@dataclass
class Fault:
    kind: str
    hold_s: float
    gap_s: float
    injected: float = float("nan")
    # In full effect: a stopping broker still answers until it is gone.
    effective: float = float("nan")
    healed: float = float("nan")  # restart issued / SIGCONT sent
    recovered: float = float("nan")  # first ack of an attempt started after ``effective``
    silent_s: float = float("nan")  # longest time without any ack, injection to recovery
    note: str = ""

    @property
    def ttr_s(self) -> float:
        return self.recovered - self.injected

    @property
    def after_heal_s(self) -> float:
        return self.recovered - self.healed


def plan(seed: int, count: int, kinds: tuple[str, ...] = KINDS) -> list[Fault]:
    """The fault schedule: each round every kind once, in a seeded order."""
    rng = random.Random(seed)
    holds = {
        "dev-kill": (0.0, 0.0),
        "dev-group-kill": (0.0, 0.0),
        # Past the client deadline (10 s) and the consumer session timeout (10 s).
        "dev-pause": (12.0, 18.0),
        "broker-stop": (3.0, 12.0),
        "broker-kill": (3.0, 12.0),
        # Past the gateway's publish timeout (5 s): requests in flight are
        # answered UNAVAILABLE and may still be appended when it resumes.
        "broker-pause": (6.0, 15.0),
    }
    faults: list[Fault] = []
    while len(faults) < count:
        order = list(kinds)
        rng.shuffle(order)
        for kind in order:
            low, high = holds[kind]
            faults.append(Fault(kind, round(rng.uniform(low, high), 1), round(rng.uniform(15, 30))))
    return faults[:count]


class Stack:
    """The external broker and ``heatmap dev``; injects faults and restarts parts
    that exit on their own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.broker = KafkaBroker(root / "kafka")
        self.dev = DevProcess(root / "data", {"HEATMAP_KAFKA_BOOTSTRAP": self.broker.bootstrap})
        self.unplanned: list[Fault] = []
        self._paused: list[int] = []

    def start(self) -> None:
        self.broker.start(timeout_s=120)
        self.dev.start(timeout_s=180)

    def inject(self, fault: Fault) -> None:
        """Cause ``fault``, hold it, undo it (``fault.healed`` = when undoing began)."""
        fault.injected = fault.effective = time.monotonic()
        kind = fault.kind
        if kind in ("dev-kill", "dev-group-kill"):
            self.dev.kill(group=kind == "dev-group-kill")
            fault.healed = time.monotonic()
            self.dev.start(timeout_s=180)
        elif kind == "dev-pause":
            self._pause(self.dev.pid, fault)
        elif kind == "broker-pause":
            assert self.broker.pid is not None
            self._pause(self.broker.pid, fault)
        elif kind == "broker-stop":
            self.broker.stop()
            fault.effective = time.monotonic()
            time.sleep(fault.hold_s)
            fault.healed = time.monotonic()
            self.broker.start(timeout_s=120)
        elif kind == "broker-kill":
            assert self.broker.pid is not None
            os.kill(self.broker.pid, signal.SIGKILL)
            self.broker.stop()  # reaps its watchdog, which exits with the JVM
            time.sleep(fault.hold_s)
            fault.healed = time.monotonic()
            self.broker.start(timeout_s=120)
        else:
            raise ValueError(kind)

    def _pause(self, pid: int, fault: Fault) -> None:
        os.kill(pid, signal.SIGSTOP)
        self._paused.append(pid)
        try:
            time.sleep(fault.hold_s)
        finally:
            fault.healed = time.monotonic()
            os.kill(pid, signal.SIGCONT)
            self._paused.remove(pid)

    def check(self) -> Fault | None:
        """Restart a part that exited on its own; returned as an unplanned fault."""
        fault: Fault | None = None
        proc = self.dev.proc
        if proc is not None and proc.poll() is not None:
            fault = Fault("unplanned-dev-exit", 0.0, 0.0, time.monotonic(), time.monotonic())
            fault.note = f"heatmap dev exited {proc.returncode}: {self._last_error()}"
            self.dev.proc = None
            fault.healed = time.monotonic()
            self.dev.start(timeout_s=180)
        elif not self.broker.running:
            fault = Fault("unplanned-broker-exit", 0.0, 0.0, time.monotonic(), time.monotonic())
            self.broker.stop()
            fault.healed = time.monotonic()
            self.broker.start(timeout_s=120)
        if fault is not None:
            self.unplanned.append(fault)
        return fault

    def _last_error(self) -> str:
        lines = [ln for ln in self.dev.run_log().splitlines() if ln.strip()]
        for line in reversed(lines):
            if "Error" in line or "error" in line or "CRITICAL" in line:
                return line.strip()[:300]
        return lines[-1].strip()[:300] if lines else "(empty log)"

    def stop(self) -> None:
        for pid in list(self._paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        try:
            self.dev.stop()
        finally:
            self.dev.kill_leftovers()
            self.broker.stop()

    def leftovers(self) -> list[int]:
        """Live processes whose command line names the work dir (dev, broker, watchdog)."""
        me = os.getpid()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            if any(str(self.root) in word for word in cmdline(int(entry.name))):
                found.append(int(entry.name))
        return found


# ---------------------------------------------------------------------------- run


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_recovered(fault: Fault, client: LoadClient, stack: Stack, faults: list[Fault]) -> None:
    """Until an attempt started after ``fault`` (and after any part that exits
    on its own meanwhile, which is restarted and added to ``faults``) is acknowledged."""
    pending = [fault]
    deadline = time.monotonic() + RECOVERY_LIMIT_S
    while pending and time.monotonic() < deadline:
        for f in list(pending):
            acked = client.first_ack_after(f.effective)
            if acked is not None:
                f.recovered = acked
                f.silent_s = client.longest_silence(f.injected, acked)
                pending.remove(f)
        extra = stack.check()
        if extra is not None:
            log(f"UNPLANNED {extra.kind}: {extra.note}")
            faults.append(extra)
            pending.append(extra)
        time.sleep(0.1)
    for f in pending:
        f.note += f" not recovered within {RECOVERY_LIMIT_S:.0f}s"


def steady(seconds: float, client: LoadClient, stack: Stack, faults: list[Fault]) -> None:
    """Load without planned faults; a part that exits on its own is restarted and timed."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        extra = stack.check()
        if extra is not None:
            log(f"UNPLANNED {extra.kind}: {extra.note}")
            faults.append(extra)
            wait_recovered(extra, client, stack, faults)
            log(f"  recovered in {extra.ttr_s:.1f}s")
        before = time.monotonic()
        time.sleep(0.5)
        late = time.monotonic() - before - 0.5
        if late > 2.0:  # this process starved (shared machine): say so, the figures suffer
            log(f"  (the fault schedule's 0.5 s sleep took {late + 0.5:.1f}s)")


def calibrate(client: LoadClient, counts: Counts, seconds: float) -> tuple[float, float, float]:
    """Closed-loop load for ``seconds``; capacity from the first send until all counted."""
    start = time.monotonic()
    client.start(rate=None)
    time.sleep(seconds)
    client.stop(drain_s=60)
    acked_s = time.monotonic() - start
    _, equal_at = counts.wait_equal(client.acked_screen, 120)
    if equal_at != equal_at:  # NaN
        raise SystemExit("calibration: the counts never matched the acknowledged events")
    counted_s = equal_at - start
    return client.acked_events / counted_s, client.acked_events / acked_s, counted_s - acked_s


def summary_table(faults: list[Fault]) -> str:
    by_kind: dict[str, list[Fault]] = defaultdict(list)
    for f in faults:
        by_kind[f.kind].append(f)
    rows = ["fault                   n  recovered  TTR median  TTR max  no-ack max  after-heal max"]
    for kind, group in sorted(by_kind.items()):
        ok = [f for f in group if f.recovered == f.recovered]
        ttr = [f.ttr_s for f in ok]
        rows.append(
            f"{kind:<22} {len(group):>2}  {len(ok):>9}  "
            + (
                f"{statistics.median(ttr):>9.1f}s  {max(ttr):>6.1f}s  "
                f"{max(f.silent_s for f in ok):>9.1f}s  "
                f"{max(f.after_heal_s for f in ok):>12.1f}s"
                if ok
                else ""
            )
        )
    return "\n".join(rows)


def explain_mismatch(
    client: LoadClient, counts: Counts, screens: list[str], faults: list[Fault], t0: float
) -> None:
    """Per (device, screen) differences, and the retry history of those devices' requests."""
    for screen in screens:
        got = counts.per_user(screen)
        expected = {u: n for (u, s), n in client.acked_user_screen.items() if s == screen}
        for user in sorted(set(got) | set(expected)):
            if got.get(user, 0) != expected.get(user, 0):
                n_got, n_want = got.get(user, 0), expected.get(user, 0)
                print(f"  {screen} / {user}: counted {n_got}, acknowledged {n_want}")
                for k, a in sorted(client.retried.items()):
                    if a.user == user and screen in a.screens:
                        tries = ", ".join(f"{t - t0:.1f}s {o}" for t, o in a.tries)
                        key = "batch_id" if k % 2 == 0 else "implicit key"
                        print(f"    request {k} ({a.screens[screen]} on it, {key}): {tries}")
    for f in faults:
        at = ", ".join(
            f"{what} {t - t0:.1f}s"
            for what, t in (("at", f.injected), ("healed", f.healed), ("recovered", f.recovered))
        )
        print(f"  fault {f.kind}: {at} {f.note}")


def run(args: argparse.Namespace, root: Path) -> int:
    fleet = Fleet(FleetSpec(users=DEVICES, seed=args.seed))
    screens = list(fleet.screen_names)
    log(f"building {TEMPLATES} request templates of {BATCH} events")
    requests = DistinctRequests(build_requests(fleet, TEMPLATES, BATCH))
    stack = Stack(root)
    counts: Counts | None = None
    client: LoadClient | None = None
    try:
        log(f"starting Kafka and heatmap dev in {root}")
        stack.start()
        log(f"heatmap dev SERVING on {stack.dev.target}, Kafka at {stack.broker.bootstrap}")
        client = LoadClient(
            stack.dev.target,
            requests,
            fleet,
            stack.dev.secret,
            resend_new_bytes=args.resend_new_bytes,
        )
        counts = Counts(stack.dev.target, stack.dev.secret, screens)

        capacity, acked_rate, lag_s = calibrate(client, counts, args.calibrate_s)
        rate = args.rate or capacity / 2
        log(
            f"calibration: {client.acked_events:,} events; capacity {capacity:,.0f} events/s "
            f"(acknowledged at {acked_rate:,.0f}/s, all counted {lag_s:.1f}s after the last ack); "
            f"soak rate {rate:,.0f} events/s ({rate / capacity:.0%} of capacity)"
        )
        calibration_events = client.acked_events

        total_s = args.minutes * 60
        schedule = plan(args.seed, max(1, int(total_s / 15)), tuple(args.kinds.split(",")))
        print(f"fault plan (seed {args.seed}; kind, hold s, gap s):")
        print(
            "  "
            + "; ".join(f"{f.kind} {f.hold_s} {f.gap_s}" for f in schedule[: int(total_s / 30) + 2])
        )

        t0 = time.monotonic()
        end = t0 + total_s
        client.start(rate=rate)
        faults: list[Fault] = []
        steady(min(30.0, total_s / 4), client, stack, faults)
        for fault in schedule:
            # Leave time for the fault, its recovery and a little steady load.
            if time.monotonic() + fault.hold_s + 60 > end:
                break
            log(f"fault {fault.kind} (hold {fault.hold_s}s)")
            stack.inject(fault)
            faults.append(fault)
            wait_recovered(fault, client, stack, faults)
            log(
                f"  recovered {fault.ttr_s:.1f}s after the fault (longest without an ack "
                f"{fault.silent_s:.1f}s), {fault.after_heal_s:.1f}s after the heal; "
                f"{client.acked_events:,} acknowledged"
                + (f" ({fault.note.strip()})" if fault.note else "")
            )
            steady(min(fault.gap_s, max(0.0, end - time.monotonic())), client, stack, faults)
        steady(max(0.0, end - time.monotonic()), client, stack, faults)
        log("stopping the load (in-flight requests are resent until answered)")
        client.stop(drain_s=120)
        soak_s = time.monotonic() - t0
        soak_events = client.acked_events - calibration_events
        log(f"waiting until {client.acked_events:,} acknowledged events are counted")
        counted, equal_at = counts.wait_equal(client.acked_screen, 240)
        caught_up_s = equal_at - (t0 + soak_s)

        mismatched = {
            s: (client.acked_screen[s], counted.get(s))
            for s in screens
            if counted.get(s) != client.acked_screen[s]
        }
        per_user_bad = 0
        for screen in screens:
            got = counts.per_user(screen)
            want = {u: n for (u, s), n in client.acked_user_screen.items() if s == screen}
            per_user_bad += sum(1 for u in set(got) | set(want) if got.get(u, 0) != want.get(u, 0))

        planned = [f for f in faults if not f.kind.startswith("unplanned")]
        recovered = [f for f in faults if f.recovered == f.recovered]
        ttrs = [f.ttr_s for f in recovered]
        longest = max(recovered, key=lambda f: f.ttr_s) if recovered else None
        print()
        print(summary_table(faults))
        total_counted = sum(v or 0 for v in counted.values())
        result = {
            "minutes": args.minutes,
            "seed": args.seed,
            "capacity_events_per_s": round(capacity),
            "offered_events_per_s": round(rate),
            "soak_acknowledged_events_per_s": round(soak_events / soak_s),
            "faults_planned": len(planned),
            "faults_unplanned": len(faults) - len(planned),
            "faults_recovered": len(recovered),
            "events_acknowledged": client.acked_events,
            "events_counted": total_counted,
            "requests_acknowledged": client.acked_requests,
            "requests_with_batch_id": client.explicit_requests,
            "requests_resent": len(client.retried),
            "retries_by_code": dict(client.retries),
            "rejected_by_code": dict(client.rejected),
            "unresolved_requests": len(client.unresolved),
            "wrong_ingested_count_replies": client.wrong_counts,
            "recovery_s_median": round(statistics.median(ttrs), 1) if ttrs else None,
            "recovery_s_max": round(longest.ttr_s, 1) if longest else None,
            "recovery_s_max_kind": longest.kind if longest else None,
            "no_ack_s_max": round(max(f.silent_s for f in recovered), 1) if recovered else None,
            "counted_after_last_ack_s": round(caught_up_s, 1)
            if caught_up_s == caught_up_s
            else None,
            "screens_mismatched": len(mismatched),
            "device_screen_pairs_mismatched": per_user_bad,
            "unplanned": [f.note for f in faults if f.kind.startswith("unplanned")],
            "acknowledged_events_per_s_by_30s": client.timeline(t0, t0 + soak_s),
        }
        print(json.dumps(result, indent=2))
        ok = (
            not mismatched
            and per_user_bad == 0
            and not client.rejected
            and not client.unresolved
            and client.wrong_counts == 0
            and len(recovered) == len(faults)
        )
        if mismatched or per_user_bad:
            print("MISMATCH (screen: acknowledged, counted):")
            for s, (want_n, got_n) in mismatched.items():
                print(f"  {s}: {want_n} acknowledged, {got_n} counted")
            explain_mismatch(client, counts, screens, faults, t0)
        print("EXACT: every acknowledged event counted once" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.stop(drain_s=0)
        if counts is not None:
            counts.close()
        stack.stop()
        left = stack.leftovers()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        print(f"stopped everything; processes left on the work dir: {left or 'none'}", flush=True)


@contextlib.contextmanager
def work_dir(path: str | None) -> Iterator[tuple[Path, Callable[[], None]]]:
    """The soak's directory; a temp one is removed unless ``keep()`` was called."""
    if path:
        root = Path(path).resolve()
        root.mkdir(parents=True, exist_ok=True)
        yield root, lambda: None
        return
    root = Path(tempfile.mkdtemp(prefix="soak-")).resolve()
    kept = False

    def keep() -> None:
        nonlocal kept
        kept = True

    try:
        yield root, keep
    finally:
        if kept:
            print(f"work dir kept for inspection: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="events/s (default: half the calibrated capacity)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--calibrate-s", type=float, default=20.0)
    parser.add_argument(
        "--resend-new-bytes",
        action="store_true",
        help="control run: resend requests without batch_id as new bytes; must then fail",
    )
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="comma-separated fault kinds (default: all)"
    )
    parser.add_argument(
        "--work-dir", default=None, help="keep everything here (default: a temp dir)"
    )
    args = parser.parse_args()
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(sorted(unknown))} (known: {', '.join(KINDS)})")
    with work_dir(args.work_dir) as (root, keep):
        code = 1
        try:
            code = run(args, root)
        finally:
            if code != 0:
                keep()
    return code


if __name__ == "__main__":
    sys.exit(main())
