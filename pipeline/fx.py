"""Exchange rates and revenue conversion (pure).

Rates follow the Open Exchange Rates convention: base USD, ``rate[c]`` = units of ``c`` per 1 USD.
Converting ``amount`` in ``c`` to the reporting currency ``r``::

    usd       = amount / rate[c]
    reporting = amount / rate[c] * rate[r]

computed in :class:`decimal.Decimal` from the floats' shortest repr and rounded half-up to
:data:`MONEY_PLACES` decimal places, so ``200 EUR`` at ``EUR=1/1.13`` is exactly ``226.00 USD``.

An event uses the rates of its own event-time hour or, if that hour lacks the currency, of the
newest earlier hour that has it (:meth:`RateTable.lookup`).

This module also parses the two history formats ``trackflow fx load`` accepts (CSV
``hour,currency,rate`` and Open Exchange Rates JSON documents).
"""

from __future__ import annotations

import csv
import io
from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import orjson

from pipeline.exceptions import FxError

HOUR_MS = 3_600_000
MONEY_PLACES = Decimal("0.01")


def hour_floor(ts_ms: int) -> int:
    """The start of the UTC hour containing ``ts_ms``."""
    return ts_ms - ts_ms % HOUR_MS


def hour_iso(hour_ms: int) -> str:
    """``2026-10-01T13:00:00Z`` for an hour start in ms (the FX topic key)."""
    return datetime.fromtimestamp(hour_ms / 1000, UTC).strftime("%Y-%m-%dT%H:00:00Z")


def parse_hour(text: str) -> int:
    """Parse an ISO 8601 hour (or any time inside it) into the hour start in ms."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise FxError(f"bad hour {text!r}: {exc}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return hour_floor(int(dt.timestamp() * 1000))


class RateTable:
    """Hourly rates, base USD, queryable by currency and time. Not thread-safe; one per worker."""

    def __init__(self) -> None:
        self._hours: dict[str, list[int]] = {}
        self._rates: dict[str, list[float]] = {}
        self.updates = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self._hours.values())

    def currencies(self) -> set[str]:
        return set(self._hours)

    def set_hour(self, hour_ms: int, rates: dict[str, float]) -> None:
        """Set (or replace) the rates of one hour. USD is implicit (1.0)."""
        self.updates += 1
        for code, rate in rates.items():
            if not rate or rate <= 0:
                continue
            cur = code.upper()
            hours = self._hours.setdefault(cur, [])
            values = self._rates.setdefault(cur, [])
            i = bisect_right(hours, hour_ms)
            if i and hours[i - 1] == hour_ms:
                values[i - 1] = float(rate)
            else:
                hours.insert(i, hour_ms)
                values.insert(i, float(rate))

    def lookup(self, currency: str, ts_ms: int) -> tuple[float, int] | None:
        """``(rate, hour_ms)`` in force at ``ts_ms``: that hour's, else the newest earlier one."""
        if currency == "USD":
            return 1.0, hour_floor(ts_ms)
        hours = self._hours.get(currency)
        if not hours:
            return None
        i = bisect_right(hours, ts_ms)
        if i == 0:
            return None
        return self._rates[currency][i - 1], hours[i - 1]


def _dec(x: float | int | str | Decimal) -> Decimal:
    return x if isinstance(x, Decimal) else Decimal(repr(x) if isinstance(x, float) else str(x))


