"""``trackflow simulate``: send the generated traffic through the collector's HTTP API.

The events come from :func:`trackflow.simulate.generate` (pure, seeded). This module is the I/O
edge: it groups them into requests per API shape, sends them with a bounded-concurrency async
httpx client, retries 429/503 (honouring ``Retry-After``, bounded), and prints what it sent and what
a correct pipeline must report (a table, or JSON with ``--json``).

Ordering: events are split into ``concurrency`` lanes by simulated person; a lane sends its requests
one at a time, so the events of one device reach the collector in the order they happened.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
import orjson
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from trackflow.config import ENV_PREFIX, register
from trackflow.exceptions import ConfigError, TrackflowError
from trackflow.simulate import APP_NAMES, Outgoing, SimConfig, Simulation, generate

RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_REPORTING_CURRENCY = {"game": "EUR", "shop": "GBP"}


class SimulateSettings(BaseSettings):
    """Defaults of ``trackflow simulate``.

    Parameters:
        simulate_collector_url: base URL of the collector (``TRACKFLOW_SIMULATE_COLLECTOR_URL``).
        simulate_concurrency: requests in flight at once (one per lane).
        simulate_batch_size: events per Segment / app-tracking request.
        simulate_max_retries: attempts per request on 429/5xx or connection errors before giving up.
        simulate_max_retry_after_s: cap on one wait, whatever ``Retry-After`` says.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True)

    simulate_collector_url: str = "http://127.0.0.1:8080"
    simulate_concurrency: int = Field(default=8, ge=1)
    simulate_batch_size: int = Field(default=100, ge=1, le=1000)
    simulate_max_retries: int = Field(default=8, ge=0)
    simulate_max_retry_after_s: float = Field(default=10.0, gt=0)


register("simulate", SimulateSettings)


class SimulateError(TrackflowError):
    """The simulator could not reach the collector, or is missing a write key."""


@dataclass(frozen=True)
class AppTarget:
    """Where one simulated app's events go: the registered app id and its write key."""

    name: str
    app_id: str
    write_key: str


@dataclass
class Request:
    """One HTTP request: events of one app in one API shape."""

    app: str
    shape: str
    events: list[Outgoing]

    @property
    def first_seq(self) -> int:
        return self.events[0].seq


@dataclass
class SendReport:
    """What the sender did: requests, events accepted / rejected / failed, retries, timing."""

    collector: str
    requests: int = 0
    events: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    retries: int = 0
    retry_wait_s: float = 0.0
    elapsed_s: float = 0.0
    events_per_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    by_app_shape: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan_requests(events: list[Outgoing], *, lanes: int, batch_size: int) -> list[list[Request]]:
    """Split events into ``lanes`` ordered request lists.

    A lane holds whole persons. Within a lane, each (app, shape) stream keeps its order and is cut
    into requests of up to ``batch_size`` events (AppsFlyer S2S takes one event per request);
    requests are ordered by their first event.
    """
    per_lane: list[dict[tuple[str, str], list[Outgoing]]] = [defaultdict(list) for _ in range(lanes)]
    for ev in events:
        per_lane[ev.lane % lanes][(ev.app, ev.shape)].append(ev)
    out: list[list[Request]] = []
    for streams in per_lane:
        reqs: list[Request] = []
        for (app, shape), evs in streams.items():
            size = 1 if shape == "appsflyer_s2s" else batch_size
            reqs.extend(Request(app, shape, evs[i : i + size]) for i in range(0, len(evs), size))
        reqs.sort(key=lambda r: r.first_seq)
        out.append(reqs)
    return out


