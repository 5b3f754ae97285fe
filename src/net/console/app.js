// The operator console (src/net/console.rs): plain script, no framework.
// Every call goes to the admin API with the token the operator signed in
// with; what a call is refused (401, 403 naming the role) is shown as is.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "homecmp-token";

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

// One admin call: { status, body } with body parsed JSON (or text).
async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + token() };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch (_) {
    // Not JSON: shown as text.
  }
  return { status: response.status, body: parsed };
}

// "403 FORBIDDEN: ..." for an API error body, the JSON otherwise.
function describe(answer) {
  const b = answer.body;
  if (answer.status >= 400) {
    const code = b && b.code ? b.code : "";
    const message = b && b.message ? b.message : String(b);
    return answer.status + " " + code + ": " + message;
  }
  return typeof b === "string" ? b : JSON.stringify(b, null, 2);
}

function show(element, answer) {
  element.textContent = describe(answer);
  element.className = answer.status >= 400 ? "error" : "";
}

// --- signing in -----------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  await start();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  stopWatching();
  location.reload();
}

// Checks the token against the status call: the console opens on a token
// the server accepts, even one that lacks `ops` (health then says so).
async function start() {
  if (!token()) return;
  const answer = await api("GET", "/admin/v1/status");
  if (answer.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("sign-in-error").textContent = describe(answer);
    return;
  }
  $("sign-in-panel").hidden = true;
  $("console").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = "signed in";
  renderHealth(answer);
  setInterval(refreshHealth, 5000);
}

// --- health -----------------------------------------------------------------

async function refreshHealth() {
  renderHealth(await api("GET", "/admin/v1/status"));
}

function renderHealth(answer) {
  const health = $("health");
  if (answer.status !== 200) {
    show(health, answer);
    return;
  }
  const s = answer.body;
  const rows = [
    ["node", (s.ready ? "ready" : "NOT READY (see /readyz)") + ", version " + s.version],
    ["event log", "last seq " + s.log.last_seq],
    ["associations", s.associations + " (" + s.subscribers + " subscribers)"],
    ["codes", String(s.codes)],
    ["sessions bound", String(s.sessions)],
    ["open connections", String(s.open_connections)],
    ["cluster", clusterText(s.cluster)],
    ["RADIUS", radiusText(s.radius)],
  ];
  const list = document.createElement("dl");
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }
  health.className = "";
  health.replaceChildren(list);
}

function clusterText(c) {
  if (!c) return "not configured (single node)";
  if (c.stopped) return "follower STOPPED: " + c.stopped;
  const link = c.connected ? "connected" : "DISCONNECTED from JetStream";
  return link + ", applied " + c.applied + ", conflicts " + c.conflicts;
}

function radiusText(r) {
  if (!r) return "not configured";
  return "listening on " + r.listen + ", last packet " + (r.last_packet || "none yet");
}

// --- look up ----------------------------------------------------------------

async function lookUpClientid(event) {
  event.preventDefault();
  const id = encodeURIComponent($("clientid").value.trim());
  show($("clientid-result"), await api("GET", "/admin/v1/associations/" + id));
}

async function lookUpSubscriber(event) {
  event.preventDefault();
  const msisdn = encodeURIComponent($("msisdn").value.trim());
  show($("subscriber-result"), await api("GET", "/admin/v1/subscribers/" + msisdn));
}

// --- codes and their scans ------------------------------------------------

let chart = null;

function codePath() {
  return "/admin/v1/codes/" + encodeURIComponent($("code").value.trim());
}

async function loadCode() {
  const answer = await api("GET", codePath());
  const result = $("code-result");
  if (answer.status !== 200) {
    show(result, answer);
    return;
  }
  $("target").value = answer.body.target;
  $("rules").value = answer.body.rules ? JSON.stringify(answer.body.rules) : "";
  result.textContent = "loaded " + answer.body.code;
  result.className = "ok";
  watchScans(answer.body.code);
}

async function saveCode(event) {
  event.preventDefault();
  const result = $("code-result");
  const body = { target: $("target").value.trim() };
  const rules = $("rules").value.trim();
  if (rules) {
    try {
      body.rules = JSON.parse(rules);
    } catch (e) {
      result.textContent = "rules: not JSON: " + e.message;
      result.className = "error";
      return;
    }
  }
  const answer = await api("PUT", codePath(), body);
  if (answer.status !== 200) {
    show(result, answer);
    return;
  }
  result.textContent = "saved " + answer.body.code + " → " + answer.body.target;
  result.className = "ok";
  watchScans(answer.body.code);
}

