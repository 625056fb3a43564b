// Unit tests of the pure chart builders (node --test; no browser): rows in, ECharts option and points out.
import assert from "node:assert/strict";
import { test } from "node:test";

import { builders, duration, metricOf } from "../static/js/charts.js";

const days = ["2026-11-01", "2026-11-02", "2026-11-03"];

test("every chart has a builder and a read-API metric", () => {
  assert.deepEqual(Object.keys(builders).sort(), Object.keys(metricOf).sort());
});

test("active series: one line each for DAU, WAU, MAU; zero values are not points", () => {
  const rows = days.map((day, i) => ({ day, dau: i, wau: 5 + i, mau: 9 + i }));
  const { option, points } = builders.active(rows);
  assert.deepEqual(option.xAxis.data, days);
  assert.deepEqual(option.series.map((s) => s.name), ["DAU", "WAU", "MAU"]);
  assert.equal(points, 2 + 3 + 3);
});

test("no rows means no points (the page shows the empty state)", () => {
  for (const [name, build] of Object.entries(builders)) {
    assert.equal(build([], { by: "users" }).points, 0, name);
  }
});

test("user types are stacked bars", () => {
  const { option, points } = builders["user-types"]([{ day: days[0], new: 2, retained: 3, reengaged: 1 }]);
  assert.ok(option.series.every((s) => s.type === "bar" && s.stack === "users"));
  assert.equal(points, 3);
});

test("retention heatmap: a cell per cohort and day, rate in percent, pooled row on top, 0 % counted", () => {
  const rows = [
    { cohort: "2026-11-01", day: 0, cohort_size: 4, active: 4, rate: 1 },
    { cohort: "2026-11-01", day: 1, cohort_size: 4, active: 0, rate: 0 },
    { cohort: "2026-11-02", day: 0, cohort_size: 2, active: 2, rate: 1 },
    { cohort: "all", day: 0, cohort_size: 6, active: 6, rate: 1 },
    { cohort: "all", day: 1, cohort_size: 4, active: 0, rate: 0 },
  ];
  const { option, points, height } = builders.retention(rows);
  assert.equal(points, 5);
  assert.deepEqual(option.yAxis.data, ["2026-11-01", "2026-11-02", "all"]);
  assert.deepEqual(option.xAxis.data, ["D0", "D1"]);
  assert.deepEqual(option.series[0].data[0], [0, 0, 100]);
  assert.ok(height >= 280);
});

test("retention without a rate uses active / cohort_size", () => {
  const { option } = builders.retention([{ cohort: "2026-11-01", day: 1, cohort_size: 4, active: 1 }]);
  assert.deepEqual(option.series[0].data, [[0, 0, 25]]);
});

test("session histogram labels buckets from lo_s / hi_s", () => {
  const rows = [
    { bucket: "0-10s", lo_s: 0, hi_s: 10, sessions: 3 },
    { bucket: "60-300s", lo_s: 60, hi_s: 300, sessions: 0 },
    { bucket: "3600s+", lo_s: 3600, hi_s: null, sessions: 1 },
  ];
  const { option, points } = builders["session-histogram"](rows);
  assert.deepEqual(option.xAxis.data, ["0s–10s", "1m–5m", "1h+"]);
  assert.equal(points, 2);
  assert.equal(duration(90), "90s");
});

test("funnel reads the users or devices column", () => {
  const rows = [
    { step: 1, name: "home", devices: 10, users: 8 },
    { step: 2, name: "cart", devices: 4, users: 3 },
  ];
  assert.deepEqual(builders.funnel(rows, { by: "devices" }).option.series[0].data.map((d) => d.value), [10, 4]);
  assert.deepEqual(builders.funnel(rows, { by: "users" }).option.series[0].data.map((d) => d.name), ["home", "cart"]);
});

test("errors: a bar per code, stacked by level", () => {
  const rows = [
    { level: "Error", code: "E1", events: 3 },
    { level: "Critical", code: "E1", events: 1 },
    { level: "Error", code: "E2", events: 2 },
  ];
  const { option, points } = builders.errors(rows);
  assert.deepEqual(option.xAxis.data, ["E1", "E2"]);
  assert.deepEqual(option.series.map((s) => [s.name, s.data]), [["Error", [3, 2]], ["Critical", [1, null]]]);
  assert.equal(points, 3);
});

test("dead letters name the stage only when there are several", () => {
  const one = builders["dead-letters"]([{ stage: "validate", reason: "missing_field", events: 2 }]);
  assert.deepEqual(one.option.yAxis.data, ["missing_field"]);
  const two = builders["dead-letters"]([
    { stage: "validate", reason: "missing_field", events: 2 },
    { stage: "decode", reason: "undecodable", events: 1 },
  ]);
  assert.deepEqual(two.option.yAxis.data, ["decode: undecodable", "validate: missing_field"]);
});

test("revenue by currency is a pie of USD values; attribution labels source / campaign", () => {
  const pie = builders["revenue-by-currency"]([{ currency: "EUR", revenue: 9, revenue_usd: 10 }]);
  assert.deepEqual(pie.option.series[0].data, [{ name: "EUR", value: 10 }]);
  const attr = builders.attribution(
    [{ media_source: "google", campaign: "w", users: 3, revenue_usd: 1.5 }, { media_source: "(none)", campaign: "(none)", users: 2, revenue_usd: 0 }],
    { by: "users" },
  );
  assert.deepEqual(attr.option.yAxis.data, ["google / w", "(none)"]);
  assert.equal(attr.points, 3);
});