def build_http(
    req: Request, target: AppTarget, now: datetime
) -> tuple[str, dict[str, str], bytes, tuple[str, str] | None]:
    """(path, headers, body, basic auth) of one request, with ``sentAt`` set to ``now``."""
    sent_at = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    headers = {"content-type": "application/json"}
    if req.shape == "segment":
        batch = [{**ev.payload, "sentAt": sent_at} for ev in req.events]
        body = orjson.dumps({"batch": batch, "sentAt": sent_at})
        return "/v1/batch", headers, body, (target.write_key, "")
    if req.shape == "app_tracking":
        body = orjson.dumps({"events": [ev.payload for ev in req.events]})
        return "/v1/app-tracking", {**headers, "X-Write-Key": target.write_key}, body, None
    # AppsFlyer S2S: one event per request; eventValue is a JSON string, as AppsFlyer sends it
    payload = dict(req.events[0].payload)
    payload["eventValue"] = orjson.dumps(payload["eventValue"]).decode()
    return (
        f"/inappevent/{target.app_id}",
        {**headers, "authentication": target.write_key},
        orjson.dumps(payload),
        None,
    )


def retry_after_s(value: str | None, default: float, cap: float) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), capped."""
    if not value:
        return min(default, cap)
    try:
        return max(0.0, min(float(value), cap))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return min(default, cap)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, min((when - datetime.now(UTC)).total_seconds(), cap))


def _rejected_in(resp: httpx.Response, n: int) -> int:
    """Events of a 2xx batch that the collector says it rejected (``rejected``: int or list)."""
    try:
        body = resp.json()
    except ValueError:
        return 0
    if not isinstance(body, dict):
        return 0
    rej = body.get("rejected")
    if isinstance(rej, bool):
        return 0
    if isinstance(rej, int):
        return min(rej, n)
    if isinstance(rej, list):
        return min(len(rej), n)
    return 0


class _RateLimiter:
    """Global events-per-second limit shared by the lanes (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self, n: int) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


async def send(
    sim: Simulation,
    targets: dict[str, AppTarget],
    collector: str,
    *,
    concurrency: int = 8,
    batch_size: int = 100,
    rate: float = 0.0,
    max_retries: int = 8,
    max_retry_after_s: float = 10.0,
    timeout_s: float = 15.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> SendReport:
    """Send every event of ``sim`` to the collector and return what happened.

    Parameters:
        sim: the generated traffic.
        targets: app id and write key for each simulated app name.
        collector: base URL, e.g. ``http://127.0.0.1:8080``.
        concurrency: lanes, i.e. requests in flight at once.
        batch_size: events per Segment / app-tracking request.
        rate: events per second over all lanes; 0 for as fast as the collector takes them.
        max_retries: retries per request on 429/502/503/504 and connection errors.
        max_retry_after_s: cap on one wait.
        transport: an httpx transport (tests use ``httpx.MockTransport``).
    """
    missing = {ev.app for ev in sim.events} - set(targets)
    if missing:
        raise SimulateError(f"no write key for app(s) {sorted(missing)}")
    report = SendReport(collector=collector)
    statuses: Counter[str] = Counter()
    by_app_shape: Counter[str] = Counter()
    limiter = _RateLimiter(rate)
    lanes = plan_requests(sim.events, lanes=concurrency, batch_size=batch_size)

    async def one(client: httpx.AsyncClient, req: Request) -> None:
        target = targets[req.app]
        n = len(req.events)
        await limiter.wait(n)
        for attempt in range(max_retries + 1):
            path, headers, body, auth = build_http(req, target, datetime.now(UTC))
            wait = min(0.2 * 2**attempt, max_retry_after_s)
            try:
                resp = await client.post(
                    path, content=body, headers=headers, auth=auth if auth else httpx.USE_CLIENT_DEFAULT
                )
            except httpx.TransportError as exc:
                statuses[type(exc).__name__] += 1
                if attempt == max_retries:
                    report.failed += n
                    _note(report, f"{req.shape} {path}: {exc!r}")
                    return
            else:
                statuses[str(resp.status_code)] += 1
                if resp.is_success:
                    rej = _rejected_in(resp, n)
                    report.accepted += n - rej
                    report.rejected += rej
                    if rej:
                        _note(report, f"{req.shape} {path}: {resp.status_code} {resp.text[:300]}")
                    return
                if resp.status_code not in RETRY_STATUSES:
                    report.rejected += n
                    _note(report, f"{req.shape} {path}: {resp.status_code} {resp.text[:300]}")
                    return
                if attempt == max_retries:
                    report.failed += n
                    _note(report, f"{req.shape} {path}: gave up after {resp.status_code}")
                    return
                wait = retry_after_s(resp.headers.get("retry-after"), wait, max_retry_after_s)
            report.retries += 1
            report.retry_wait_s += wait
            await asyncio.sleep(wait)

    async def lane(client: httpx.AsyncClient, reqs: list[Request]) -> None:
        for req in reqs:
            report.requests += 1
            report.events += len(req.events)
            by_app_shape[f"{req.app}/{req.shape}"] += len(req.events)
            await one(client, req)

    t0 = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=collector, timeout=timeout_s, limits=limits, transport=transport
    ) as client:
        await asyncio.gather(*(lane(client, reqs) for reqs in lanes if reqs))
    report.elapsed_s = round(time.monotonic() - t0, 3)
    report.events_per_s = round(report.events / report.elapsed_s, 1) if report.elapsed_s else 0.0
    report.retry_wait_s = round(report.retry_wait_s, 3)
    report.statuses = dict(sorted(statuses.items()))
    report.by_app_shape = dict(sorted(by_app_shape.items()))
    return report


