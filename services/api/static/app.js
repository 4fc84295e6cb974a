// The jobstream dashboard: one page, hash routes, live through the API's event stream.
//
// Reads: the API's own endpoints, by relative URL (so it works behind a path prefix). Lists
// are paged with the API's cursors and never loaded whole. Live: one server-sent event
// stream per open page (the API serves every viewer from one NATS subscription); a view
// refreshes from the database at most every REFRESH_MS, and only when events say something
// changed, plus every AGGREGATE_MS for aggregates. Endpoints a server may not have yet
// (/stats, /queues, /dead-letters, /workers/{id}) show "not available" on a 404.
"use strict";

const REFRESH_MS = 5000;
const AGGREGATE_MS = 10000;
const PAGE_SIZE = 50;
const TIMELINE_PAGE = 100;
const LIVE_TIMELINE_ROWS = 500; // rows the open timeline takes from the live stream
const RATE_WINDOW_S = 30;
const LIVE_MINUTES = 60;
const TOKEN_KEY = "jobstream.token";
const JOB_STATUSES = ["submitting", "queued", "running", "completed", "failed", "cancelled", "rejected"];
const TASK_STATES = ["queued", "running", "succeeded", "failed", "dead_lettered", "cancelled"];
const TERMINAL_EVENTS = new Set(["task.succeeded", "task.dead_lettered", "task.cancelled"]);

// --- small helpers ---------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function ago(iso) {
  if (!iso) return "—";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return new Date(iso).toLocaleString();
}

function seconds(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 120) return `${value.toFixed(1)} s`;
  if (value < 7200) return `${(value / 60).toFixed(1)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

function count(n) { return (n ?? 0).toLocaleString(); }
function perSecond(rate) {
  if (!rate) return "0/s";
  return rate >= 10 ? `${Math.round(rate).toLocaleString()}/s` : `${rate.toFixed(2)}/s`;
}
function time(iso) { return iso ? new Date(iso).toLocaleTimeString() : "—"; }
function json(value) { return JSON.stringify(value, null, 2); }
function badge(state, title) { return el("span", { class: `badge ${state}`, title }, state); }
function code(text) { return el("code", {}, text); }
function q(value) { return encodeURIComponent(value); }
// A shell word: quoted unless it is plainly safe.
function shellWord(word) { return /^[A-Za-z0-9._:=@\/-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`; }

function section(title, attrs, ...body) {
  const heading = el("h2", {}, ...(Array.isArray(title) ? title : [title]));
  return el("section", attrs || {}, heading, ...body);
}

function table(headers, rows, emptyText, attrs) {
  const body = rows.length ? rows
    : [el("tr", {}, el("td", { class: "empty", colspan: String(headers.length) }, emptyText))];
  return el("table", attrs || {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, body));
}

function notAvailable(what) {
  return el("div", { class: "na" }, `${what}: not available on this server`);
}

function copyCommand(command) {
  const button = el("button", { type: "button", title: "copy to the clipboard" }, "copy");
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(command);
      button.textContent = "copied";
    } catch {
      window.prompt("Copy the command:", command);
    }
  });
  return el("span", { class: "cmd" }, code(command), button);
}

// --- the API: a bearer token if the server asks for one, "not available" for a 404 --------

class NotAvailable extends Error {}

let tokenAnswer = null; // the one prompt of this page load, shared by every request

function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// Ask for the token once per page load (concurrent 401s share the one prompt).
function askToken() {
  if (!tokenAnswer) {
    tokenAnswer = new Promise((resolve) => {
      const token = window.prompt("This jobstream API needs a token (kept for this tab only):");
      if (token && token.trim()) sessionStorage.setItem(TOKEN_KEY, token.trim());
      resolve(Boolean(token && token.trim()));
    });
  }
  return tokenAnswer;
}

// fetch with the tab's bearer token; on a 401, retry once with a newer token (another
// request's, or the answer to the one prompt).
async function request(url, init) {
  for (let attempt = 0; attempt < 2; attempt += 1) {
    const sent = sessionStorage.getItem(TOKEN_KEY);
    const response = await fetch(url, { ...init, headers: { ...(init?.headers || {}), ...authHeaders(sent) } });
    if (response.status !== 401) return response;
    const latest = sessionStorage.getItem(TOKEN_KEY);
    if (latest && latest !== sent) continue;
    if (!(await askToken())) break;
  }
  throw new Error("the API needs its token (HTTP 401); reload the page to enter it");
}

