// Dashboard page controller: filters (app, date range, users/devices), chart loading and live tiles.
// State that a test or a user can observe is written to DOM attributes:
//   .chart[data-state="loading|ok|empty|error"][data-points="N"], body[data-charts="loading|done"],
//   .tile[data-value], #live-state[data-state][data-updates].
import * as echarts from "../vendor/echarts.esm.min.js";
import { getLive, getMetric, listApps, openLiveStream, readKey } from "./api.js";
import { builders, metricOf } from "./charts.js";

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(window.location.search);
const instances = new Map();
let apps = [];
let liveStream = null;
let loadSeq = 0;

const fmtInt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const fmtMoney = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

function isoDay(d) {
  return d.toISOString().slice(0, 10);
}

function defaultRange() {
  const to = new Date();
  const from = new Date(to.getTime() - 29 * 86400e3);
  return [isoDay(from), isoDay(to)];
}

function setStatus(text, state) {
  const el = $("#status");
  el.textContent = text;
  el.dataset.state = state;
}

function filters() {
  return {
    app: $("#f-app").value,
    from: $("#f-from").value,
    to: $("#f-to").value,
    by: $("#f-by").value,
  };
}

function funnelSteps() {
  return $("#funnel-steps").value.split(",").map((s) => s.trim()).filter(Boolean);
}

function syncUrl() {
  const f = filters();
  const q = new URLSearchParams();
  if (readKey) q.set("key", readKey);
  for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
  const steps = funnelSteps();
  if (steps.length) q.set("steps", steps.join(","));
  q.set("window", $("#funnel-window").value);
  history.replaceState(null, "", `${window.location.pathname}?${q}`);
}

function chartFor(el) {
  let inst = instances.get(el.id);
  if (!inst) {
    inst = echarts.init(el, null, { renderer: "canvas" });
    instances.set(el.id, inst);
  }
  return inst;
}

function markChart(el, state, points, message = "") {
  el.dataset.state = state;
  el.dataset.points = String(points);
  el.dataset.message = message;
}

async function loadChart(el) {
  const seq = (el.tfSeq = (el.tfSeq || 0) + 1);
  const kind = el.dataset.chart;
  const f = filters();
  const query = { app: f.app, from: f.from, to: f.to, by: f.by };
  if (kind === "funnel") {
    const steps = funnelSteps();
    if (steps.length < 2) {
      chartFor(el).clear();
      markChart(el, "empty", 0, "enter 2 or more event or screen names above");
      return;
    }
    query.steps = steps.join(",");
    query.window = $("#funnel-window").value;
    try {
      localStorage.setItem(`trackflow.funnel.${f.app}`, query.steps);
    } catch (_) { /* storage disabled */ }
  }
  el.dataset.state = "loading";
  try {
    const body = await getMetric(metricOf[kind], query);
    if (seq !== el.tfSeq) return; // a newer load of this chart superseded this one
    const rows = Array.isArray(body.rows) ? body.rows : [];
    const app = apps.find((a) => a.app_id === f.app) || {};
    const { option, points, height } = builders[kind](rows, { by: f.by, reportingCurrency: app.reporting_currency });
    el.style.height = height ? `${height}px` : "";
    const inst = chartFor(el);
    inst.resize();
    inst.clear();
    if (points > 0) inst.setOption(option, true);
    markChart(el, points > 0 ? "ok" : "empty", points, points > 0 ? "" : "no data in this range");
  } catch (err) {
    if (seq !== el.tfSeq) return;
    chartFor(el).clear();
    markChart(el, "error", 0, err.message || String(err));
  }
}

async function loadCharts(only = null) {
  const seq = ++loadSeq;
  document.body.dataset.charts = "loading";
  syncUrl();
  const els = [...document.querySelectorAll(".chart[data-chart]")].filter((el) => !only || el.dataset.chart === only);
  await Promise.all(els.map((el) => loadChart(el)));
  if (seq !== loadSeq) return;
  document.body.dataset.charts = "done";
  const failed = [...document.querySelectorAll('.chart[data-state="error"]')].length;
  setStatus(failed ? `${failed} chart(s) failed` : `updated ${new Date().toLocaleTimeString()}`, failed ? "error" : "ok");
}

