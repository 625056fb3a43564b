"""Every metric's SQL, in one module. All user input is bound as query parameters.

Each metric is a function ``(client, app_id, date_from, date_to, by="users", **params) -> rows``,
registered in :data:`METRICS` under its public name. ``by`` is ``users`` (the ``user_key``: resolved
user id, else anonymous id) or ``devices`` (``device_id``). Days are UTC dates of ``event_time``;
ranges are inclusive. Rows are plain dicts with JSON-ready values (dates as ISO strings).

Definitions (see docs/metrics.md for the worked examples):

- ``dau``/``wau``/``mau``: distinct keys active on the day / in the trailing 7 / 30 days ending on it.
- ``new-users``: keys whose first event ever is on that day.
- ``retained``: active on the day and also in the ``window_days`` (X, app setting, default 30) days
  before it; ``reengaged``: active, not new, and not active in those X days. ``user-types`` gives
  ``new``, ``retained`` and ``reengaged`` per day (they add up to ``dau``).
- ``retention``: per cohort (first day) and day N (0..``max_day``), the cohort's keys active on
  ``cohort + N``; rows with ``cohort = "all"`` give the pooled rate over cohorts old enough.
- ``sessions``: count and duration p50/p90 (``quantileExact``: the value at index floor(q*n) of the
  sorted durations) and mean, per start day; ``session-histogram`` counts sessions per duration bucket.
- ``funnel``: ``steps`` (event or screen names, in order) completed within ``window`` seconds
  (``windowFunnel``), keys reaching each step and the conversion from step 1 and from the previous one.
- ``errors``: error events by level and code with distinct keys and the top 3 messages.
- ``revenue``: per day (``group=day``) or per product/bundle (``group=product``): in-range USD and
  reporting-currency sums, purchases, payers, and the out-of-range amounts, excluded and counted.
- ``revenue-by-currency``: the same by original currency.
- ``attribution``: per media source and campaign: keys, in-range USD revenue, payers, and
  ``purchased_within`` = keys who purchased within ``within`` seconds (default 1 day) of their first
  event from that campaign.
- ``dead-letters``: invalid events by stage and reason.
- ``active-series``: ``dau``, ``wau``, ``mau`` per day together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from sinks.exceptions import MetricError

Row = dict[str, Any]
Metric = Callable[..., list[Row]]
KEYS = {"users": ("user_key", "user_key"), "devices": ("device_id", "device_id")}
HISTOGRAM_EDGES = (0, 10, 30, 60, 300, 900, 1800, 3600)
FILL = "WITH FILL FROM {from:Date} TO {to:Date} + 1"


def parse_date(value: str | date, param: str) -> date:
    """A ``YYYY-MM-DD`` date, or :class:`MetricError` naming ``param``."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise MetricError(f"{param} must be a date YYYY-MM-DD, got {value!r}", param=param) from exc


def _key(by: str) -> str:
    if by not in KEYS:
        raise MetricError(f"by must be 'users' or 'devices', got {by!r}", param="by")
    return KEYS[by][0]


def _int(params: dict[str, Any], name: str, default: int, lo: int = 0, hi: int = 10**9) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except (TypeError, ValueError) as exc:
        raise MetricError(f"{name} must be an integer, got {value!r}", param=name) from exc
    if not lo <= n <= hi:
        raise MetricError(f"{name} must be between {lo} and {hi}, got {n}", param=name)
    return n


