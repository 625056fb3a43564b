"""HTTP/1.1 keep-alive load generator on uvloop (run as its own process by ``run.py``).

Two modes, both printing one JSON line on stdout:

- ``closed``: ``--connections`` clients each send a request as soon as the previous answer came
  back, for ``--duration`` seconds: the saturation rate.
- ``open``: requests are scheduled at a fixed ``--rate`` whatever the answers do; latency is
  measured from the *scheduled* send time (no coordinated omission), over ``--connections``
  keep-alive connections.

Bodies come from a JSON file (a list of request bodies, cycled); the write key goes in Basic auth.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from collections import Counter
from typing import Any

import uvloop


class Conn(asyncio.Protocol):
    """One keep-alive connection; ``request()`` sends raw bytes and returns the status code."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        i = head.find(b"content-length:")
        length = (
            int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
        )
        if len(self.buf) < end + 4 + length:
            return
        status = int(self.buf[9:12])
        del self.buf[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(0)

    async def request(self, data: bytes) -> int:
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        return await self.waiter


def build_requests(path: str, bodies: list[Any], key: str, host: str) -> list[bytes]:
    auth = base64.b64encode(f"{key}:".encode()).decode()
    out = []
    for b in bodies:
        payload = json.dumps(b, separators=(",", ":")).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        out.append(head + payload)
    return out


def percentiles(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0, "max_ms": 0.0}
    lat = sorted(lat)

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

    return {"p50_ms": q(0.50), "p99_ms": q(0.99), "p999_ms": q(0.999), "max_ms": lat[-1] * 1000}


async def main(a: argparse.Namespace, bodies: list[Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port = a.host, a.port
    reqs = build_requests(a.path, bodies, a.key, f"{host}:{port}")
    conns = []
    for _ in range(a.connections):
        _, proto = await loop.create_connection(Conn, host, port)
        conns.append(proto)
    statuses: Counter[int] = Counter()
    lat: list[float] = []
    counter = 0
    warm_end = time.perf_counter() + a.warmup
    end = warm_end + a.duration

    if a.mode == "closed":

        async def client(c: Conn) -> None:
            nonlocal counter
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                counter += 1
                st = await c.request(reqs[counter % len(reqs)])
                t1 = time.perf_counter()
                if t0 >= warm_end:
                    statuses[st] += 1
                    lat.append(t1 - t0)

        await asyncio.gather(*(client(c) for c in conns))
    else:
        queue: asyncio.Queue[float | None] = asyncio.Queue()

        async def sender(c: Conn) -> None:
            nonlocal counter
            while True:
                t_sched = await queue.get()
                if t_sched is None:
                    return
                counter += 1
                st = await c.request(reqs[counter % len(reqs)])
                t1 = time.perf_counter()
                if t_sched >= warm_end:
                    statuses[st] += 1
                    lat.append(t1 - t_sched)

        tasks = [asyncio.create_task(sender(c)) for c in conns]
        start = time.perf_counter()
        i = 0
        interval = 1.0 / a.rate
        while True:
            t_sched = start + i * interval
            if t_sched >= end:
                break
            now = time.perf_counter()
            if t_sched > now:
                await asyncio.sleep(t_sched - now)
            queue.put_nowait(t_sched)
            i += 1
        for _ in conns:
            queue.put_nowait(None)
        await asyncio.gather(*tasks)
    n = sum(statuses.values())
    out = {
        "mode": a.mode,
        "path": a.path,
        "connections": a.connections,
        "duration_s": a.duration,
        "requests": n,
        "requests_per_s": n / a.duration,
        "events_per_s": n * a.events_per_request / a.duration,
        "statuses": {str(k): v for k, v in statuses.items()},
        **percentiles(lat),
    }
    if a.mode == "open":
        out["offered_rate"] = a.rate
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/track")
    p.add_argument("--key", required=True)
    p.add_argument("--bodies", required=True, help="JSON file: a list of request bodies")
    p.add_argument("--events-per-request", type=int, default=1)
    p.add_argument("--mode", choices=["closed", "open"], default="closed")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s in open mode")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=1.0)
    args = p.parse_args()
    with open(args.bodies) as f:
        request_bodies = json.load(f)
    print(json.dumps(uvloop.run(main(args, request_bodies))))