// Polls the code's counts every 2 s and draws the scans of each interval.
function watchScans(code) {
  if (chart) clearInterval(chart.timer);
  chart = { code, last: null, points: [], timer: null };
  $("chart-code").textContent = code;
  const poll = async () => {
    const answer = await api("GET", "/admin/v1/codes/" + encodeURIComponent(code) + "/stats");
    if (!chart || chart.code !== code) return;
    if (answer.status !== 200) {
      $("scans-total").textContent = describe(answer);
      return;
    }
    const total = answer.body.resolutions;
    if (chart.last !== null) chart.points.push(Math.max(0, total - chart.last));
    chart.last = total;
    chart.points = chart.points.slice(-60);
    $("scans-total").textContent = String(total);
    drawChart(chart.points);
  };
  poll();
  chart.timer = setInterval(poll, 2000);
}

function drawChart(points) {
  const svg = $("scans-chart");
  const ns = "http://www.w3.org/2000/svg";
  const top = Math.max(1, ...points);
  const width = 600 / 60;
  const bars = points.map((n, i) => {
    const rect = document.createElementNS(ns, "rect");
    const height = (n / top) * 110;
    rect.setAttribute("x", String(i * width));
    rect.setAttribute("y", String(120 - height));
    rect.setAttribute("width", String(width - 1));
    rect.setAttribute("height", String(height));
    const title = document.createElementNS(ns, "title");
    title.textContent = n + " scans";
    rect.append(title);
    return rect;
  });
  svg.replaceChildren(...bars);
}

// --- the event log, live ----------------------------------------------------

let watching = null;

// Reads the server-sent events with fetch (EventSource cannot send the
// token), one `id`/`event`/`data` block at a time.
async function watchEvents() {
  stopWatching();
  const controller = new AbortController();
  watching = controller;
  $("watch").disabled = true;
  $("stop-watch").disabled = false;
  const state = $("watch-state");
  try {
    const response = await fetch("/admin/v1/events", {
      headers: { Authorization: "Bearer " + token() },
      signal: controller.signal,
    });
    if (response.status !== 200) {
      const text = await response.text();
      let body = text;
      try {
        body = JSON.parse(text);
      } catch (_) {
        // shown as text
      }
      state.textContent = describe({ status: response.status, body });
      state.className = "error";
      return;
    }
    state.textContent = "watching";
    state.className = "ok";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += value;
      let end;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        showEvent(buffered.slice(0, end));
        buffered = buffered.slice(end + 2);
      }
    }
    state.textContent = "stream ended";
  } catch (e) {
    if (e.name !== "AbortError") {
      state.textContent = "stream failed: " + e.message;
      state.className = "error";
    }
  } finally {
    if (watching === controller) stopWatching();
  }
}

function showEvent(block) {
  const fields = {};
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // keep-alive comment
    const colon = line.indexOf(": ");
    if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 2);
  }
  if (!fields.data) return;
  const record = JSON.parse(fields.data);
  const item = document.createElement("li");
  item.className = fields.event === "error" ? "error" : "";
  const { seq, at, kind, at_ms, ...rest } = record;
  item.textContent = [seq, at, kind || fields.event, JSON.stringify(rest)].join("  ");
  const list = $("events");
  list.prepend(item);
  while (list.children.length > 200) list.lastChild.remove();
}

function stopWatching() {
  if (watching) watching.abort();
  watching = null;
  $("watch").disabled = false;
  $("stop-watch").disabled = true;
}

// --- wiring -----------------------------------------------------------------

$("sign-in").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", signOut);
$("lookup-clientid").addEventListener("submit", lookUpClientid);
$("lookup-subscriber").addEventListener("submit", lookUpSubscriber);
$("load-code").addEventListener("click", loadCode);
$("code-form").addEventListener("submit", saveCode);
$("watch").addEventListener("click", watchEvents);
$("stop-watch").addEventListener("click", () => {
  stopWatching();
  $("watch-state").textContent = "stopped";
  $("watch-state").className = "";
});
start();
