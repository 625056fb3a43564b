"""FX arithmetic, rate lookup by hour, and the history formats."""

from __future__ import annotations

from decimal import Decimal

import pytest

from pipeline.exceptions import FxError
from pipeline.fx import HOUR_MS, RateTable, convert, convert_revenue, parse_csv, parse_hour, parse_oxr

H = parse_hour("2026-10-01T13:00:00Z")


def table() -> RateTable:
    t = RateTable()
    t.set_hour(H, {"EUR": 1 / 1.13, "GBP": 0.78})  # EUR->USD 1.13, USD->GBP 0.78
    return t


def test_200_eur_is_226_usd_and_176_28_gbp():
    c = convert_revenue(table(), "200", "EUR", "GBP", H + 1)
    assert c.revenue_usd == 226.00 and c.revenue_reporting == 176.28
    assert c.fx_status == "ok" and c.fx_hour == H and c.fx_rate_reporting == 0.78
    assert convert(200, 1 / 1.13, 1.0) == Decimal("226.00")


def test_no_currency_means_usd_and_usd_needs_no_rate():
    c = convert_revenue(table(), 10, "USD", "GBP", H)
    assert c.revenue_usd == 10.0 and c.revenue_reporting == 7.8 and c.fx_rate_usd == 1.0


def test_uses_its_hour_or_the_newest_earlier():
    t = table()
    t.set_hour(H + HOUR_MS, {"EUR": 0.5})
    assert t.lookup("EUR", H + HOUR_MS - 1) == (1 / 1.13, H)
    assert t.lookup("EUR", H + HOUR_MS) == (0.5, H + HOUR_MS)
    assert t.lookup("EUR", H + 50 * HOUR_MS) == (0.5, H + HOUR_MS)
    assert t.lookup("GBP", H + 2 * HOUR_MS) == (0.78, H)  # that hour lacks GBP: newest earlier
    assert t.lookup("EUR", H - 1) is None


def test_unknown_currency_and_no_rate():
    assert convert_revenue(table(), 5, "ZAR", "GBP", H).fx_status == "unknown_currency"
    assert convert_revenue(table(), 5, "EUR", "GBP", H - 1).fx_status == "no_rate"


def test_out_of_range_is_flagged():
    assert convert_revenue(table(), "10000", "USD", "GBP", H).revenue_in_range is True
    assert convert_revenue(table(), "-10000.01", "USD", "GBP", H).revenue_in_range is False
    assert convert_revenue(table(), "9000", "EUR", "GBP", H).revenue_in_range is False  # 10,170 USD


def test_csv_dates_expand_to_24_hours():
    hours = parse_csv("hour,currency,rate\n2026-10-01,EUR,0.9\n2026-10-01T05:00:00Z,GBP,0.8\n")
    assert len(hours) == 24 and hours[parse_hour("2026-10-01T05:00:00Z")] == {"EUR": 0.9, "GBP": 0.8}
    with pytest.raises(FxError):
        parse_csv("when,cur,rate\nx,y,1\n")
    with pytest.raises(FxError):
        parse_csv("hour,currency,rate\n2026-10-01,EUR,-1\n")


def test_oxr_document():
    hour, rates = parse_oxr(b'{"timestamp": 1790000000, "base": "USD", "rates": {"EUR": 0.9}}')
    assert hour == 1790000000000 - 1790000000000 % HOUR_MS and rates == {"EUR": 0.9, "USD": 1.0}
    with pytest.raises(FxError):
        parse_oxr(b'{"timestamp": 1, "base": "EUR", "rates": {}}')