def _note(report: SendReport, msg: str) -> None:
    if len(report.errors) < 20:
        report.errors.append(msg)


# -- keys --------------------------------------------------------------------------------------------


def load_keys_file(path: Path) -> dict[str, AppTarget]:
    """Read ``{"game": {"app_id": ..., "write_key": ...}, "shop": {...}}`` (extra fields ignored)."""
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read keys file {path}: {exc}", field="keys_file") from exc
    if isinstance(raw, list):
        raw = {item.get("name", item.get("app_id")): item for item in raw}
    out: dict[str, AppTarget] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or "write_key" not in entry:
            raise ConfigError(f"keys file {path}: entry {name!r} has no write_key", field="keys_file")
        out[name] = AppTarget(
            name=name, app_id=str(entry.get("app_id", name)), write_key=str(entry["write_key"])
        )
    return out


def register_apps(names: list[str], path: Path, existing: dict[str, AppTarget]) -> dict[str, AppTarget]:
    """Create the simulated apps missing from ``existing`` in the local registry; save all keys to ``path``."""
    from trackflow.apps import open_registry

    registry = open_registry()
    out = dict(existing)
    keys: dict[str, dict[str, str]] = {}
    if path.exists():
        keys = orjson.loads(path.read_bytes())
    for name in names:
        if name in out:
            continue
        if registry.get(name) is not None:
            raise SimulateError(
                f"app {name!r} is registered but its write key is not in {path}; pass --write-key-" + name
            )
        app, wkey, rkey = registry.add(
            name, app_id=name, currency=DEFAULT_REPORTING_CURRENCY.get(name, "USD")
        )
        out[name] = AppTarget(name=name, app_id=app.app_id, write_key=wkey)
        keys[name] = {"app_id": app.app_id, "write_key": wkey, "read_key": rkey}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(keys, option=orjson.OPT_INDENT_2))
    path.chmod(0o600)
    return out


# -- output ------------------------------------------------------------------------------------------