def _json(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    return v


def _query(client: Client, sql: str, params: dict[str, Any]) -> list[Row]:
    res = client.query(sql, parameters=params)
    cols = res.column_names
    return [{c: _json(v) for c, v in zip(cols, row, strict=True)} for row in res.result_rows]


def _base(app_id: str, date_from: date, date_to: date) -> dict[str, Any]:
    if date_to < date_from:
        raise MetricError("to must not be before from", param="to")
    return {"app": app_id, "from": date_from, "to": date_to}


# -- activity -------------------------------------------------------------------------------


def dau(client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any) -> list[Row]:
    """Distinct active keys per day."""
    key = _key(by)
    sql = f"""
        SELECT event_date AS day, uniqExact({key}) AS dau FROM events
        WHERE app_id = {{app:String}} AND event_date BETWEEN {{from:Date}} AND {{to:Date}}
        GROUP BY day ORDER BY day {FILL}"""
    return _query(client, sql, _base(app_id, date_from, date_to))


def _trailing(client: Client, app_id: str, date_from: date, date_to: date, by: str, n: int, name: str) -> list[Row]:
    key = _key(by)
    sql = f"""
        SELECT d AS day, uniqExact(k) AS {name} FROM (
            SELECT DISTINCT event_date AS e, {key} AS k FROM events
            WHERE app_id = {{app:String}}
              AND event_date BETWEEN {{from:Date}} - {{back:UInt32}} AND {{to:Date}}
        ) ARRAY JOIN arrayMap(i -> e + i, range({{n:UInt32}})) AS d
        WHERE d BETWEEN {{from:Date}} AND {{to:Date}}
        GROUP BY d ORDER BY d {FILL}"""
    return _query(client, sql, {**_base(app_id, date_from, date_to), "n": n, "back": n - 1})


def wau(client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any) -> list[Row]:
    """Distinct keys active in the 7 days ending on each day."""
    return _trailing(client, app_id, date_from, date_to, by, 7, "wau")


def mau(client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any) -> list[Row]:
    """Distinct keys active in the 30 days ending on each day."""
    return _trailing(client, app_id, date_from, date_to, by, 30, "mau")


def active_series(
    client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any
) -> list[Row]:
    """``dau``, ``wau`` and ``mau`` per day (the dashboard's active-users chart)."""
    rows = {r["day"]: dict(r) for r in dau(client, app_id, date_from, date_to, by)}
    for r in wau(client, app_id, date_from, date_to, by):
        rows[r["day"]]["wau"] = r["wau"]
    for r in mau(client, app_id, date_from, date_to, by):
        rows[r["day"]]["mau"] = r["mau"]
    return [rows[d] for d in sorted(rows)]


def new_users(
    client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any
) -> list[Row]:
    """Keys whose first event ever falls on each day."""
    key = _key(by)
    sql = f"""
        SELECT first_day AS day, count() AS new_{by} FROM (
            SELECT {key} AS k, min(event_date) AS first_day FROM events
            WHERE app_id = {{app:String}} AND event_date <= {{to:Date}} GROUP BY k
        ) WHERE first_day BETWEEN {{from:Date}} AND {{to:Date}}
        GROUP BY day ORDER BY day {FILL}"""
    return _query(client, sql, _base(app_id, date_from, date_to))


def user_types(
    client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any
) -> list[Row]:
    """Per day: ``new``, ``retained`` (active in the previous X days) and ``reengaged`` keys."""
    key = _key(by)
    x = _int(params, "window_days", 30, 1, 3650)
    sql = f"""
        SELECT d AS day,
               countIf(first_day = d) AS new,
               countIf(first_day < d AND has_prev) AS retained,
               countIf(first_day < d AND NOT has_prev) AS reengaged
        FROM (
            SELECT a.k AS k, a.d AS d, f.first_day AS first_day,
                   arrayExists(x -> x < a.d AND x >= a.d - {{x:UInt32}}, a.days) AS has_prev
            FROM (
                SELECT k, days, d FROM (
                    SELECT {key} AS k, groupUniqArray(event_date) AS days FROM events
                    WHERE app_id = {{app:String}}
                      AND event_date BETWEEN {{from:Date}} - {{x:UInt32}} AND {{to:Date}}
                    GROUP BY k
                ) ARRAY JOIN arrayFilter(x -> x BETWEEN {{from:Date}} AND {{to:Date}}, days) AS d
            ) AS a
            INNER JOIN (
                SELECT {key} AS k, min(event_date) AS first_day FROM events
                WHERE app_id = {{app:String}} AND event_date <= {{to:Date}} GROUP BY k
            ) AS f ON a.k = f.k
        )
        GROUP BY day ORDER BY day {FILL}"""
    return _query(client, sql, {**_base(app_id, date_from, date_to), "x": x})


def retained(
    client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any
) -> list[Row]:
    """Keys active on the day and in the X days before it (X = ``window_days``, default 30)."""
    rows = user_types(client, app_id, date_from, date_to, by, **params)
    return [{"day": r["day"], "retained": r["retained"]} for r in rows]


def reengaged(
    client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any
) -> list[Row]:
    """Keys active on the day, not new, and not active in the X days before it."""
    rows = user_types(client, app_id, date_from, date_to, by, **params)
    return [{"day": r["day"], "reengaged": r["reengaged"]} for r in rows]


def retention(
    client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any
) -> list[Row]:
    """Day-N retention matrix of the cohorts first seen in the range, plus pooled ``all`` rows."""
    key = _key(by)
    max_day = _int(params, "max_day", 7, 0, 365)
    sql = f"""
        SELECT cohort, n, count() AS active FROM (
            SELECT first_day AS cohort,
                   arrayJoin(arrayFilter(x -> x <= {{max_day:UInt32}},
                                         arrayMap(x -> toUInt32(dateDiff('day', first_day, x)), days))) AS n
            FROM (
                SELECT {key} AS k, min(event_date) AS first_day, groupUniqArray(event_date) AS days
                FROM events WHERE app_id = {{app:String}} AND event_date <= {{to:Date}} GROUP BY k
            ) WHERE first_day BETWEEN {{from:Date}} AND {{to:Date}}
        ) GROUP BY cohort, n ORDER BY cohort, n"""
    raw = _query(client, sql, {**_base(app_id, date_from, date_to), "max_day": max_day})
    active = {(r["cohort"], int(r["n"])): int(r["active"]) for r in raw}
    cohorts = sorted({c for c, _ in active})
    rows: list[Row] = []
    pooled: dict[int, list[int]] = {}
    for c in cohorts:
        size = active.get((c, 0), 0)
        for n in range(max_day + 1):
            if date.fromisoformat(c) + timedelta(days=n) > date_to:
                break
            a = active.get((c, n), 0)
            rows.append({"cohort": c, "day": n, "cohort_size": size, "active": a,
                         "rate": round(a / size, 6) if size else None})
            p = pooled.setdefault(n, [0, 0])
            p[0] += a
            p[1] += size
    for n, (a, size) in sorted(pooled.items()):
        rows.append({"cohort": "all", "day": n, "cohort_size": size, "active": a,
                     "rate": round(a / size, 6) if size else None})
    return rows


# -- sessions -------------------------------------------------------------------------------


def sessions(
    client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any
) -> list[Row]:
    """Sessions per start day: count, distinct keys, duration p50/p90/mean (seconds)."""
    key = _key(by)
    sql = f"""
        SELECT session_date AS day, count() AS sessions, uniqExact({key}) AS {by},
               quantileExact(0.5)(duration_s) AS p50_s, quantileExact(0.9)(duration_s) AS p90_s,
               round(avg(duration_s), 6) AS mean_s
        FROM sessions FINAL
        WHERE app_id = {{app:String}} AND session_date BETWEEN {{from:Date}} AND {{to:Date}}
        GROUP BY day ORDER BY day {FILL}"""
    return _query(client, sql, _base(app_id, date_from, date_to))


def session_histogram(
    client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any
) -> list[Row]:
    """Sessions per duration bucket ``[lo_s, hi_s)``."""
    key = _key(by)
    sql = f"""
        SELECT arrayCount(x -> duration_s >= x, {{edges:Array(Float64)}}) AS b, count() AS sessions,
               uniqExact({key}) AS {by}
        FROM sessions FINAL
        WHERE app_id = {{app:String}} AND session_date BETWEEN {{from:Date}} AND {{to:Date}}
        GROUP BY b ORDER BY b"""
    raw = _query(client, sql, {**_base(app_id, date_from, date_to), "edges": [float(e) for e in HISTOGRAM_EDGES]})
    by_bucket = {int(r["b"]): r for r in raw}
    rows = []
    for i, lo in enumerate(HISTOGRAM_EDGES, start=1):
        hi = HISTOGRAM_EDGES[i] if i < len(HISTOGRAM_EDGES) else None
        r = by_bucket.get(i, {})
        label = f"{lo}-{hi}s" if hi is not None else f"{lo}s+"
        rows.append({"bucket": label, "lo_s": lo, "hi_s": hi, "sessions": int(r.get("sessions", 0)),
                     by: int(r.get(by, 0))})
    return rows


# -- funnel ---------------------------------------------------------------------------------


def funnel(client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any) -> list[Row]:
    """Keys completing each of ``steps`` in order within ``window`` seconds (default 86400)."""
    key = _key(by)
    steps = params.get("steps")
    if isinstance(steps, str):
        steps = [s.strip() for s in steps.split(",") if s.strip()]
    if not steps or len(steps) < 2 or len(steps) > 20:
        raise MetricError("steps must list 2 to 20 event or screen names, comma separated", param="steps")
    window = _int(params, "window", 86400, 1, 366 * 86400)
    conds = ", ".join(f"event = {{s{i}:String}}" for i in range(len(steps)))
    sql = f"""
        SELECT level, count() AS n FROM (
            SELECT {key} AS k,
                   windowFunnel({{window_ms:UInt64}})(toUInt64(toUnixTimestamp64Milli(event_time)), {conds}) AS level
            FROM events
            WHERE app_id = {{app:String}} AND event_date BETWEEN {{from:Date}} AND {{to:Date}}
              AND event IN {{steps:Array(String)}}
            GROUP BY k
        ) GROUP BY level"""
    p = {**_base(app_id, date_from, date_to), "window_ms": window * 1000, "steps": list(steps)}
    p.update({f"s{i}": s for i, s in enumerate(steps)})
    levels = {int(r["level"]): int(r["n"]) for r in _query(client, sql, p)}
    rows: list[Row] = []
    first = prev = 0
    for i, name in enumerate(steps, start=1):
        reached = sum(n for lvl, n in levels.items() if lvl >= i)
        if i == 1:
            first = prev = reached
        rows.append({
            "step": i, "name": name, by: reached,
            "conversion": round(reached / first, 6) if first else None,
            "from_previous": round(reached / prev, 6) if prev else None,
        })
        prev = reached
    return rows


# -- errors, revenue, attribution ------------------------------------------------------------


def errors(client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any) -> list[Row]:
    """Error events by level and code, distinct keys, and the top 3 messages."""
    key = _key(by)
    where = """app_id = {app:String} AND event_date BETWEEN {from:Date} AND {to:Date}
               AND error_level IS NOT NULL"""
    p = _base(app_id, date_from, date_to)
    main = _query(client, f"""
        SELECT error_level AS level, ifNull(error_code, '') AS code, count() AS events, uniqExact({key}) AS {by}
        FROM events FINAL WHERE {where}
        GROUP BY level, code ORDER BY events DESC, level, code""", p)
    msgs = _query(client, f"""
        SELECT error_level AS level, ifNull(error_code, '') AS code, error_message AS message, count() AS events
        FROM events FINAL WHERE {where}
        GROUP BY level, code, message ORDER BY events DESC, message LIMIT 3 BY level, code""", p)
    top: dict[tuple[str, str], list[Row]] = {}
    for m in msgs:
        top.setdefault((m["level"], m["code"]), []).append({"message": m["message"], "events": m["events"]})
    for r in main:
        r["top_messages"] = top.get((r["level"], r["code"]), [])
    return main


_REVENUE_ROWS = """
    SELECT event_date AS day, ifNull(product_id, '') AS product, ifNull(currency, 'USD') AS cur, {key} AS k,
           ifNull(revenue, 0) AS amount, ifNull(revenue_usd, 0) AS usd, ifNull(revenue_reporting, 0) AS rep,
           revenue_usd IS NULL AS unconverted, revenue_in_range AS ok, reporting_currency AS rc
    FROM events FINAL
    WHERE app_id = {{app:String}} AND event_date BETWEEN {{from:Date}} AND {{to:Date}} AND revenue IS NOT NULL"""


def revenue(client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any) -> list[Row]:
    """Revenue per day (``group=day``) or per product/bundle (``group=product``); out-of-range excluded."""
    key = _key(by)
    group = params.get("group") or "day"
    if group not in ("day", "product"):
        raise MetricError("group must be 'day' or 'product'", param="group")
    dim = "day" if group == "day" else "product AS product_id"
    order = "day" if group == "day" else "revenue_usd DESC, product_id"
    sql = f"""
        SELECT {dim},
               round(sumIf(usd, ok), 6) AS revenue_usd,
               round(sumIf(rep, ok), 6) AS revenue_reporting,
               anyLast(rc) AS reporting_currency,
               countIf(ok) AS purchases,
               uniqExactIf(k, ok) AS payers,
               countIf(NOT ok) AS out_of_range,
               round(sumIf(usd, NOT ok), 6) AS out_of_range_usd,
               countIf(unconverted) AS unconverted
        FROM ({_REVENUE_ROWS.format(key=key)})
        GROUP BY {"day" if group == "day" else "product"} ORDER BY {order}"""
    return _query(client, sql, _base(app_id, date_from, date_to))


def revenue_by_currency(
    client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any
) -> list[Row]:
    """In-range revenue by original currency: the original amount and its USD value."""
    key = _key(by)
    sql = f"""
        SELECT cur AS currency, round(sumIf(amount, ok), 6) AS revenue, round(sumIf(usd, ok), 6) AS revenue_usd,
               countIf(ok) AS purchases, uniqExactIf(k, ok) AS payers, countIf(NOT ok) AS out_of_range
        FROM ({_REVENUE_ROWS.format(key=key)})
        GROUP BY cur ORDER BY revenue_usd DESC, currency"""
    return _query(client, sql, _base(app_id, date_from, date_to))


def attribution(
    client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any
) -> list[Row]:
    """Keys and revenue per media source and campaign, and who purchased soon after first touch."""
    key = _key(by)
    within = _int(params, "within", 86400, 0, 366 * 86400)
    sql = f"""
        SELECT media_source, campaign, count() AS {by}, round(sum(rev_usd), 6) AS revenue_usd,
               countIf(length(purchases) > 0) AS payers,
               countIf(arrayExists(t -> t >= first_touch
                                        AND t <= first_touch + toIntervalSecond({{within:UInt32}}), purchases))
                   AS purchased_within
        FROM (
            SELECT ifNull(media_source, '(none)') AS media_source, ifNull(campaign, '(none)') AS campaign,
                   {key} AS k, min(event_time) AS first_touch,
                   sumIf(ifNull(revenue_usd, 0), revenue IS NOT NULL AND revenue_in_range) AS rev_usd,
                   groupArrayIf(event_time, revenue IS NOT NULL AND revenue > 0 AND revenue_in_range) AS purchases
            FROM events FINAL
            WHERE app_id = {{app:String}} AND event_date BETWEEN {{from:Date}} AND {{to:Date}}
            GROUP BY media_source, campaign, k
        )
        GROUP BY media_source, campaign ORDER BY {by} DESC, media_source, campaign"""
    return _query(client, sql, {**_base(app_id, date_from, date_to), "within": within})


def dead_letters(
    client: Client, app_id: str, date_from: date, date_to: date, by: str = "users", **params: Any
) -> list[Row]:
    """Invalid events by stage and reason, with a sample message (``by`` does not apply)."""
    _key(by)
    sql = """
        SELECT stage, reason, count() AS events, any(message) AS sample_message, max(failed_at) AS last_at
        FROM invalid_events FINAL
        WHERE app_id = {app:String} AND failed_date BETWEEN {from:Date} AND {to:Date}
        GROUP BY stage, reason ORDER BY events DESC, stage, reason"""
    return _query(client, sql, _base(app_id, date_from, date_to))


METRICS: dict[str, Metric] = {
    "dau": dau,
    "wau": wau,
    "mau": mau,
    "new-users": new_users,
    "retained": retained,
    "reengaged": reengaged,
    "retention": retention,
    "sessions": sessions,
    "funnel": funnel,
    "errors": errors,
    "revenue": revenue,
    "attribution": attribution,
    "active-series": active_series,
    "user-types": user_types,
    "session-histogram": session_histogram,
    "dead-letters": dead_letters,
    "revenue-by-currency": revenue_by_currency,
}

#: query parameters each metric accepts besides app, from, to and by
METRIC_PARAMS: dict[str, tuple[str, ...]] = {
    "retained": ("window_days",), "reengaged": ("window_days",), "user-types": ("window_days",),
    "retention": ("max_day",), "funnel": ("steps", "window"), "revenue": ("group",),
    "attribution": ("within",),
}


def run_metric(
    client: Client, name: str, app_id: str, date_from: str | date, date_to: str | date, by: str = "users",
    **params: Any,
) -> list[Row]:
    """Run metric ``name`` with validated arguments (the entry point of the read API and the CLI)."""
    fn = METRICS.get(name)
    if fn is None:
        raise MetricError(f"unknown metric {name!r}; one of: {', '.join(sorted(METRICS))}", param="metric")
    if not app_id:
        raise MetricError("app is required", param="app")
    d_from = parse_date(date_from, "from")
    d_to = parse_date(date_to, "to")
    allowed = set(METRIC_PARAMS.get(name, ()))
    extra = {k: v for k, v in params.items() if k in allowed and v is not None}
    return fn(client, app_id, d_from, d_to, by, **extra)
