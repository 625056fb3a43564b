"""Fault-injection harness (imported by conftest.py and the chaos tests): a PRIVATE Kafka and Redis, the pipeline's three services, a recording client.

The chaos suite must never stop the shared broker (127.0.0.1:19092) or the shared Redis (16379):
other engineers' tests use them. So :func:`chaos` starts a private single-node KRaft broker and a
private redis-server on free ports under the test's tmp folder (``trackflow.stack.start_kafka`` /
``start_redis`` with their own :class:`~trackflow.stack.StackPaths`), creates the topics there, and
runs ``trackflow collector``, ``trackflow worker`` and ``trackflow sink`` (embedded ClickHouse, or
the run's ClickHouse server when ``TRACKFLOW_CLICKHOUSE_URL`` is set) against them as subprocesses.

:class:`Chaos` is what the tests drive:

- ``kill(name)`` (SIGKILL), ``start(name, **env)``, ``stop_broker()`` / ``start_broker()``,
  ``stop_redis()`` / ``start_redis()``: the faults;
- :meth:`Chaos.stream`: sends a seeded :mod:`trackflow.simulate` stream through the collector's HTTP
  API in a background thread, retrying 429/5xx without limit, and records every response (a
  :class:`Recorder`), so the test knows exactly which events the client saw acknowledged;
- :meth:`Chaos.probe`: sends one event of a probe app and waits until it is visible in ClickHouse;
  "recovery time" is the time from a fault's injection to that moment;
- :meth:`Chaos.settle`: waits until the worker and sink groups have committed every record;
- :meth:`Chaos.verify`: the exact-accounting assertions of the issue.

Figures (recovery times, counts) are appended as JSON lines to ``TRACKFLOW_CHAOS_REPORT``
(default ``.trackflow/chaos-results.jsonl``) and printed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from trackflow import demo
from trackflow import stack as local_stack
from trackflow.config import KafkaSettings, StackSettings
from trackflow.offsets import high_watermarks

REPO = Path(__file__).resolve().parents[2]
CHAOS_EVENTS = int(os.environ.get("TRACKFLOW_CHAOS_EVENTS", "20000"))
#: events per second the client offers (the pipeline here keeps up with far more)
CHAOS_RATE = float(os.environ.get("TRACKFLOW_CHAOS_RATE", "1000"))
REPORT = Path(os.environ.get("TRACKFLOW_CHAOS_REPORT", REPO / ".trackflow" / "chaos-results.jsonl"))
#: simulated events per user and day (measured from trackflow.simulate over 7 days: ~7.2); used to size a stream
EVENTS_PER_USER_DAY = 7.2
SIM_DAYS = 7


def pid_rss_kb(pid: int | None) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in KiB."""
    out = {"rss_kb": 0, "peak_kb": 0}
    if pid is None:
        return out
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                out["peak_kb"] = int(line.split()[1])
    except FileNotFoundError:
        pass
    return out


def report(record: dict[str, Any]) -> None:
    """Append one result line to the chaos report and print it."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    line = orjson.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}).decode()
    with REPORT.open("a") as f:
        f.write(line + "\n")
    print(line)


# -- the client side: what was acknowledged ----------------------------------------------------------


@dataclass
class Exchange:
    """One HTTP request of the stream and its outcome (status 0: transport error)."""

    path: str
    body: bytes
    sent: float
    answered: float
    status: int


class Recorder(httpx.AsyncBaseTransport):
    """An httpx transport that forwards to the network and records every exchange."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=64))
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        t0 = time.monotonic()
        try:
            resp = await self.inner.handle_async_request(request)
            await resp.aread()
        except httpx.TransportError:
            self.exchanges.append(Exchange(request.url.path, body, t0, time.monotonic(), 0))
            raise
        self.exchanges.append(Exchange(request.url.path, body, t0, time.monotonic(), resp.status_code))
        return resp

    async def aclose(self) -> None:
        await self.inner.aclose()

    def acked(self) -> list[Exchange]:
        return [e for e in self.exchanges if 200 <= e.status < 300]