def render_table(sim: Simulation, report: SendReport | None) -> str:
    """The human-readable summary: what was sent and what the pipeline must report."""
    e = sim.expected
    apps = list(e.apps)
    lines = [
        f"trackflow simulate: seed {e.seed}, {e.users} users x {e.days} days "
        f"({e.start} .. {e.end}), apps {', '.join(apps)}"
    ]
    if report is not None:
        lines.append(
            f"sent {report.events} events in {report.requests} requests to {report.collector} "
            f"in {report.elapsed_s:.1f} s ({report.events_per_s:.0f} events/s)"
        )
        lines.append(
            f"accepted {report.accepted}, rejected {report.rejected}, failed {report.failed}, "
            f"retries {report.retries} (waited {report.retry_wait_s:.1f} s)"
        )
        lines.extend(f"  ! {err}" for err in report.errors[:5])
    else:
        lines.append("dry run: nothing sent")
    w = 14

    def row(label: str, values: list[Any], total: Any = "") -> None:
        cells = "".join(f"{v!s:>{w}}" for v in values)
        lines.append(f"  {label:<34}{cells}{total!s:>{w}}")

    lines.append("")
    row("", apps, "total")
    row("events sent", [e.sent_by_app.get(a, 0) for a in apps], e.sent)
    for shape, n in e.sent_by_shape.items():
        lines.append(f"    {shape:<32}{'':>{w * len(apps)}}{n:>{w}}")
    row("duplicates, same messageId", ["" for _ in apps], e.duplicates["same_message_id"])
    row("duplicates, same content <10 s", ["" for _ in apps], e.duplicates["same_content"])
    row("invalid (dead letters)", [e.invalid_by_app.get(a, 0) for a in apps], sum(e.invalid.values()))
    for reason, n in e.invalid.items():
        lines.append(f"    {reason:<32}{'':>{w * len(apps)}}{n:>{w}}")
    row("expected stored events", [e.apps[a].events for a in apps], e.expected_stored)
    lines.append("")
    a_ = [e.apps[a] for a in apps]
    row("users", [x.users for x in a_], sum(x.users for x in a_))
    row("installs", [x.installs for x in a_], sum(x.installs for x in a_))
    row("identifies", [x.identifies for x in a_], sum(x.identifies for x in a_))
    row("sessions", [x.sessions for x in a_], sum(x.sessions for x in a_))
    row("heartbeats", [x.heartbeats for x in a_], sum(x.heartbeats for x in a_))
    row("purchases", [x.purchases for x in a_], sum(x.purchases for x in a_))
    row("refunds", [x.refunds for x in a_], sum(x.refunds for x in a_))
    row("web3 purchases", [x.web3_purchases for x in a_], sum(x.web3_purchases for x in a_))
    row(
        "out-of-range amounts (>10k USD)",
        [x.out_of_range["count"] for x in a_],
        sum(x.out_of_range["count"] for x in a_),
    )
    row(
        "errors",
        [sum(x.errors_by_level.values()) for x in a_],
        sum(sum(x.errors_by_level.values()) for x in a_),
    )
    for app in apps:
        x = e.apps[app]
        lines.append("")
        lines.append(f"  [{app}] funnel: " + " -> ".join(f"{s['step']} {s['users']}" for s in x.funnel))
        lines.append(
            f"  [{app}] revenue: " + ", ".join(f"{c} {v:,.2f}" for c, v in x.revenue_by_currency.items())
        )
        lines.append(f"  [{app}] errors: " + ", ".join(f"{k} {v}" for k, v in x.errors_by_level.items()))
        lines.append(
            f"  [{app}] installs: " + ", ".join(f"{k} {v}" for k, v in x.installs_by_media_source.items())
        )
        dau = list(x.dau.values())
        if dau:
            lines.append(f"  [{app}] DAU: min {min(dau)}, max {max(dau)}, last day {dau[-1]}")
    return "\n".join(lines)