def convert(amount: float | str | Decimal, rate_from: float, rate_to: float) -> Decimal:
    """``amount / rate_from * rate_to`` rounded half-up to cents (rates are units per 1 USD)."""
    try:
        value = _dec(amount) / _dec(rate_from) * _dec(rate_to)
    except (InvalidOperation, ZeroDivisionError) as exc:
        raise FxError(f"cannot convert {amount!r} at {rate_from}/{rate_to}") from exc
    return value.quantize(MONEY_PLACES, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Conversion:
    """The revenue fields of one enriched event."""

    revenue_usd: float | None
    revenue_reporting: float | None
    fx_rate_usd: float | None
    fx_rate_reporting: float | None
    fx_hour: int | None
    fx_status: str  # ok | unknown_currency | no_rate
    revenue_in_range: bool


def convert_revenue(
    table: RateTable,
    amount: float | str,
    currency: str,
    reporting: str,
    ts_ms: int,
    *,
    limit_usd: float = 10_000.0,
) -> Conversion:
    """Convert one amount into USD and the reporting currency at the rates in force at ``ts_ms``.

    A currency the table has never seen gives ``fx_status='unknown_currency'``; a known currency
    without a rate at or before ``ts_ms`` gives ``no_rate``. Both keep the event.
    """
    src = table.lookup(currency, ts_ms)
    if src is None:
        status = "no_rate" if currency in table.currencies() else "unknown_currency"
        return Conversion(None, None, None, None, None, status, True)
    rate_from, hour = src
    usd = convert(amount, rate_from, 1.0)
    dst = table.lookup(reporting, ts_ms)
    rep: Decimal | None = None
    rate_to: float | None = None
    if dst is not None:
        rate_to = dst[0]
        rep = convert(amount, rate_from, rate_to)
    in_range = abs(usd) <= _dec(limit_usd)
    return Conversion(
        float(usd),
        float(rep) if rep is not None else None,
        rate_from,
        rate_to,
        hour,
        "ok" if dst is not None else "no_rate",
        in_range,
    )


# -- history formats ------------------------------------------------------------------------------


def _hours_of(text: str) -> list[int]:
    """A CSV ``hour`` cell: an ISO hour, or a date meaning each of its 24 hours."""
    text = text.strip()
    if len(text) == 10:  # YYYY-MM-DD: a daily rate applied to every hour of that day
        try:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError as exc:
            raise FxError(f"bad date {text!r}") from exc
        start = int(day.timestamp() * 1000)
        return [start + h * HOUR_MS for h in range(24)]
    return [parse_hour(text)]


def parse_csv(text: str, *, source: str = "file") -> dict[int, dict[str, float]]:
    """Parse ``hour,currency,rate`` CSV into ``{hour_ms: {currency: rate}}``.

    ``hour`` is an ISO 8601 hour (``2026-10-01T13:00:00Z``) or a date (``2026-10-01``) standing
    for all 24 hours of that day. ``rate`` is units of the currency per 1 USD.
    """
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or [f.strip() for f in reader.fieldnames] != ["hour", "currency", "rate"]:
        raise FxError(f"{source}: expected the header 'hour,currency,rate'", source=source)
    out: dict[int, dict[str, float]] = {}
    for lineno, row in enumerate(reader, start=2):
        try:
            rate = float(row["rate"])
            cur = row["currency"].strip().upper()
            hours = _hours_of(row["hour"])
        except (ValueError, AttributeError, FxError) as exc:
            raise FxError(f"{source}:{lineno}: {exc}", source=source) from exc
        if rate <= 0 or not cur:
            raise FxError(f"{source}:{lineno}: rate must be positive and currency set", source=source)
        for h in hours:
            out.setdefault(h, {})[cur] = rate
    return out


def parse_oxr(data: bytes | str | dict[str, Any], *, source: str = "oxr") -> tuple[int, dict[str, float]]:
    """Parse one Open Exchange Rates document (``latest.json`` / ``historical/*.json``).

    Returns ``(hour_ms, rates)``. The hour is the document's ``timestamp`` (seconds) floored to the
    hour. The base must be USD.
    """
    try:
        doc = data if isinstance(data, dict) else orjson.loads(data)
        base = str(doc.get("base", "USD")).upper()
        ts = int(doc["timestamp"])
        rates = {str(k).upper(): float(v) for k, v in doc["rates"].items()}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FxError(f"{source}: not an Open Exchange Rates document: {exc}", source=source) from exc
    if base != "USD":
        raise FxError(f"{source}: base must be USD, got {base}", source=source)
    rates["USD"] = 1.0
    return hour_floor(ts * 1000), rates


def fx_record(hour_ms: int, rates: dict[str, float], source: str, fetched_at_ms: int) -> dict[str, Any]:
    """An ``FxRates`` record (schemas/fx_rates) for one hour."""
    return {
        "hour": hour_iso(hour_ms),
        "base": "USD",
        "rates": {k: float(v) for k, v in rates.items()},
        "source": source,
        "fetched_at": fetched_at_ms,
    }


def day_range(start: datetime, days: int) -> list[datetime]:
    """``days`` consecutive UTC dates from ``start`` (helper for fixture generation)."""
    return [start + timedelta(days=i) for i in range(days)]