def ids_in_request(path: str, body: bytes, app_id_by_path: dict[str, str]) -> list[str]:
    """The message ids the collector assigns to the events of one request body.

    Segment and app-tracking events carry theirs (``messageId`` / ``uuid``); an AppsFlyer S2S event's
    id is derived from its content by the collector's own mapper, so the same function computes it.
    """
    from collector.mapping import Limits, Stamp, map_appsflyer

    doc = orjson.loads(body)
    if path == "/v1/batch":
        return [m["messageId"] for m in doc["batch"]]
    if path == "/v1/app-tracking":
        return [m["uuid"] for m in doc["events"]]
    app_id = path.rsplit("/", 1)[1]
    res = map_appsflyer(doc, Stamp(app_id=app_id, received_at=0, request_id="chaos"), Limits())
    return [str(r["message_id"]) for r in res.events]


@dataclass
class Stream:
    """A seeded stream sent in the background; ``expected`` holds what a correct pipeline stores."""

    tag: str
    apps: dict[str, str]  # simulate name -> app id
    sim: Any
    recorder: Recorder
    thread: threading.Thread
    natural_ids: set[str] = field(default_factory=set)
    invalid: dict[str, str] = field(default_factory=dict)  # message id -> expected reason
    kinds: dict[str, str] = field(default_factory=dict)  # message id -> simulate kind (diagnostics)
    result: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    #: acknowledged events counted so far, and how many exchanges that count covers
    _acked: int = 0
    _scanned: int = 0

    @property
    def n(self) -> int:
        return len(self.sim.events)

    def acked_events(self) -> int:
        """Events in the acknowledged requests so far (incremental: a 1,000,000-event stream is
        polled every 0.1 s, and re-reading every body each time kept a core busy)."""
        new = self.recorder.exchanges[self._scanned :]  # a snapshot: the sender thread appends
        for e in new:
            if 200 <= e.status < 300:
                doc = orjson.loads(e.body)
                self._acked += (
                    len(doc["batch"]) if "batch" in doc else len(doc["events"]) if "events" in doc else 1
                )
        self._scanned += len(new)
        return self._acked

    def wait_acked(self, fraction: float, timeout: float | None = None) -> None:
        """Wait until ``fraction`` of the stream is acknowledged (default timeout: twice the time
        that takes at the offered rate, plus a minute for the simulation to start; at least 300 s)."""
        if timeout is None:
            timeout = max(300.0, 2 * fraction * self.n / CHAOS_RATE + 60)
        deadline = time.monotonic() + timeout
        while self.acked_events() < fraction * self.n:
            assert self.thread.is_alive() or self.result, "the sender stopped early"
            assert time.monotonic() < deadline, f"{fraction:.0%} of the stream not acknowledged in time"
            time.sleep(0.1)

    def join(self, timeout: float = 900) -> dict[str, Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the sender did not finish"
        assert "error" not in self.result, self.result.get("error")
        return self.result


# -- the services --------------------------------------------------------------------------------------


@dataclass
class Chaos:
    """The private stack and the pipeline's services, and the faults to inject into them."""

    home: Path
    paths: local_stack.StackPaths
    stack: StackSettings
    env: dict[str, str]
    kafka: KafkaSettings
    redis_url: str
    redis_prefix: str
    read_key: str
    collector_url: str
    read_url: str
    registry: Any
    probe_app: tuple[str, str] = ("", "")

    # process control
    def pid(self, name: str) -> int | None:
        return local_stack.read_pid(self.paths.pidfile(name))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the service's process group and wait until it is gone."""
        pid = self.pid(name)
        assert pid is not None, f"{name} is not running"
        os.killpg(pid, sig)
        local_stack.wait_until(lambda: self.pid(name) is None, timeout=30, what="exit", service=name)

    def start(self, name: str, **extra: str) -> None:
        """Start one service (``collector``, ``worker``, ``sink``) with extra environment variables."""
        env = {**self.env, **extra}
        cmds = {
            "collector": ["collector", "--host", "127.0.0.1", "--port", env["TRACKFLOW_COLLECTOR_PORT"]],
            "worker": ["worker"],
            "sink": ["sink", "-v"],
        }
        self.paths.pidfile(name).unlink(missing_ok=True)
        local_stack.start_process(
            [sys.executable, "-m", "trackflow", *cmds[name]],
            pidfile=self.paths.pidfile(name),
            logfile=self.paths.logfile(name),
            env=env,
            cwd=REPO,
        )

    def wait_ready(self) -> None:
        demo.wait_healthy(self.paths, self.env)

    def stop_broker(self) -> None:
        assert local_stack.stop_process(self.paths.pidfile("kafka"), grace=30)

    def start_broker(self) -> None:
        local_stack.start_kafka(self.paths, self.stack)

    def stop_redis(self) -> None:
        assert local_stack.stop_process(self.paths.pidfile("redis"), grace=10)

    def start_redis(self) -> None:
        local_stack.start_redis(self.paths, self.stack)

    def alive(self) -> dict[str, bool]:
        return {n: self.pid(n) is not None for n in demo.SERVICES}

    def rss(self) -> dict[str, dict[str, int]]:
        return {n: pid_rss_kb(self.pid(n)) for n in demo.SERVICES}

    # apps and traffic
    def new_apps(self, tag: str) -> tuple[dict[str, str], dict[str, Any]]:
        from trackflow.simulate_cli import DEFAULT_REPORTING_CURRENCY, AppTarget

        apps: dict[str, str] = {}
        targets: dict[str, Any] = {}
        for name in ("game", "shop"):
            app_id = f"{name}-{tag}"
            _, wkey, _ = self.registry.add(
                f"{name} {tag}", app_id=app_id, currency=DEFAULT_REPORTING_CURRENCY[name]
            )
            apps[name] = app_id
            targets[name] = AppTarget(name=name, app_id=app_id, write_key=wkey)
        time.sleep(1.5)  # services reload the registry within ~1 s
        return apps, targets

    def stream(
        self,
        n: int,
        seed: int,
        *,
        rate: float = CHAOS_RATE,
        concurrency: int = 8,
        max_retry_after_s: float = 1.0,
    ) -> Stream:
        """Generate about ``n`` events (seeded) for two fresh apps and send them in the background."""
        from trackflow.simulate import SimConfig, generate
        from trackflow.simulate_cli import build_http, send

        tag = uuid.uuid4().hex[:6]
        apps, targets = self.new_apps(tag)
        users = max(4, round(n / (EVENTS_PER_USER_DAY * SIM_DAYS)))
        sim = generate(SimConfig(seed=seed, users=users, days=SIM_DAYS))
        recorder = Recorder()
        st = Stream(tag=tag, apps=apps, sim=sim, recorder=recorder, thread=threading.Thread())
        from datetime import UTC, datetime

        from trackflow.simulate_cli import Request

        now = datetime.now(UTC)
        for ev in sim.events:
            path, _, body, _ = build_http(Request(ev.app, ev.shape, [ev]), targets[ev.app], now)
            (mid,) = ids_in_request(path, body, {})
            st.kinds.setdefault(mid, ev.kind)
            if ev.kind not in ("event", "invalid"):
                continue
            if ev.kind == "event":
                st.natural_ids.add(mid)
            else:
                st.invalid[mid] = str(ev.reason)
        assert len(st.natural_ids) == sim.expected.expected_stored

        def run() -> None:
            try:
                rep = asyncio.run(
                    send(
                        sim,
                        targets,
                        self.collector_url,
                        concurrency=concurrency,
                        batch_size=100,
                        rate=rate,
                        max_retries=1_000_000,
                        max_retry_after_s=max_retry_after_s,
                        timeout_s=30.0,
                        transport=recorder,
                    )
                )
                st.result.update(rep.to_json())
            except Exception as exc:  # reported by Stream.join
                st.result["error"] = repr(exc)

        st.thread = threading.Thread(target=run, name=f"sender-{tag}", daemon=True)
        st.started = time.monotonic()
        st.thread.start()
        return st

    # observation
    def api(self) -> demo.ReadApi:
        return demo.ReadApi(self.read_key, self.read_url)

    def sql(self, query: str, timeout: float = 120) -> list[dict[str, Any]]:
        """A read-API query, retried while the sink (which serves it) restarts."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.api() as api:
                    return api.sql(query)
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def probe(self, since: float, timeout: float | None = None) -> float:
        """Send one probe event (retrying until acknowledged); return seconds from ``since`` to visible.

        The probe queues behind the backlog a fault leaves on the raw topic: one worker here sustains
        ~1,000 events/s, so after a restart in a 1,000,000-event stream the backlog takes minutes.
        The default timeout grows with the stream: 240 s, or ``CHAOS_EVENTS / 500`` s if longer.
        """
        timeout = timeout if timeout is not None else max(240.0, CHAOS_EVENTS / 500)
        _app_id, key = self.probe_app
        mid = f"probe-{uuid.uuid4().hex}"
        body = {
            "type": "track",
            "messageId": mid,
            "anonymousId": "probe",
            "event": "probe",
            "properties": {"probe": mid},
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.collector_url, timeout=10) as http:
            while True:
                try:
                    if http.post("/v1/track", json=body, headers={"X-Write-Key": key}).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "probe never acknowledged"
                time.sleep(0.2)
        last: object = None
        while True:
            try:
                with self.api() as api:
                    rows = api.sql(f"SELECT count() AS n FROM events WHERE message_id = '{mid}'")
                if rows[0]["n"] >= 1:
                    return time.monotonic() - since
                last = rows
            except httpx.HTTPError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"probe never visible in ClickHouse: last answer {last!r}, "
                    f"lag {self.lag()}, alive {self.alive()}"
                )
            time.sleep(0.2)

    def lag(self) -> dict[str, int]:
        """Records not yet committed by the worker group (raw) and the sink group (enriched, invalid)."""
        from confluent_kafka import Consumer, TopicPartition

        t = self.kafka.topics
        prefix = self.kafka.topic_prefix
        out: dict[str, int] = {}
        for group, topic in (
            (f"{prefix}pipeline", t.raw),
            (f"{prefix}sink", t.enriched),
            (f"{prefix}sink", t.invalid),
        ):
            c = Consumer({**self.kafka.client_config(), "group.id": group})
            try:
                parts = c.list_topics(topic, timeout=10).topics[topic].partitions
                tps = [TopicPartition(topic, p) for p in parts]
                total = 0
                highs = high_watermarks(c, topic, parts)
                for tp in c.committed(tps, timeout=10):
                    total += highs[tp.partition] - max(tp.offset, 0)
                out[topic.removeprefix(prefix)] = total
            finally:
                c.close()
        return out

    def settle(self, timeout: float = 600) -> float:
        """Wait until every raw, enriched and invalid record is committed (lag 0 twice in a row)."""
        t0 = time.monotonic()
        zero = 0
        last: dict[str, int] = {}
        while zero < 2:
            try:
                last = self.lag()
            except Exception:  # broker briefly unavailable after a restart
                last = {"?": -1}
            zero = zero + 1 if all(v == 0 for v in last.values()) else 0
            assert all(self.alive().values()), f"a service exited: {self.alive()}"
            assert time.monotonic() - t0 < timeout, f"pipeline did not settle: lag {last}"
            time.sleep(1.0)
        return time.monotonic() - t0

    def ids(self, query: str, page: int = 5000) -> set[str]:
        """``message_id`` values of ``query``, fetched in pages (the read API caps a result at 10k rows)."""
        out: set[str] = set()
        offset = 0
        while True:
            rows = self.sql(f"{query} ORDER BY message_id LIMIT {page} OFFSET {offset}")
            out.update(r["message_id"] for r in rows)
            if len(rows) < page:
                return out
            offset += page

    def counters(self, app_id: str, kind: str) -> int:
        r = redis.Redis.from_url(self.redis_url)
        try:
            return sum(
                int(v)
                for k in r.scan_iter(match=f"{self.redis_prefix}live:{app_id}:{kind}:*", count=1000)
                for v in r.hvals(k)
            )
        finally:
            r.close()

    def verify(self, st: Stream) -> dict[str, Any]:
        """The issue's exact accounting for one stream, after :meth:`settle`.

        Returns the figures; ``problems`` lists every broken guarantee (the tests assert it is empty
        after recording the figures, so a failing run still reports what it measured).
        """
        res = st.join()
        problems: list[str] = []
        if res["failed"] or res["rejected"]:
            problems.append(f"the client gave up on or had rejected events: {res}")
        app_list = ", ".join(f"'{a}'" for a in st.apps.values())
        acked: set[str] = set()
        for e in st.recorder.acked():
            acked.update(ids_in_request(e.path, e.body, {}))

        # events: exact rows WITHOUT FINAL, no duplicate message id, nothing acknowledged missing
        row = self.sql(
            f"SELECT count() AS rows, uniqExact(message_id) AS ids FROM events WHERE app_id IN ({app_list})"
        )[0]
        stored = self.ids(f"SELECT DISTINCT message_id FROM events WHERE app_id IN ({app_list})")
        missing_acked = (acked & st.natural_ids) - stored
        if missing_acked:
            problems.append(
                f"{len(missing_acked)} acknowledged events missing, e.g. {sorted(missing_acked)[:3]}"
            )
        if not st.natural_ids <= acked:
            problems.append(f"{len(st.natural_ids - acked)} events never acknowledged")
        extra = stored - st.natural_ids
        if extra:
            problems.append(
                f"{len(extra)} ids stored that should not be: "
                + ", ".join(f"{m} ({st.kinds.get(m, 'unknown')})" for m in sorted(extra)[:5])
            )
        if row["rows"] != len(st.natural_ids) or row["ids"] != row["rows"]:
            problems.append(
                f"events WITHOUT FINAL: {row['rows']} rows, {row['ids']} distinct ids, "
                f"expected {len(st.natural_ids)} of each ({row['rows'] - row['ids']} duplicate rows)"
            )

        # dead letters: every invalid event, with its reason
        dl: list[dict[str, Any]] = []
        while True:
            page = self.sql(
                f"SELECT message_id, reason, count() AS n FROM invalid_events WHERE app_id IN "
                f"({app_list}) GROUP BY message_id, reason ORDER BY message_id, reason "
                f"LIMIT 5000 OFFSET {len(dl)}"
            )
            dl.extend(page)
            if len(page) < 5000:
                break
        got = {r["message_id"]: r["reason"] for r in dl}
        if len(got) != len(dl):
            problems.append("a dead letter stored with two different reasons")
        if got != st.invalid:
            wrong = {m: (got.get(m), r) for m, r in st.invalid.items() if got.get(m) != r}
            problems.append(
                f"dead letters differ: {len(wrong)} missing or wrong reason, e.g. {list(wrong.items())[:3]}; "
                f"{len(set(got) - set(st.invalid))} unexpected"
            )
        dl_rows = sum(r["n"] for r in dl)
        if dl_rows != len(dl):
            doubled = [r["message_id"] for r in dl if r["n"] > 1]
            problems.append(f"{dl_rows - len(dl)} dead letters stored more than once, e.g. {doubled[:3]}")

        # Redis counters == ClickHouse truth, per app
        redis_vs_ch: dict[str, dict[str, list[int]]] = {}
        for app_id in st.apps.values():
            one = f"WHERE app_id = '{app_id}'"
            ch = {
                "epm": self.sql(f"SELECT count() AS n FROM events {one}")[0]["n"],
                "errors": self.sql(f"SELECT count() AS n FROM events {one} AND error_level IS NOT NULL")[0][
                    "n"
                ],
                "invalid": self.sql(f"SELECT count() AS n FROM invalid_events {one}")[0]["n"],
            }
            redis_vs_ch[app_id] = {k: [self.counters(app_id, k), v] for k, v in ch.items()}
            for k, (rv, cv) in redis_vs_ch[app_id].items():
                if rv != cv:
                    problems.append(f"Redis {k} counter of {app_id} = {rv}, ClickHouse rows = {cv}")
        statuses: dict[str, int] = {}
        for e in st.recorder.exchanges:
            statuses[str(e.status)] = statuses.get(str(e.status), 0) + 1
        return {
            "events_sent": st.n,
            "expected_stored": len(st.natural_ids),
            "stored_rows": row["rows"],
            "stored_ids": row["ids"],
            "dead_letters": len(st.invalid),
            "dead_letter_rows": dl_rows,
            "redis_vs_clickhouse": redis_vs_ch,
            "http_statuses": statuses,
            "retries": res["retries"],
            "send_s": res["elapsed_s"],
            "problems": problems,
        }
