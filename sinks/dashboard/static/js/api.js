// Read-API client of the dashboard: builds URLs (relative to the page, with the read key) and fetches JSON.
// The key comes from the page URL (?key=) and travels as the X-Read-Key header, or as ?key= for the
// EventSource of the live stream (EventSource cannot send headers).

const pageParams = new URLSearchParams(window.location.search);

export const readKey = pageParams.get("key") || "";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function apiUrl(path, params = {}, withKey = false) {
  const url = new URL(path, document.baseURI);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  if (withKey && readKey) url.searchParams.set("key", readKey);
  return url;
}

export async function getJson(path, params = {}) {
  const headers = { Accept: "application/json" };
  if (readKey) headers["X-Read-Key"] = readKey;
  const res = await fetch(apiUrl(path, params), { headers, cache: "no-store" });
  if (!res.ok) {
    let detail = res.statusText;
    try {
      const body = await res.json();
      detail = body.detail || body.error || JSON.stringify(body);
    } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, `${res.status} ${detail}`);
  }
  return res.json();
}

export function listApps() {
  return getJson("api/apps");
}

export function getMetric(name, params) {
  return getJson(`api/metrics/${encodeURIComponent(name)}`, params);
}

export function getLive(app) {
  return getJson("api/live", { app });
}

/** Open the SSE stream of live counters; calls onData(obj) per message, onState("open"|"error"). */
export function openLiveStream(app, onData, onState) {
  const es = new EventSource(apiUrl("api/live/stream", { app }, true));
  es.onopen = () => onState("open");
  es.onerror = () => onState("error");
  es.onmessage = (ev) => {
    try {
      onData(JSON.parse(ev.data));
    } catch (_) { /* ignore a malformed frame */ }
  };
  return es;
}