// JSON of `url`; `optional`: a route the server does not have throws NotAvailable;
// `anyStatus`: the body whatever the status (e.g. /readyz answers 503 with a body).
async function getJson(url, { optional = false, anyStatus = false } = {}) {
  const response = await request(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (response.ok || anyStatus) return body;
  // FastAPI answers an unknown route with exactly this body; a known route names the thing.
  if (optional && response.status === 404 && body.detail === "Not Found") throw new NotAvailable(url);
  const error = new Error(body.detail ? `${body.detail}` : `${url}: HTTP ${response.status}`);
  error.status = response.status;
  throw error;
}

async function optionalJson(url) {
  try {
    return await getJson(url, { optional: true });
  } catch (error) {
    if (error instanceof NotAvailable) return null;
    throw error;
  }
}

// --- the live event stream (fetch, not EventSource, so it can carry the token) ---------

class LiveStream {
  constructor() { this.controller = null; this.url = null; this.handlers = []; }

  open(url, handler) {
    this.handlers = [handler];
    if (this.url === url && this.controller) return;
    this.close();
    this.url = url;
    this.controller = new AbortController();
    this.loop(url, this.controller.signal);
  }

  close() {
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.url = null;
  }

  async loop(url, signal) {
    let backoff = 1000;
    while (!signal.aborted) {
      try {
        const response = await request(url, { signal, headers: { Accept: "text/event-stream" } });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        setLive(true);
        backoff = 1000;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            this.frame(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch (error) {
        if (signal.aborted) return;
      }
      setLive(false);
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 15000);
    }
  }

  frame(text) {
    let type = "message";
    let data = "";
    for (const line of text.split("\n")) {
      if (line.startsWith("event: ")) type = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (!data) return;
    let event;
    try { event = JSON.parse(data); } catch { return; }
    for (const handler of this.handlers) handler(type, event);
  }
}

const live = new LiveStream();
let liveEvents = 0;

function setLive(on) {
  const pill = document.getElementById("live");
  pill.className = `pill ${on ? "ok" : "bad"}`;
  pill.textContent = on ? `live · ${count(liveEvents)} events` : "live: reconnecting";
}

// --- throughput and durations seen live (throughput from /stats when the server has it) ---

const minutes = new Map(); // minute (epoch s) -> {succeeded, failed}

function minuteOf(at) { return Math.floor(Date.parse(at || new Date().toISOString()) / 60000) * 60; }

function bucket(at) {
  const key = minuteOf(at);
  let b = minutes.get(key);
  if (!b) {
    b = { succeeded: 0, failed: 0 };
    minutes.set(key, b);
    for (const old of minutes.keys()) if (old < key - LIVE_MINUTES * 60) minutes.delete(old);
  }
  return b;
}

const DURATION_BUCKET_S = 10;
const DURATION_BUCKETS = 60;
const durationBuckets = new Map(); // 10-second slot (epoch s) -> durations[]

function recordDurations(at, values) {
  const key = Math.floor(Date.parse(at || new Date().toISOString()) / (DURATION_BUCKET_S * 1000)) * DURATION_BUCKET_S;
  let list = durationBuckets.get(key);
  if (!list) {
    list = [];
    durationBuckets.set(key, list);
    for (const old of durationBuckets.keys()) if (old < key - DURATION_BUCKETS * DURATION_BUCKET_S) durationBuckets.delete(old);
  }
  list.push(...values);
}

function recordThroughput(type, event) {
  if (type === "task.succeeded") {
    const b = bucket(event.at);
    b.succeeded += 1;
    recordDurations(event.at, [event.duration_s]);
  } else if (type === "task.dead_lettered") {
    bucket(event.at).failed += 1; // failed for good, as /stats counts it
  } else if (type === "task.chunk_finished") {
    const b = bucket(event.at);
    b.succeeded += event.results.length;
    recordDurations(event.at, event.results.map((r) => r.duration_s));
  }
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function liveSeries() {
  const now = minuteOf();
  const t = [], ok = [], failed = [];
  for (let m = now - 29 * 60; m <= now; m += 60) {
    const b = minutes.get(m);
    t.push(m); ok.push(b ? b.succeeded : 0); failed.push(b ? b.failed : 0);
  }
  return { t, ok, failed, source: "events seen live since this page opened" };
}

function liveDurations() {
  const step = DURATION_BUCKET_S;
  const now = Math.floor(Date.now() / (step * 1000)) * step;
  const t = [], p50 = [], p90 = [], p99 = [];
  for (let s = now - (DURATION_BUCKETS - 1) * step; s <= now; s += step) {
    const sorted = [...(durationBuckets.get(s) || [])].sort((a, z) => a - z);
    t.push(s); p50.push(percentile(sorted, 50)); p90.push(percentile(sorted, 90)); p99.push(percentile(sorted, 99));
  }
  return { t, p50, p90, p99, source: `events seen live, per ${step} s` };
}

// Throughput from /stats: one bucket a minute over the last hour, from the read models.
function statsThroughput(stats) {
  if (!stats || !Array.isArray(stats.buckets) || stats.buckets.length === 0) return null;
  return {
    t: stats.buckets.map((b) => Date.parse(b.at) / 1000),
    ok: stats.buckets.map((b) => b.succeeded),
    failed: stats.buckets.map((b) => b.failed),
    source: `the read models, last ${Math.round(stats.window_s / 60)} min`,
  };
}

function statsPanel(stats) {
  if (stats === null) return notAvailable("figures over the last hour (/stats)");
  const d = stats.durations;
  const lag = stats.projector_lag;
  const total = stats.buckets.reduce((sum, b) => sum + b.succeeded, 0);
  const failed = stats.buckets.reduce((sum, b) => sum + b.failed, 0);
  const rows = stats.by_queue_kind.map((r) => el("tr", {}, el("td", {}, r.queue), el("td", {}, r.kind),
    el("td", { class: "num" }, count(r.succeeded)), el("td", { class: "num" }, count(r.failed)),
    el("td", { class: "num" }, seconds(r.p50_s)), el("td", { class: "num" }, seconds(r.p99_s))));
  return el("div", {},
    el("div", { class: "tiles", id: "stats-tiles" },
      tile("succeeded", count(total), `last ${Math.round(stats.window_s / 60)} min`),
      tile("failed", count(failed), "dead-lettered", failed > 0),
      tile("p50", seconds(d.p50_s), "duration"), tile("p90", seconds(d.p90_s), "duration"),
      tile("p99", seconds(d.p99_s), "duration"),
      tile("read-model lag", lag.events === null ? "—" : count(lag.events), lag.seconds === null ? "not known" : `events, ${seconds(lag.seconds)}`, lag.seconds > 5)),
    table(["queue", "kind", "succeeded", "failed", "p50", "p99"], rows, "nothing finished in the window", { id: "stats-table" }));
}

// --- charts (uPlot, vendored) -----------------------------------------------------------

const charts = {};

function chart(id, title, labels, colors, data, unit) {
  const holder = document.getElementById(id);
  if (!holder) return;
  const width = Math.max(300, holder.clientWidth - 8);
  const existing = charts[id];
  if (existing && existing.root.isConnected && existing.width === width) {
    existing.setData(data);
    return;
  }
  if (existing) existing.destroy();
  holder.replaceChildren();
  const series = [{}, ...labels.map((label, i) => ({
    label, stroke: colors[i], width: 2, fill: i === 0 && unit === "tasks" ? `${colors[i]}22` : undefined,
    // Durations: a slot without tasks has none (null); join the slots that have, and mark each.
    spanGaps: unit === "s", points: unit === "s" ? { show: true, size: 5 } : undefined,
    value: (u, v) => (v === null ? "—" : unit === "s" ? seconds(v) : count(v)),
  }))];
  const axes = [{}, { values: (u, vals) => vals.map((v) => (unit === "s" ? seconds(v) : count(v))), size: 60 }];
  charts[id] = new uPlot({ title, width, height: 200, series, axes, scales: { x: { time: true } } }, data, holder);
  charts[id].width = width;
}

function drawThroughput(series) {
  chart("chart-throughput", "tasks per minute", ["succeeded", "failed"], ["#16a34a", "#dc2626"],
    [series.t, series.ok, series.failed], "tasks");
  const note = document.getElementById("throughput-source");
  if (note) note.textContent = `from ${series.source}`;
}

function drawDurations(series) {
  chart("chart-durations", "task duration", ["p50", "p90", "p99"], ["#2563eb", "#a16207", "#dc2626"],
    [series.t, series.p50, series.p90, series.p99], "s");
  const note = document.getElementById("durations-source");
  if (note) note.textContent = `from ${series.source}`;
}

// --- shared pieces -------------------------------------------------------------------

function progressBar(job, big) {
  const t = job.tasks;
  const total = t.total || 1;
  const done = ((t.succeeded + t.cancelled) / total) * 100;
  const dead = (t.dead_lettered / total) * 100;
  const running = (t.running / total) * 100;
  const label = t.total ? `${(job.progress * 100).toFixed(big ? 1 : 0)}%` : "—";
  return el("div", { class: "cell-progress" },
    el("div", { class: `bar${big ? " big" : ""}`, title: `${label} ended, ${t.running} running` },
      el("div", { class: "done", style: `width:${done}%` }),
      el("div", { class: "dead", style: `left:${done}%;width:${dead}%` }),
      el("div", { class: "running", style: `left:${done + dead}%;width:${running}%` })),
    el("span", { class: "bar-label" }, label));
}

function jobLink(jobId) { return el("a", { href: `#/job/${q(jobId)}` }, code(jobId)); }
function taskLink(taskId) { return el("a", { href: `#/task/${q(taskId)}` }, code(taskId)); }

function jobRow(job) {
  const t = job.tasks;
  const started = job.started_at ? Date.parse(job.started_at) : null;
  const running = started && !job.finished_at ? (Date.now() - started) / 1000 : null;
  const labels = Object.entries(job.labels || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  return el("tr", {},
    el("td", {}, jobLink(job.job_id)),
    el("td", {}, job.name || "—", labels ? el("div", { class: "reason", title: labels }, labels) : null),
    el("td", {}, job.queue || "—"),
    el("td", {}, badge(job.status, job.error || ""),
      job.error ? el("div", { class: "reason", title: job.error }, job.error) : null),
    el("td", {}, progressBar(job)),
    el("td", { class: "num" },
      `${count(t.succeeded)} / ${count(t.running)} / ${count(t.dead_lettered)} / ${count(t.failed)} of ${count(t.total)}`),
    el("td", { title: job.submitted_at }, ago(job.submitted_at)),
    el("td", { class: "num" }, seconds(job.duration_s ?? running)));
}

const JOB_HEADERS = ["job", "name", "queue", "status", "progress", "ok / running / dead / retry",
  "submitted", "duration"];

// Pages through a cursor listing: `load(cursor)` gives {rows, next_cursor}.
class Pager {
  constructor(onChange) {
    this.cursors = [null];
    this.next = null;
    this.onChange = () => Promise.resolve().then(onChange).catch(setBanner);
  }
  get cursor() { return this.cursors[this.cursors.length - 1]; }
  reset() { this.cursors = [null]; this.next = null; }
  controls(shown) {
    const page = this.cursors.length;
    return el("div", { class: "pager" },
      el("button", { type: "button", disabled: page === 1, onclick: () => { this.cursors = [null]; this.onChange(); } }, "first"),
      el("button", { type: "button", disabled: page === 1, onclick: () => { this.cursors.pop(); this.onChange(); } }, "previous"),
      el("span", {}, `page ${page} · ${shown} rows`),
      el("button", { type: "button", class: "next-page", disabled: !this.next, onclick: () => { this.cursors.push(this.next); this.onChange(); } }, "next"));
  }
}

function setBanner(error) {
  const banner = document.getElementById("error");
  if (!error) { banner.style.display = "none"; return; }
  banner.textContent = `Cannot refresh: ${error.message}`;
  banner.style.display = "block";
}

function stamp() {
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

// --- health: NATS, PostgreSQL, read-model lag -----------------------------------------

let readiness = null;

async function refreshHealth() {
  try {
    readiness = await getJson("readyz", { anyStatus: true });
  } catch (error) {
    readiness = { ready: false, nats: false, postgres: false, consumers: {}, problems: [error.message] };
  }
  const pill = document.getElementById("health");
  const lag = Math.max(0, ...Object.values(readiness.consumers || {}).map((c) => c.behind_events));
  pill.className = `pill ${readiness.ready ? "ok" : "bad"}`;
  pill.textContent = readiness.ready ? `ready · lag ${count(lag)}` : "not ready";
  pill.title = (readiness.problems || []).join("\n") || "NATS and PostgreSQL answer; read models keep up";
}

function healthPanel() {
  const r = readiness;
  if (!r) return el("div", { class: "empty" }, "loading…");
  const rows = Object.entries(r.consumers || {}).map(([name, c]) => el("tr", {},
    el("td", {}, name), el("td", { class: "num" }, count(c.applied_seq)),
    el("td", { class: "num" }, count(c.behind_events)), el("td", { class: "num" }, seconds(c.behind_s))));
  return el("div", {},
    el("dl", { class: "facts" },
      el("dt", {}, "NATS"), el("dd", {}, el("span", { class: `badge ${r.nats ? "completed" : "failed"}` }, r.nats ? "up" : "down")),
      el("dt", {}, "PostgreSQL"), el("dd", {}, el("span", { class: `badge ${r.postgres ? "completed" : "failed"}` }, r.postgres ? "up" : "down")),
      el("dt", {}, "log last seq"), el("dd", {}, count(r.log_last_seq)),
      el("dt", {}, "problems"), el("dd", {}, (r.problems || []).length ? r.problems.join("; ") : "none")),
    table(["consumer", "applied seq", "behind (events)", "behind (time)"], rows, "no consumer yet", { id: "lag-table" }));
}

// --- the views -----------------------------------------------------------------------

const view = () => document.getElementById("view");
let current = null; // { name, refresh(), onEvent(type, event), aggregate() }
let dirty = false;
let lastRefresh = 0;

// Counts of jobs by status: the API's Prometheus gauges (kept by the projector, no count).
async function jobCounts() {
  const response = await request("metrics");
  const text = await response.text();
  const counts = {};
  for (const match of text.matchAll(/^jobstream_jobs\{status="([a-z_]+)"\} ([0-9.e+]+)$/gm)) {
    counts[match[1]] = Number(match[2]);
  }
  return counts;
}

function countTiles(counts, active, hrefOf) {
  return el("div", { class: "tiles", id: "state-counts" }, JOB_STATUSES.map((status) =>
    el("a", { class: `tile state-${status}${active === status ? " on" : ""}`, href: hrefOf(status), "data-state": status },
      el("div", { class: "label" }, status),
      el("div", { class: "value", id: `count-${status}` }, count(counts[status] || 0)))));
}

function queuesTable(body) {
  const rows = body.queues.map((queue) => {
    const level = (name) => queue.levels.filter((l) => l.level === name).reduce((sum, l) => sum + l.pending, 0);
    return el("tr", {}, el("td", {}, el("a", { href: `#/jobs?queue=${q(queue.queue)}` }, queue.queue)),
      el("td", { class: "num" }, count(queue.pending)), el("td", { class: "num" }, count(level("high"))),
      el("td", { class: "num" }, count(level("normal"))), el("td", { class: "num" }, count(level("low"))),
      el("td", { class: "num" }, count(level("due"))), el("td", { class: "num" }, count(queue.ack_pending)),
      el("td", { class: "num" }, count(queue.redelivered)), el("td", { class: "num" }, count(queue.waiting)));
  });
  return table(["queue", "waiting tasks", "high", "normal", "low", "due", "in flight", "redelivered", "idle fetches"],
    rows, "no queues yet", { id: "queues-table" });
}

function overviewView() {
  let stats = null;
  view().replaceChildren(
    section("Jobs by status", { id: "counts-section" }, el("div", { id: "counts" }, el("div", { class: "empty" }, "loading…"))),
    el("div", { class: "row" },
      section(["Throughput", el("span", { class: "count", id: "throughput-source" })], {}, el("div", { class: "chart", id: "chart-throughput" })),
      section(["Durations", el("span", { class: "count", id: "durations-source" })], {}, el("div", { class: "chart", id: "chart-durations" }))),
    el("div", { class: "row" },
      section(["Last hour", el("span", { class: "count" }, "by queue and kind")], {}, el("div", { id: "stats" })),
      section("Health and read-model lag", {}, el("div", { id: "health-panel" }, healthPanel()))),
    section(["Queues", el("span", { class: "count" }, "tasks waiting in JetStream, by priority level")], {},
      el("div", { id: "queues" }, el("div", { class: "empty" }, "loading…"))),
    section(["Latest jobs", el("span", { class: "tools" }, el("a", { href: "#/jobs" }, "all jobs →"))], {},
      el("div", { id: "latest-jobs" })),
    section("Workers", {}, el("div", { id: "workers-summary" })));
  let chartTimer = 0;
  return {
    name: "overview",
    async refresh() {
      const [jobs, workers] = await Promise.all([getJson(`jobs?limit=10`), getJson("workers")]);
      document.getElementById("latest-jobs").replaceChildren(
        table(JOB_HEADERS, jobs.jobs.map(jobRow), "no jobs yet", { id: "jobs-table" }));
      document.getElementById("workers-summary").replaceChildren(workersTable(workers.workers));
    },
    async aggregate() {
      const [counts, queues, latest] = await Promise.all([jobCounts(), optionalJson("queues"), optionalJson("stats")]);
      stats = latest;
      document.getElementById("counts").replaceChildren(countTiles(counts, null, (s) => `#/jobs?status=${s}`));
      document.getElementById("queues").replaceChildren(queues === null ? notAvailable("queue depths (/queues)") : queuesTable(queues));
      document.getElementById("health-panel").replaceChildren(healthPanel());
      document.getElementById("stats").replaceChildren(statsPanel(stats));
      drawThroughput(statsThroughput(stats) || liveSeries());
      drawDurations(liveDurations());
    },
    onEvent() {
      // The charts follow the live events, drawn at most once a second (the throughput one
      // only without /stats: with it, it is redrawn at each refresh of /stats).
      if (chartTimer) return;
      chartTimer = setTimeout(() => {
        chartTimer = 0;
        if (!statsThroughput(stats)) drawThroughput(liveSeries());
        drawDurations(liveDurations());
      }, 1000);
    },
    stream: "events/stream",
  };
}

// `status:failed queue:web label:team=ops nightly` → the /jobs query (labels repeat; a bare
// word is a part of the name, `id:` a job id).
function parseSearch(text) {
  const query = new URLSearchParams();
  const words = [];
  for (const token of text.trim().split(/\s+/).filter(Boolean)) {
    const match = /^(status|queue|label|name|id):(.+)$/.exec(token);
    if (!match) words.push(token);
    else if (match[1] === "label") query.append("label", match[2]);
    else query.set(match[1], match[2]);
  }
  if (words.length) query.set("name", words.join(" "));
  return query;
}

function searchText(query) {
  const parts = [];
  for (const [key, value] of query) if (key !== "name") parts.push(`${key}:${value}`);
  if (query.get("name")) parts.push(query.get("name"));
  return parts.join(" ");
}

function jobsView(params) {
  const filters = new URLSearchParams([...params].filter(([key]) => ["status", "queue", "label", "name"].includes(key)));
  const pager = new Pager(() => state.refresh());
  const shown = searchText(filters);
  const input = el("input", { type: "search", id: "job-search", value: shown,
    placeholder: "job id, name, status:failed queue:q label:key=value" });
  const form = el("form", { class: "tools", onsubmit: async (event) => {
    event.preventDefault();
    const wanted = parseSearch(input.value);
    const keys = [...wanted.keys()];
    const id = wanted.get("id") || (keys.length === 1 && keys[0] === "name" && !wanted.get("name").includes(" ") ? wanted.get("name") : null);
    if (id) {
      // Perhaps a job id: open the job if there is one.
      const response = await request(`jobs/${q(id)}`).catch(() => null);
      if (response && response.ok) { location.hash = `#/job/${q(id)}`; return; }
      wanted.delete("id");
    }
    location.hash = `#/jobs?${wanted}`;
  } }, input, el("button", { type: "submit" }, "search"), el("a", { href: "#/jobs" }, "clear"));
  view().replaceChildren(
    el("section", {}, el("div", { id: "counts" })),
    section(["Jobs", el("span", { class: "count", id: "jobs-filter" }, shown ? `filtered: ${shown}` : "all, newest first"), form], {},
      el("div", { id: "jobs-list" })));
  const state = {
    name: "jobs",
    async refresh() {
      const query = new URLSearchParams(filters);
      query.set("limit", String(PAGE_SIZE));
      if (pager.cursor) query.set("cursor", pager.cursor);
      const page = await getJson(`jobs?${query}`);
      pager.next = page.next_cursor;
      document.getElementById("jobs-list").replaceChildren(
        table(JOB_HEADERS, page.jobs.map(jobRow), "no jobs match", { id: "jobs-table" }), pager.controls(page.jobs.length));
    },
    async aggregate() {
      const counts = await jobCounts();
      const hrefOf = (status) => {
        const next = new URLSearchParams(filters);
        if (filters.get("status") === status) next.delete("status"); else next.set("status", status);
        return `#/jobs?${next}`;
      };
      document.getElementById("counts").replaceChildren(countTiles(counts, filters.get("status"), hrefOf));
    },
    stream: "events/stream",
  };
  return state;
}

// --- one job ---------------------------------------------------------------------------

function jobView(jobId, params) {
  const taskState = params.get("state") || "";
  const pager = new Pager(() => loadTasks());
  const ended = []; // [time ms, n] of terminal task events seen live, for the recent rate
  let timelineCursor = null;
  let job = null;
  const path = `jobs/${q(jobId)}`;
  view().replaceChildren(
    section(["Job ", code(jobId), el("span", { id: "job-status" }), el("span", { class: "count", id: "job-name" }),
      el("span", { class: "tools" }, el("a", { href: path }, "JSON"), el("a", { href: "#/jobs" }, "all jobs"))], { id: "job-header" },
      el("div", { class: "progress", id: "job-progress" }, el("div", { class: "empty" }, "loading…")),
      el("div", { id: "job-counts" }), el("dl", { class: "facts", id: "job-facts" })),
    section(["Tasks", el("span", { class: "count" }, taskState ? `state ${taskState}` : "all, in task order"),
      el("span", { class: "tools" }, el("label", {}, "state ", el("select", { id: "task-state", onchange: (e) => {
        location.hash = `#/job/${q(jobId)}${e.target.value ? `?state=${e.target.value}` : ""}`;
      } }, el("option", { value: "" }, "any"), TASK_STATES.map((s) => el("option", { value: s, selected: s === taskState ? "" : null }, s)))))],
    { id: "job-tasks" }, el("div", { id: "tasks-list", class: "scroll" }), el("div", { id: "tasks-pager" })),
    section(["Dead letters", el("span", { class: "count" }, "retry with the CLI")], { id: "job-dead" }, el("div", { id: "dead-list" })),
    section(["Timeline", el("span", { class: "count" }, "the job's events, from the log")], { id: "job-timeline" },
      el("div", { id: "timeline", class: "scroll" }), el("div", { class: "pager" }, el("button", { type: "button", id: "timeline-more", onclick: () => loadTimeline().catch(setBanner) }, "load more"))),
    el("section", { id: "crawl-section", style: "display:none" }, el("h2", {}, "Crawl"), el("div", { id: "crawl" })));

  async function loadTasks() {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (taskState) query.set("state", taskState);
    if (pager.cursor) query.set("cursor", pager.cursor);
    const page = await getJson(`${path}/tasks?${query}`);
    pager.next = page.next_cursor;
    const rows = page.tasks.map((t) => el("tr", {},
      el("td", { class: "num" }, t.task_index), el("td", {}, taskLink(t.task_id)), el("td", {}, t.kind),
      el("td", {}, badge(t.state)), el("td", { class: "num" }, t.attempts), el("td", {}, t.worker_id ? code(t.worker_id) : "—"),
      el("td", { class: "num" }, seconds(t.duration_s)), el("td", { title: t.finished_at || "" }, ago(t.finished_at)),
      el("td", { class: "wrap" }, t.error ? el("span", { class: "reason", title: t.error }, t.error) : (t.progress_message || ""))));
    document.getElementById("tasks-list").replaceChildren(
      table(["#", "task", "kind", "state", "attempts", "worker", "duration", "finished", "error / progress"], rows,
        "no tasks in this state", { id: "tasks-table" }));
    document.getElementById("tasks-pager").replaceChildren(pager.controls(page.tasks.length));
  }

  async function loadDead() {
    const page = await getJson(`${path}/tasks?state=dead_lettered&limit=10`);
    const rows = page.tasks.map((t) => el("tr", {}, el("td", {}, taskLink(t.task_id)), el("td", { class: "num" }, t.attempts),
      el("td", { class: "wrap" }, t.error || "—"), el("td", {}, copyCommand(`jobstream dlq retry ${shellWord(t.task_id)}`))));
    const all = page.tasks.length ? el("div", { class: "pager" }, "all of this job's: ", copyCommand(`jobstream dlq retry ${shellWord(jobId)}`)) : null;
    const more = page.next_cursor
      ? el("div", { class: "pager" }, el("a", { href: `#/job/${q(jobId)}?state=dead_lettered` }, "all dead letters of this job →")) : null;
    document.getElementById("dead-list").replaceChildren(
      ...[table(["task", "attempts", "last error", "retry"], rows, "none", { id: "dead-table" }), all, more].filter(Boolean));
  }

  async function loadTimeline() {
    const query = new URLSearchParams({ limit: String(TIMELINE_PAGE) });
    if (timelineCursor) query.set("cursor", timelineCursor);
    const holder = document.getElementById("timeline");
    let page;
    try {
      page = await getJson(`${path}/events?${query}`);
    } catch (error) {
      holder.replaceChildren(el("div", { class: "na" }, `the event log: ${error.message}`));
      return;
    }
    timelineCursor = page.next_cursor;
    let body = holder.querySelector("tbody");
    if (!body) {
      holder.replaceChildren(table(["seq", "time", "event", "task", "worker", "detail"], [], "", { id: "timeline-table" }));
      body = holder.querySelector("tbody");
      body.replaceChildren();
    }
    for (const entry of page.events) body.append(timelineRow(entry));
    const more = document.getElementById("timeline-more");
    more.disabled = !timelineCursor;
    more.textContent = timelineCursor ? "load more" : "end of the log";
  }

  const openedAt = Date.now();

  function rate() {
    const now = Date.now();
    while (ended.length && ended[0][0] < now - RATE_WINDOW_S * 1000) ended.shift();
    const n = ended.reduce((sum, [, k]) => sum + k, 0);
    const span = Math.min(RATE_WINDOW_S, (now - openedAt) / 1000);
    return span > 2 ? n / span : null;
  }

  function showJob() {
    const t = job.tasks;
    const done = t.succeeded + t.dead_lettered + t.cancelled;
    const remaining = t.total - done;
    const startedAt = job.started_at ? Date.parse(job.started_at) : null;
    const elapsed = startedAt ? ((job.finished_at ? Date.parse(job.finished_at) : Date.now()) - startedAt) / 1000 : null;
    const average = elapsed && done ? done / elapsed : null;
    const recent = job.finished_at ? null : rate();
    const speed = recent || average;
    const eta = !job.finished_at && remaining > 0 && speed ? remaining / speed : null;
    document.getElementById("job-status").replaceChildren(badge(job.status, job.error || ""));
    document.getElementById("job-name").textContent = job.name || "";
    document.getElementById("job-progress").replaceChildren(progressBar(job, true),
      el("div", { class: "line" },
        el("span", {}, "ended ", el("b", { id: "job-ended" }, `${count(done)} of ${count(t.total)}`)),
        el("span", {}, "rate ", el("b", { id: "job-rate" }, recent !== null ? `${perSecond(recent)} (last ${RATE_WINDOW_S} s)` : perSecond(average || 0))),
        el("span", {}, "average ", el("b", {}, average ? perSecond(average) : "—")),
        el("span", {}, "ETA ", el("b", { id: "job-eta" }, job.finished_at ? "ended" : eta ? seconds(eta) : "—")),
        el("span", {}, "elapsed ", el("b", {}, seconds(elapsed)))));
    document.getElementById("job-counts").replaceChildren(el("div", { class: "tiles" }, TASK_STATES.map((s) =>
      el("a", { class: `tile state-${s}${taskState === s ? " on" : ""}`, href: `#/job/${q(jobId)}${taskState === s ? "" : `?state=${s}`}` },
        el("div", { class: "label" }, s.replace("_", " ")), el("div", { class: "value", id: `task-count-${s}` }, count(t[s]))))));
    const labels = Object.entries(job.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "—";
    document.getElementById("job-facts").replaceChildren(
      ...[["queue", job.queue], ["priority", job.priority], ["labels", labels], ["max attempts", job.max_attempts],
        ["timeout", seconds(job.timeout_s)], ["submitted", `${new Date(job.submitted_at).toLocaleString()} by ${job.submitted_by || "—"}`],
        ["finished", job.finished_at ? new Date(job.finished_at).toLocaleString() : "—"],
        ["idempotency key", job.idempotency_key || "—"], ["error", job.error || "—"]]
        .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]),
      el("dt", {}, "cancel"), el("dd", {}, job.finished_at ? "—" : copyCommand(`jobstream cancel ${shellWord(jobId)}`)));
  }

  async function loadCrawl() {
    const crawl = await getJson(`${path}/crawl`).catch(() => null);
    if (!crawl || !crawl.is_crawl) return;
    document.getElementById("crawl-section").style.display = "";
    document.getElementById("crawl").replaceChildren(crawlPanel(crawl));
  }

  let first = true;
  return {
    name: "job",
    async refresh() {
      try {
        job = await getJson(path);
      } catch (error) {
        if (error.status === 404) {
          view().replaceChildren(section(["Job ", code(jobId)], {}, el("div", { class: "empty" }, error.message)));
          live.close();
          current = null;
          return;
        }
        throw error;
      }
      showJob();
      const loads = [loadTasks(), loadDead()];
      if (first) loads.push(loadTimeline());
      if (first || !job.finished_at) loads.push(loadCrawl());
      first = false;
      await Promise.all(loads);
    },
    onEvent(type, event) {
      if (TERMINAL_EVENTS.has(type)) ended.push([Date.now(), 1]);
      else if (type === "task.chunk_finished") ended.push([Date.now(), event.results.length]);
      // Events after the last page read show up at once on the timeline's last page.
      const body = document.querySelector("#timeline-table tbody");
      if (!timelineCursor && body && body.rows.length < LIVE_TIMELINE_ROWS) {
        body.append(timelineRow({ seq: null, event, error: null }));
      }
    },
    stream: `events/stream?job_id=${q(jobId)}`,
  };
}

function timelineRow(entry) {
  const e = entry.event;
  if (!e) return el("tr", {}, el("td", { class: "num" }, entry.seq), el("td", {}, "—"), el("td", { class: "ev-bad" }, "unreadable"),
    el("td", {}), el("td", {}), el("td", { class: "wrap" }, entry.error || ""));
  const type = e.type || "?";
  const tone = type.startsWith("job.") ? "ev-job" : /dead|failed|lost|rejected/.test(type) ? "ev-bad" : /succeeded|completed/.test(type) ? "ev-ok" : "";
  let detail = "";
  if (type === "task.succeeded") detail = `attempt ${e.attempt}, ${seconds(e.duration_s)}, result ${JSON.stringify(e.result)}`;
  else if (type === "task.failed") detail = `attempt ${e.attempt}: ${e.error}${e.next_retry_at ? `; retry at ${time(e.next_retry_at)}` : ""}`;
  else if (type === "task.dead_lettered") detail = `${e.reason} after ${e.attempts} attempts: ${e.last_error}`;
  else if (type === "task.started") detail = `attempt ${e.attempt}, lease until ${time(e.lease_deadline)}`;
  else if (type === "task.chunk_finished") detail = `${e.results.length} succeeded, ${e.failed.length} failed, ${seconds(e.duration_s)}`;
  else if (type === "job.submitted") detail = `${e.name || "(no name)"} on ${e.queue}, ${e.tasks.length} task spec(s)${e.sealed === false ? ", streamed" : ""}`;
  else if (type === "job.completed" || type === "job.failed") detail = `${e.succeeded} succeeded, ${e.dead_lettered} dead, ${seconds(e.duration_s)}${e.reason ? `: ${e.reason}` : ""}`;
  else if (e.reason) detail = e.reason;
  else if (e.message) detail = e.message;
  return el("tr", {},
    el("td", { class: "num" }, entry.seq ?? "live"), el("td", { title: e.at }, time(e.at)),
    el("td", { class: `ev-type ${tone}` }, type), el("td", {}, e.task_id ? taskLink(e.task_id) : ""),
    el("td", {}, e.worker_id ? code(e.worker_id) : ""), el("td", { class: "wrap" }, detail));
}

// --- one task ----------------------------------------------------------------------------

function taskView(taskId) {
  view().replaceChildren(section(["Task ", code(taskId), el("span", { id: "task-status" }),
    el("span", { class: "tools", id: "task-links" })], { id: "task-header" }, el("dl", { class: "facts", id: "task-facts" })),
  section("Attempts", { id: "task-attempts" }, el("div", { id: "attempts" })),
  el("div", { class: "row" }, section("Arguments", {}, el("pre", { id: "task-args" })), section("Result", {}, el("pre", { id: "task-result" }))));
  let jobId = null;
  return {
    name: "task",
    async refresh() {
      let t;
      try {
        t = await getJson(`tasks/${q(taskId)}`);
      } catch (error) {
        if (error.status !== 404) throw error;
        view().replaceChildren(section(["Task ", code(taskId)], {}, el("div", { class: "empty" }, error.message)));
        return;
      }
      if (jobId !== t.job_id) {
        jobId = t.job_id;
        live.open(`events/stream?job_id=${q(jobId)}`, onEvent);
      }
      document.getElementById("task-status").replaceChildren(badge(t.state));
      document.getElementById("task-links").replaceChildren(el("a", { href: `#/job/${q(t.job_id)}` }, "its job →"));
      const facts = [["job", jobLink(t.job_id)], ["index", t.task_index], ["kind", t.kind], ["attempts", t.attempts],
        ["worker", t.worker_id || "—"], ["started", t.started_at ? new Date(t.started_at).toLocaleString() : "—"],
        ["finished", t.finished_at ? new Date(t.finished_at).toLocaleString() : "—"], ["duration", seconds(t.duration_s)],
        ["progress", t.progress !== null ? `${Math.round(t.progress * 100)}% ${t.progress_message || ""}` : (t.progress_message || "—")],
        ["error", t.error || "—"]];
      if (t.state === "dead_lettered") facts.push(["retry", copyCommand(`jobstream dlq retry ${shellWord(t.task_id)}`)]);
      document.getElementById("task-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
      const rows = t.history.map((a) => el("tr", {}, el("td", { class: "num" }, a.attempt), el("td", {}, code(a.worker_id)),
        el("td", {}, badge(a.outcome)), el("td", {}, a.started_at ? new Date(a.started_at).toLocaleTimeString() : "—"),
        el("td", {}, a.finished_at ? new Date(a.finished_at).toLocaleTimeString() : "—"), el("td", { class: "num" }, seconds(a.duration_s)),
        el("td", { class: "wrap" }, a.error || "")));
      document.getElementById("attempts").replaceChildren(
        table(["attempt", "worker", "outcome", "started", "finished", "duration", "error"], rows, "not started yet", { id: "attempts-table" }));
      document.getElementById("task-args").textContent = json(t.args);
      document.getElementById("task-result").textContent = t.result === null ? "—" : json(t.result);
    },
  };
  function onEvent(type, event) { if (event.task_id === taskId) dirty = true; }
}

// --- workers ----------------------------------------------------------------------------

const workerTotals = new Map(); // worker id -> [time ms, processed] of the previous read

function workersTable(workers) {
  const now = Date.now();
  const rows = workers.map((w) => {
    const processed = w.tasks_succeeded + w.tasks_failed;
    const before = workerTotals.get(w.worker_id);
    const rate = before && now > before[0] ? ((processed - before[1]) * 1000) / (now - before[0]) : null;
    if (!before || now - before[0] > AGGREGATE_MS / 2) workerTotals.set(w.worker_id, [now, processed]);
    return el("tr", {},
      el("td", {}, el("a", { href: `#/worker/${q(w.worker_id)}` }, code(w.worker_id))), el("td", {}, w.host || "—"), el("td", { class: "num" }, w.pid),
      el("td", {}, w.queues.join(", ")), el("td", { class: "num" }, w.concurrency), el("td", {}, badge(w.state)),
      el("td", { title: w.last_seen_at || "" }, ago(w.last_seen_at)), el("td", { class: "num" }, count(w.tasks_succeeded)),
      el("td", { class: "num" }, count(w.tasks_failed)), el("td", { class: "num" }, rate === null ? "—" : perSecond(Math.max(0, rate))),
      el("td", {}, w.version || "—"));
  });
  return table(["worker", "host", "pid", "queues", "concurrency", "state", "last seen", "succeeded", "failed", "rate", "version"],
    rows, "no workers yet", { id: "workers-table" });
}

function workersView() {
  view().replaceChildren(section(["Workers", el("span", { class: "count", id: "workers-count" })], {}, el("div", { id: "workers" })));
  return {
    name: "workers",
    async aggregate() {
      const { workers } = await getJson("workers");
      const active = workers.filter((w) => w.state === "active").length;
      document.getElementById("workers-count").textContent = `${active} active of ${workers.length}`;
      document.getElementById("workers").replaceChildren(workersTable(workers));
    },
  };
}

function workerView(workerId) {
  view().replaceChildren(section(["Worker ", code(workerId), el("span", { class: "tools" }, el("a", { href: "#/workers" }, "all workers"))], {},
    el("div", { id: "worker" })));
  return {
    name: "worker",
    async aggregate() {
      const detail = await optionalJson(`workers/${q(workerId)}`);
      const holder = document.getElementById("worker");
      if (detail === null) {
        const { workers } = await getJson("workers");
        const row = workers.filter((w) => w.worker_id === workerId);
        holder.replaceChildren(workersTable(row), notAvailable("this worker's details (/workers/{id})"));
        return;
      }
      const w = detail;
      holder.replaceChildren(el("dl", { class: "facts", id: "worker-facts" },
        [["state", badge(w.state)], ["host", w.host || "—"], ["pid", w.pid], ["version", w.version || "—"],
          ["queues", w.queues.join(", ")], ["concurrency", w.concurrency], ["in flight", `${w.in_flight} of ${w.concurrency}`],
          ["rate", `${perSecond(w.rate_per_s)} over the last ${w.rate_window_s} s`],
          ["succeeded", count(w.tasks_succeeded)], ["failed", count(w.tasks_failed)],
          ["started", w.started_at ? new Date(w.started_at).toLocaleString() : "—"], ["last seen", ago(w.last_seen_at)],
          ["stopped", w.stopped_at ? new Date(w.stopped_at).toLocaleString() : "—"]]
          .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
    },
  };
}

// --- dead letters -------------------------------------------------------------------------

function deadLettersView() {
  const pager = new Pager(() => state.aggregate());
  view().replaceChildren(section(["Dead letters", el("span", { class: "count" }, "the API is read-only: retry with the CLI"),
    el("span", { class: "tools" }, copyCommand("jobstream dlq retry --all"))], {}, el("div", { id: "dead-letters" })));
  const state = {
    name: "dead-letters",
    async aggregate() {
      const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (pager.cursor) query.set("cursor", pager.cursor);
      const page = await optionalJson(`dead-letters?${query}`);
      const holder = document.getElementById("dead-letters");
      if (page === null) {
        holder.replaceChildren(notAvailable("the list of all dead letters (/dead-letters)"),
          el("div", { class: "na" }, "Each job's page lists its own dead letters; ", code("jobstream dlq list"), " lists them all."));
        return;
      }
      pager.next = page.next_cursor;
      const rows = page.dead_letters.map((d) => el("tr", {}, el("td", {}, taskLink(d.task_id)), el("td", {}, jobLink(d.job_id)),
        el("td", {}, d.kind), el("td", {}, d.queue ?? "—"), el("td", { class: "num" }, d.attempts),
        el("td", { class: "wrap" }, d.error || "—"), el("td", { title: d.finished_at }, ago(d.finished_at)),
        el("td", {}, copyCommand(d.retry_command))));
      holder.replaceChildren(table(["task", "job", "kind", "queue", "attempts", "last error", "dead since", "retry"],
        rows, "no dead letters", { id: "dead-letters-table" }), pager.controls(rows.length));
    },
  };
  return state;
}

// --- a crawl's statistics (GET /jobs/{id}/crawl) -------------------------------------------

function ms(value) {
  if (value === null || value === undefined) return "—";
  if (value < 10) return `${value.toFixed(2)} ms`;
  if (value < 1000) return `${Math.round(value)} ms`;
  return `${(value / 1000).toFixed(2)} s`;
}

function ratio(value) { return value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)}%`; }

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = n || 0;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

function tile(label, value, sub, bad) {
  return el("div", { class: `tile${bad ? " bad" : ""}` },
    el("div", { class: "label" }, label), el("div", { class: "value" }, value), el("div", { class: "sub" }, sub || ""));
}

function crawlTiles(f) {
  const t = f.response_ms;
  const w = f.warming;
  return el("div", { class: "tiles" },
    tile("pages done", count(f.pages_done), `${bytes(f.bytes)}`),
    tile("pages failed", count(f.pages_failed), "after their retries", f.pages_failed > 0),
    tile("cache hit ratio", ratio(f.cache_hit_ratio), `${count(f.cache_counts.HIT)} HIT`),
    tile("p50", ms(t.p50_ms), `min ${ms(t.min_ms)}, p90 ${ms(t.p90_ms)}`),
    tile("p95", ms(t.p95_ms), `p99 ${ms(t.p99_ms)}, max ${ms(t.max_ms)}`),
    tile("broken links", count(f.broken_links), "4xx", f.broken_links > 0),
    tile("server errors", count(f.server_errors), "5xx and failed HTTP 5xx", f.server_errors > 0),
    tile("slow pages", count(f.slow_pages), "over 3 s", f.slow_pages > 0),
    tile("redirects", count(f.redirects), "pages redirected"),
    tile("warmed", count(w.pages_warmed), `${count(w.misses_to_hits)} misses became hits`),
    tile("time saved", ms(w.time_saved_ms), "by warming"));
}

function distribution(counts, classOf) {
  const entries = Object.entries(counts).sort((a, b) => a[0].localeCompare(b[0]));
  if (entries.length === 0) return el("div", { class: "empty" }, "none");
  return el("div", { class: "dist" }, entries.map(([key, n]) => el("span", { class: classOf(key) }, code(key), ` ${count(n)}`)));
}

function figuresRow(first, f) {
  const t = f.response_ms;
  return el("tr", {}, first,
    el("td", { class: "num" }, count(f.pages_done)), el("td", { class: "num" }, count(f.pages_failed)),
    el("td", { class: "num" }, ratio(f.cache_hit_ratio)),
    [t.min_ms, t.p50_ms, t.p90_ms, t.p95_ms, t.p99_ms, t.max_ms].map((v) => el("td", { class: "num" }, ms(v))),
    el("td", { class: "num" }, count(f.broken_links)), el("td", { class: "num" }, count(f.server_errors)),
    el("td", { class: "num" }, count(f.redirects)), el("td", { class: "num" }, count(f.slow_pages)),
    el("td", { class: "num" }, bytes(f.bytes)), el("td", { class: "num" }, count(f.warming.misses_to_hits)),
    el("td", { class: "num" }, ms(f.warming.time_saved_ms)));
}

function figuresTable(firstHeader, rows) {
  return table([firstHeader, "done", "failed", "hit ratio", "min", "p50", "p90", "p95", "p99",
    "max", "4xx", "5xx", "redirects", "slow", "bytes", "miss→hit", "saved"], rows, "none");
}

function urlList(title, links, describe) {
  const rows = links.map((link) => el("tr", {}, el("td", {}, code(link.url)),
    el("td", { class: "num" }, describe(link)), el("td", { class: "num" }, `pass ${link.pass}`)));
  return el("div", {}, el("h3", {}, title), table(["url", "", "pass"], rows, "none"));
}

function crawlPanel(crawl) {
  const f = crawl.totals;
  const passRows = crawl.passes.map((p) => figuresRow(el("td", {}, `pass ${p.pass}`), p));
  const domainRows = crawl.domains.map((d) => figuresRow(el("td", {}, code(d.domain || "(unknown)")), d));
  const moreDomains = crawl.domains_total > crawl.domains.length
    ? ` (the ${crawl.domains.length} largest of ${crawl.domains_total})` : "";
  return el("div", { class: "crawl" },
    crawlTiles(f),
    el("h3", {}, "status codes"), distribution(f.status_counts, (key) => `s${key[0]}`),
    el("h3", {}, "cache status"), distribution(f.cache_counts, (key) => (key === "HIT" ? "s2" : "")),
    el("h3", {}, "per pass"), figuresTable("pass", passRows),
    el("h3", {}, `per domain${moreDomains}`), figuresTable("domain", domainRows),
    el("div", { class: "lists" },
      urlList(`broken links (first ${f.broken_urls.length} of ${count(f.broken_links)})`, f.broken_urls, (link) => link.status ?? "—"),
      urlList(`slow pages (first ${f.slow_urls.length} of ${count(f.slow_pages)})`, f.slow_urls, (link) => ms(link.total_ms))));
}

// --- routing and the refresh loop --------------------------------------------------------

function route() {
  const hash = location.hash || "#/";
  const legacy = /^#job=(.+)$/.exec(hash); // links of the previous page
  if (legacy) { location.replace(`#/job/${legacy[1]}`); return; }
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  let next;
  if (parts[0] === "jobs") next = jobsView(params);
  else if (parts[0] === "job" && parts[1]) next = jobView(parts[1], params);
  else if (parts[0] === "task" && parts[1]) next = taskView(parts[1]);
  else if (parts[0] === "workers") next = workersView();
  else if (parts[0] === "worker" && parts[1]) next = workerView(parts[1]);
  else if (parts[0] === "dead-letters") next = deadLettersView();
  else next = overviewView();
  current = next;
  for (const link of document.querySelectorAll("header nav a")) {
    const on = link.dataset.nav === next.name || (link.dataset.nav === "jobs" && ["job", "task"].includes(next.name))
      || (link.dataset.nav === "workers" && next.name === "worker");
    link.classList.toggle("on", on);
  }
  if (next.stream) live.open(next.stream, onEvent);
  else if (next.name !== "task") live.close();
  dirty = false;
  lastRefresh = 0;
  lastAggregate = 0;
  tick(true);
}

function onEvent(type, event) {
  liveEvents += 1;
  if (liveEvents % 50 === 1) setLive(true);
  recordThroughput(type, event);
  dirty = true;
  if (type.startsWith("job.")) aggregateDirty = true;
  if (current && current.onEvent) current.onEvent(type, event);
}

let lastAggregate = 0;
let aggregateDirty = false; // a job event came: job counts may have changed
let running = false;

async function tick(force) {
  if (running || !current) return;
  const now = Date.now();
  const refreshDue = current.refresh && (force || (dirty && now - lastRefresh >= REFRESH_MS) || now - lastRefresh >= AGGREGATE_MS);
  const aggregateDue = force || now - lastAggregate >= AGGREGATE_MS
    || (aggregateDirty && now - lastAggregate >= REFRESH_MS);
  if (!refreshDue && !aggregateDue) return;
  running = true;
  const shown = current;
  try {
    const work = [];
    if (refreshDue) { dirty = false; lastRefresh = now; work.push(shown.refresh()); }
    if (aggregateDue) {
      lastAggregate = now;
      aggregateDirty = false;
      work.push(refreshHealth().then(() => (shown.aggregate ? shown.aggregate() : null)));
    }
    await Promise.all(work);
    if (shown === current) { stamp(); setBanner(null); }
  } catch (error) {
    if (shown === current) setBanner(error);
  } finally {
    running = false;
  }
}

window.addEventListener("hashchange", route);
setInterval(() => { if (!document.hidden) tick(false); }, 500);
route();