@click.command("simulate")
@click.option(
    "--collector",
    default=None,
    help="Collector base URL [default: TRACKFLOW_SIMULATE_COLLECTOR_URL or http://127.0.0.1:8080].",
)
@click.option("--users", default=200, show_default=True, type=click.IntRange(min=1), help="Simulated people.")
@click.option("--days", default=14, show_default=True, type=click.IntRange(min=1), help="Days of history.")
@click.option("--seed", default=42, show_default=True, type=int, help="Random seed (same seed, same events).")
@click.option(
    "--start",
    "start",
    default=None,
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="First day, UTC (default: DAYS days ago, so the last day is yesterday).",
)
@click.option("--apps", "apps", default="game,shop", show_default=True, help="Comma-separated: game, shop.")
@click.option("--write-key-game", default=None, help="Write key of the game app.")
@click.option("--write-key-shop", default=None, help="Write key of the shop app.")
@click.option("--app-id-game", default="game", show_default=True, help="App id of the game (AppsFlyer path).")
@click.option("--app-id-shop", default="shop", show_default=True, help="App id of the shop.")
@click.option(
    "--keys-file",
    type=click.Path(path_type=Path),
    default=None,
    help='JSON {"game": {"app_id", "write_key"}, "shop": {...}}, e.g. written by the demo.',
)
@click.option(
    "--register",
    is_flag=True,
    help="Create missing apps in the local registry and save their keys to --keys-file.",
)
@click.option("--rate", default=0.0, show_default=True, type=float, help="Max events/s (0 = unlimited).")
@click.option(
    "--concurrency", default=None, type=click.IntRange(min=1), help="Requests in flight [default: 8]."
)
@click.option(
    "--batch-size",
    default=None,
    type=click.IntRange(min=1, max=1000),
    help="Events per request [default: 100].",
)
@click.option("--dry-run", is_flag=True, help="Generate and print the summary; send nothing.")
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the JSON (expected + send report) to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def simulate(
    collector: str | None,
    users: int,
    days: int,
    seed: int,
    start: datetime | None,
    apps: str,
    write_key_game: str | None,
    write_key_shop: str | None,
    app_id_game: str,
    app_id_shop: str,
    keys_file: Path | None,
    register: bool,
    rate: float,
    concurrency: int | None,
    batch_size: int | None,
    dry_run: bool,
    out: Path | None,
    as_json: bool,
) -> None:
    """Send seeded, realistic game and shop traffic through the collector's HTTP API.

    USERS people over DAYS backdated days, in the Segment, app-tracking and AppsFlyer S2S shapes,
    with ~2% duplicates and ~1% invalid events. Prints what was sent and the numbers a correct
    pipeline must report. Write keys come from --write-key-*, --keys-file, or --register.
    """
    settings = SimulateSettings()
    names = tuple(a.strip() for a in apps.split(",") if a.strip())
    bad = set(names) - set(APP_NAMES)
    if bad or not names:
        raise click.BadParameter(
            f"unknown app(s) {sorted(bad)}; choose from {', '.join(APP_NAMES)}", param_hint="--apps"
        )
    cfg = SimConfig(seed=seed, users=users, days=days, start=start.date() if start else None, apps=names)
    sim = generate(cfg)
    report: SendReport | None = None
    if not dry_run:
        targets: dict[str, AppTarget] = {}
        if keys_file is not None and keys_file.exists():
            targets.update(load_keys_file(keys_file))
        for name, key, app_id in (
            ("game", write_key_game, app_id_game),
            ("shop", write_key_shop, app_id_shop),
        ):
            if key:
                targets[name] = AppTarget(name=name, app_id=app_id, write_key=key)
        if register:
            if keys_file is None:
                raise click.UsageError("--register needs --keys-file to save the new keys")
            targets = register_apps(list(names), keys_file, targets)
        missing = [n for n in names if n not in targets]
        if missing:
            raise click.UsageError(
                f"no write key for {', '.join(missing)}: use --write-key-{missing[0]}, "
                "--keys-file or --register"
            )
        url = collector or settings.simulate_collector_url
        report = asyncio.run(
            send(
                sim,
                targets,
                url,
                concurrency=concurrency or settings.simulate_concurrency,
                batch_size=batch_size or settings.simulate_batch_size,
                rate=rate,
                max_retries=settings.simulate_max_retries,
                max_retry_after_s=settings.simulate_max_retry_after_s,
            )
        )
    data = {"expected": sim.expected.to_json(), "report": report.to_json() if report else None}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    if as_json:
        from trackflow.cli import echo_json

        echo_json(data)
    else:
        click.echo(render_table(sim, report))
    if report is not None and (report.failed or report.accepted == 0):
        raise SimulateError(
            f"{report.failed} events could not be delivered to {report.collector} "
            f"({report.accepted} accepted)"
        )


commands: list[click.Command] = [simulate]