function setTile(id, value, text, sub = null) {
  const tile = document.getElementById(id);
  if (!tile) return;
  const changed = tile.dataset.value !== undefined && tile.dataset.value !== String(value);
  tile.dataset.value = String(value);
  tile.querySelector(".tile-value").textContent = text;
  if (sub !== null) tile.querySelector(".tile-sub").textContent = sub;
  if (changed) {
    tile.classList.add("flash");
    setTimeout(() => tile.classList.remove("flash"), 600);
  }
}

function renderSpark(seriesRows) {
  if (!Array.isArray(seriesRows) || !seriesRows.length) return;
  const el = document.getElementById("spark-epm");
  let inst = instances.get(el.id);
  if (!inst) {
    inst = echarts.init(el, null, { renderer: "canvas" });
    instances.set(el.id, inst);
  }
  inst.setOption({
    animation: false,
    grid: { left: 0, right: 0, top: 2, bottom: 2 },
    xAxis: { type: "category", show: false, data: seriesRows.map((r) => r.minute) },
    yAxis: { type: "value", show: false, min: 0 },
    series: [{ type: "line", data: seriesRows.map((r) => r.events), showSymbol: false, smooth: false,
      lineStyle: { width: 1.5, color: "#2f6fde" }, areaStyle: { color: "rgba(47,111,222,0.12)" } }],
  });
}

function renderLive(live) {
  const n = (v) => (typeof v === "number" ? v : parseFloat(v) || 0);
  setTile("tile-epm", n(live.events_per_minute), fmtInt.format(n(live.events_per_minute)));
  renderSpark(live.events_series);
  setTile("tile-online", n(live.online_now), fmtInt.format(n(live.online_now)));
  setTile("tile-dau", n(live.dau_users), fmtInt.format(n(live.dau_users)), `${fmtInt.format(n(live.dau_devices))} devices`);
  setTile("tile-revenue", n(live.revenue_today_usd), `$${fmtMoney.format(n(live.revenue_today_usd))}`);
  const levels = live.errors_last_hour && typeof live.errors_last_hour === "object" ? live.errors_last_hour : {};
  const total = Object.values(levels).reduce((a, b) => a + n(b), 0);
  const parts = Object.entries(levels).filter(([, v]) => n(v) > 0).map(([k, v]) => `${k} ${fmtInt.format(n(v))}`);
  setTile("tile-errors", total, fmtInt.format(total), parts.join(" · "));
  const state = $("#live-state");
  state.dataset.updates = String(Number(state.dataset.updates || 0) + 1);
}

function setLiveState(s) {
  const el = $("#live-state");
  el.dataset.state = s;
  el.textContent = s === "open" ? `live: streaming every ~2 s` : `live: ${s === "error" ? "reconnecting…" : s}`;
}

async function startLive() {
  if (liveStream) liveStream.close();
  const app = $("#f-app").value;
  setLiveState("connecting");
  try {
    renderLive(await getLive(app));
  } catch (_) { /* the stream will retry */ }
  liveStream = openLiveStream(app, renderLive, setLiveState);
}

function savedSteps(app) {
  try {
    return localStorage.getItem(`trackflow.funnel.${app}`) || "";
  } catch (_) {
    return "";
  }
}

async function init() {
  const [from, to] = defaultRange();
  $("#f-from").value = params.get("from") || from;
  $("#f-to").value = params.get("to") || to;
  $("#f-by").value = params.get("by") === "devices" ? "devices" : "users";
  if (params.get("window")) $("#funnel-window").value = params.get("window");
  try {
    apps = await listApps();
  } catch (err) {
    setStatus(err.status === 401 ? "read key missing or wrong: open the page with ?key=…" : `apps: ${err.message}`, "error");
    document.body.dataset.charts = "error";
    return;
  }
  const sel = $("#f-app");
  sel.replaceChildren(...apps.map((a) => new Option(`${a.name} (${a.app_id})`, a.app_id)));
  const wanted = params.get("app");
  if (wanted && apps.some((a) => a.app_id === wanted)) sel.value = wanted;
  $("#funnel-steps").value = params.get("steps") || savedSteps(sel.value);
  if (!apps.length) {
    setStatus("no apps registered", "error");
    return;
  }
  $("#filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    loadCharts();
  });
  sel.addEventListener("change", () => {
    $("#funnel-steps").value = savedSteps(sel.value);
    startLive();
    loadCharts();
  });
  $("#funnel-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    loadCharts("funnel");
  });
  window.addEventListener("resize", () => instances.forEach((i) => i.resize()));
  startLive();
  await loadCharts();
}

init();
