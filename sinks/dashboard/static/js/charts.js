// Chart builders: pure functions turning read-API rows into an Apache ECharts option.
// Each builder returns {option, points}: `points` is the number of non-zero data points drawn, which
// the page exposes as data-points="N" on the chart's container (the browser test reads it); a chart
// whose values are all zero or missing counts as empty.
// Column names follow sinks/metrics.py; `pick` accepts a few aliases so a renamed column degrades
// to an empty chart rather than an exception.

const PALETTE = ["#2f6fde", "#f08a24", "#2e8b57", "#c8372d", "#8a5cd1", "#1aa3a3", "#d4a017", "#7a8793"];
const LEVEL_COLORS = {
  Critical: "#8b1a1a", Error: "#c8372d", Warning: "#f0a024", Info: "#2f6fde", Debug: "#7a8793",
};

export function pick(row, ...names) {
  for (const n of names) {
    if (row[n] !== undefined && row[n] !== null) return row[n];
  }
  return undefined;
}

function num(v) {
  const n = typeof v === "number" ? v : parseFloat(v);
  return Number.isFinite(n) ? n : null;
}

function countPoints(option) {
  let n = 0;
  for (const s of [].concat(option.series || [])) {
    for (const d of s.data || []) {
      const v = Array.isArray(d) ? d[d.length - 1] : (d && typeof d === "object" ? d.value : d);
      const vv = Array.isArray(v) ? v[v.length - 1] : v;
      if (vv !== null && vv !== undefined && vv !== "-" && vv !== 0) n += 1;
    }
  }
  return n;
}

function base(extra = {}) {
  return {
    color: PALETTE,
    animation: false,
    grid: { left: 48, right: 44, top: 36, bottom: 32, containLabel: true },
    tooltip: { trigger: "axis" },
    legend: { top: 0, type: "scroll" },
    ...extra,
  };
}

/** Seconds as a short duration label: 45 -> "45s", 300 -> "5m", 3600 -> "1h". */
export function duration(s) {
  if (s >= 3600 && s % 3600 === 0) return `${s / 3600}h`;
  if (s >= 60 && s % 60 === 0) return `${s / 60}m`;
  return `${s}s`;
}

function dayOf(row) {
  const d = pick(row, "day", "date", "event_date", "session_date", "failed_date");
  return d === undefined ? undefined : String(d).slice(0, 10);
}

/** A time series: one line (or bar) per column in `cols`, x = day. */
function series(rows, cols, { type = "line", stack = null, area = false } = {}) {
  const days = rows.map(dayOf);
  const option = base({
    xAxis: { type: "category", data: days, boundaryGap: type === "bar" },
    yAxis: { type: "value" },
    series: cols.map(([key, label, aliases = []]) => ({
      name: label,
      type,
      stack,
      showSymbol: rows.length < 40,
      areaStyle: area ? { opacity: 0.15 } : undefined,
      emphasis: { focus: "series" },
      data: rows.map((r) => num(pick(r, key, ...aliases))),
    })),
  });
  return option;
}

function build(option) {
  return { option, points: countPoints(option) };
}

function retentionOption(cohorts, ns, data) {
  const option = {
    animation: false,
    tooltip: {
      position: "top",
      formatter: (p) => `cohort ${cohorts[p.value[1]]}, day ${ns[p.value[0]]}: ${p.value[2]}%`,
    },
    grid: { left: 48, right: 16, top: 10, bottom: 64, containLabel: true },
    xAxis: { type: "category", data: ns.map((n) => `D${n}`), splitArea: { show: true } },
    yAxis: { type: "category", data: cohorts, splitArea: { show: true } },
    visualMap: {
      min: 0, max: 100, calculable: false, orient: "horizontal", left: "center", bottom: 0,
      itemHeight: 160, itemWidth: 12, text: ["100%", "0%"], showLabel: false, inRange: { color: ["#eef3fb", "#2f6fde", "#0b2d6b"] },
    },
    series: [{
      name: "retention", type: "heatmap", data,
      label: { show: data.length <= 160, formatter: (p) => `${Math.round(p.value[2])}`, fontSize: 9 },
    }],
  };
  return option;
}

