"""Benchmark of ``trackflow simulate``'s generator and request building (no network).

Prints events/s for generating the default traffic (200 users x 14 days) and a larger one, for
planning + encoding the HTTP requests, and the ratio to a baseline measured in the same run: plain
``orjson.dumps`` of the same payloads (the least any sender must do).

    .venv/bin/python bench/simulate/run.py [--users 200 --days 14]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, date, datetime

import orjson

from trackflow.simulate import SimConfig, generate
from trackflow.simulate_cli import AppTarget, build_http, plan_requests


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--days", type=int, default=14)
    args = ap.parse_args()
    targets = {"game": AppTarget("game", "game", "k"), "shop": AppTarget("shop", "shop", "k")}
    for users, days in ((args.users, args.days), (args.users * 5, args.days)):
        t0 = time.perf_counter()
        sim = generate(SimConfig(seed=1, users=users, days=days, start=date(2026, 9, 1)))
        gen_s = time.perf_counter() - t0
        n = len(sim.events)

        t0 = time.perf_counter()
        for e in sim.events:
            orjson.dumps(e.payload)
        base_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        now = datetime.now(UTC)
        nbytes = 0
        requests = 0
        for lane in plan_requests(sim.events, lanes=8, batch_size=100):
            for req in lane:
                nbytes += len(build_http(req, targets[req.app], now)[2])
                requests += 1
        enc_s = time.perf_counter() - t0
        print(f"{users} users x {days} days: {n} events, {requests} requests, {nbytes / 1e6:.1f} MB")
        print(f"  generate          {n / gen_s:>10,.0f} events/s  ({gen_s:.2f} s)")
        print(f"  plan + encode     {n / enc_s:>10,.0f} events/s  ({enc_s:.2f} s)")
        print(f"  baseline orjson   {n / base_s:>10,.0f} events/s  (encode / baseline = {enc_s / base_s:.1f}x)")


if __name__ == "__main__":
    main()
