"""What the gateway's request validation costs, beside protobuf's own parse in the same run.

For 500-event requests of the synthetic fleet (every event timestamped, as
``bench_gateway`` sends them), CPU microseconds per request of:

* ``parse``: protobuf's own ``FromString`` (the floor: no request is
  accepted without it);
* ``to_batch``: the gateway's whole validation (parse, canonical-form check,
  columns transposed by the parser, range checks, the implicit retry key);
* ``event_by_event``: the columns read from the parsed request attribute by
  attribute, which is what non-canonical (hand-made) requests pay;
* ``jwt_verify`` / ``jwt_cached``: the interceptor's authentication of the
  bench's 64 device tokens (HS256), verified every time (cache off) and with
  ``heatmap.auth``'s verified-token cache (what both bench servers now run).

Medians over ``--repeats`` interleaved rounds, process CPU time, so other
jobs on a shared machine inflate all three alike; the ratios are the figure.

    python -m bench.bench_validation [--requests 200] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

from bench.bench_gateway import DEVICES, SECRET, build_requests
from heatmap.auth import Authenticator, mint_token
from heatmap.settings import AuthSettings
from ingest_gateway import validation


def _per_request_us(fn: Callable[[bytes], object], requests: Sequence[bytes]) -> float:
    started = time.process_time()
    for data in requests:
        fn(data)
    return (time.process_time() - started) / len(requests) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="distinct 500-event requests")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    args = parser.parse_args(argv)
    requests = build_requests(args.requests, seed=1)
    now_ms = time.time_ns() // 1_000_000
    metadata = [
        [("authorization", f"Bearer {mint_token(SECRET, f'bench-device-{i:03d}', [])}")]
        for i in range(DEVICES)
    ]
    settings = AuthSettings(jwt_secret=SECRET)
    uncached, cached = Authenticator(settings, verified_cache_size=0), Authenticator(settings)
    calls = iter(range(1 << 62))

    def authenticate(auth: Authenticator) -> Callable[[bytes], object]:
        return lambda _: auth.authenticate(metadata[next(calls) % DEVICES])

    cases: dict[str, Callable[[bytes], object]] = {
        "parse": validation.parse,
        "to_batch": lambda data: validation.to_batch(data, "device-1", now_ms),
        "event_by_event": lambda data: validation._event_by_event(validation.parse(data)),
        "jwt_verify": authenticate(uncached),
        "jwt_cached": authenticate(cached),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            samples[name].append(_per_request_us(fn, requests))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, value in medians.items():
        ratio = value / medians["parse"]
        print(f"{name:>15}: {value:7.0f} us CPU per 500-event request ({ratio:.1f}x parse)")
    print(json.dumps({"us_per_request": medians, "repeats": args.repeats}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