export const builders = {
  active(rows) {
    return build(series(rows, [["dau", "DAU"], ["wau", "WAU"], ["mau", "MAU"]]));
  },

  "user-types"(rows) {
    return build(series(rows, [
      ["new", "new", ["new_users"]],
      ["retained", "retained", ["retained_users"]],
      ["reengaged", "re-engaged", ["reengaged_users", "re_engaged"]],
    ], { type: "bar", stack: "users" }));
  },

  retention(rows) {
    // rows: one per (cohort, day N) with a rate (0..1) and/or active keys and the cohort size;
    // cohort "all" is the pooled rate (drawn as the top row).
    const cohortOf = (r) => String(pick(r, "cohort", "cohort_date")).slice(0, 10);
    const nOf = (r) => num(pick(r, "day_n", "n", "day"));
    const cohorts = [...new Set(rows.map(cohortOf))].sort();
    const ns = [...new Set(rows.map(nOf))]
      .filter((n) => n !== null).sort((a, b) => a - b);
    const data = [];
    for (const r of rows) {
      const c = cohorts.indexOf(cohortOf(r));
      const n = ns.indexOf(nOf(r));
      let rate = num(pick(r, "rate", "retention", "pct"));
      if (rate === null) {
        const size = num(pick(r, "cohort_size", "size", "cohort_users"));
        const kept = num(pick(r, "active", "retained", "users"));
        rate = size ? kept / size : null;
      }
      if (c < 0 || n < 0 || rate === null) continue;
      const pct = rate <= 1 ? rate * 100 : rate;
      data.push([n, c, Math.round(pct * 10) / 10]);
    }
    // a heatmap cell of 0 % is still a drawn point: count cells, not non-zero values
    return { option: retentionOption(cohorts, ns, data), points: data.length, height: Math.max(280, 16 * cohorts.length + 110) };
  },

  "session-histogram"(rows) {
    const labels = rows.map((r) => {
      const lo = num(pick(r, "lo_s", "lo"));
      const hi = num(pick(r, "hi_s", "hi"));
      if (lo !== null) return hi === null ? `${duration(lo)}+` : `${duration(lo)}–${duration(hi)}`;
      return String(pick(r, "bucket", "label", "range") ?? "?");
    });
    const option = base({
      legend: { show: false },
      xAxis: { type: "category", data: labels, name: "duration", nameLocation: "middle", nameGap: 26, axisLabel: { interval: 0, fontSize: 11 } },
      yAxis: { type: "value", name: "sessions" },
      series: [{ name: "sessions", type: "bar", data: rows.map((r) => num(pick(r, "sessions", "count", "n"))) }],
    });
    return build(option);
  },

  funnel(rows, ctx = {}) {
    const data = rows.map((r, i) => ({
      name: String(pick(r, "step_name", "name", "event", "step") ?? `step ${i + 1}`),
      value: num(pick(r, ctx.by || "users", "users", "devices", "count", "reached", "value")),
    }));
    const first = data.length ? data[0].value || 0 : 0;
    const option = {
      color: PALETTE,
      animation: false,
      tooltip: { trigger: "item", formatter: (p) => `${p.name}: ${p.value}` + (first ? ` (${Math.round((100 * p.value) / first)}%)` : "") },
      series: [{
        name: "funnel", type: "funnel", sort: "none", left: "10%", right: "10%", top: 10, bottom: 10,
        minSize: "8%", gap: 2,
        label: { show: true, position: "inside", formatter: (p) => `${p.name}  ${p.value}` },
        data,
      }],
    };
    return build(option);
  },

  sessions(rows) {
    // sessions per day (bars, left axis) and duration p50 / p90 (lines, right axis, seconds)
    const option = series(rows, [["sessions", "sessions", ["count"]]], { type: "bar" });
    option.yAxis = [{ type: "value", name: "sessions" }, { type: "value", name: "duration (s)", splitLine: { show: false } }];
    for (const [key, label] of [["p50_s", "p50 duration"], ["p90_s", "p90 duration"]]) {
      option.series.push({
        name: label, type: "line", yAxisIndex: 1, showSymbol: false,
        data: rows.map((r) => (num(r.sessions) ? num(r[key]) : null)),
      });
    }
    return build(option);
  },

  revenue(rows, ctx = {}) {
    const reporting = ctx.reportingCurrency || "reporting";
    return build(series(rows, [
      ["revenue_usd", "USD"],
      ["revenue_reporting", reporting],
    ], { type: "bar" }));
  },

  "revenue-by-currency"(rows) {
    const data = rows.map((r) => ({
      name: String(pick(r, "currency") ?? "?"),
      value: num(pick(r, "revenue_usd", "usd", "revenue")),
    }));
    const option = {
      color: PALETTE,
      animation: false,
      tooltip: { trigger: "item", formatter: (p) => `${p.name}: ${p.value} USD (${p.percent}%)` },
      legend: { top: 0, type: "scroll" },
      series: [{
        name: "revenue (USD)", type: "pie", radius: ["35%", "68%"], top: 20,
        label: { formatter: "{b}: {d}%" }, data,
      }],
    };
    return build(option);
  },

  errors(rows) {
    // One bar per error code, stacked by level.
    const codes = [...new Set(rows.map((r) => String(pick(r, "code", "error_code") ?? "")))];
    const levels = [...new Set(rows.map((r) => String(pick(r, "level", "error_level") ?? "")))];
    const totals = new Map();
    for (const r of rows) {
      const k = `${pick(r, "level", "error_level") ?? ""}\u0000${pick(r, "code", "error_code") ?? ""}`;
      totals.set(k, (totals.get(k) || 0) + (num(pick(r, "events", "count", "errors")) || 0));
    }
    const option = base({
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
      xAxis: { type: "category", data: codes.map((c) => c || "(none)"), axisLabel: { interval: 0, rotate: codes.length > 6 ? 30 : 0 } },
      yAxis: { type: "value", name: "events" },
      series: levels.map((lvl) => ({
        name: lvl || "(none)", type: "bar", stack: "level",
        itemStyle: LEVEL_COLORS[lvl] ? { color: LEVEL_COLORS[lvl] } : undefined,
        data: codes.map((c) => totals.get(`${lvl}\u0000${c}`) ?? null),
      })),
    });
    return build(option);
  },

  "dead-letters"(rows) {
    const sorted = [...rows].sort((a, b) => (num(pick(a, "events", "count", "n")) || 0) - (num(pick(b, "events", "count", "n")) || 0));
    const stages = new Set(rows.map((r) => r.stage));
    const label = (r) => (stages.size > 1 ? `${r.stage}: ${pick(r, "reason") ?? "?"}` : String(pick(r, "reason") ?? "?"));
    const option = base({
      legend: { show: false },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
      grid: { left: 16, right: 24, top: 10, bottom: 24, containLabel: true },
      xAxis: { type: "value" },
      yAxis: { type: "category", data: sorted.map(label) },
      series: [{ name: "dead letters", type: "bar", color: "#c8372d", data: sorted.map((r) => num(pick(r, "events", "count", "n"))) }],
    });
    return build(option);
  },

  attribution(rows, ctx = {}) {
    const by = ctx.by || "users";
    const labels = rows.map((r) => {
      const src = pick(r, "media_source") ?? "(none)";
      const camp = pick(r, "campaign");
      return camp && camp !== "(none)" ? `${src} / ${camp}` : String(src);
    });
    const option = base({
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
      grid: { left: 16, right: 24, top: 30, bottom: 24, containLabel: true },
      xAxis: [{ type: "value", position: "bottom" }, { type: "value", position: "top", splitLine: { show: false } }],
      yAxis: { type: "category", data: labels },
      series: [
        { name: by, type: "bar", xAxisIndex: 0, data: rows.map((r) => num(pick(r, by, "users", "devices", "count"))) },
        { name: "revenue (USD)", type: "bar", xAxisIndex: 1, data: rows.map((r) => num(pick(r, "revenue_usd", "revenue"))) },
      ],
    });
    return build(option);
  },
};

/** The read-API metric each chart reads. */
export const metricOf = {
  active: "active-series",
  "user-types": "user-types",
  retention: "retention",
  "session-histogram": "session-histogram",
  funnel: "funnel",
  sessions: "sessions",
  revenue: "revenue",
  "revenue-by-currency": "revenue-by-currency",
  errors: "errors",
  "dead-letters": "dead-letters",
  attribution: "attribution",
};
