"""The admin status page (/status): one self-contained HTML document for people.

Everything is inline — style and script, no CDN, no fonts, no images — because the admin
port often has no way out to the internet. The page itself carries no numbers: its script
fetches /status.json (relative to the page, so a path prefix added by a proxy still works)
right away and every few seconds, and builds the tables from it, so what a person reads is
what /status.json says. A Content-Security-Policy allows exactly this script and style and
requests to the admin listener itself.
"""

from __future__ import annotations

import base64
import hashlib

REFRESH_SECONDS = 5

STYLE = """
:root{--bg:#f6f7f9;--fg:#1d2330;--muted:#6b7385;--card:#fff;--line:#e2e5eb;--head:#f0f2f5;
--ok:#17803d;--ok-bg:#e3f5e9;--warn:#9a6200;--warn-bg:#fff2d6;--bad:#b42318;--bad-bg:#fde4e1;
--info:#2556a8;--info-bg:#e4ecfb}
@media (prefers-color-scheme:dark){:root{--bg:#12151b;--fg:#e4e7ee;--muted:#9098a9;--card:#1b1f27;
--line:#2b313c;--head:#222733;--ok:#5fd38a;--ok-bg:#183524;--warn:#f2c25b;--warn-bg:#3a2e12;
--bad:#ff8a7a;--bad-bg:#3d1d1a;--info:#8fb4ff;--info-bg:#1c2a45}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:24px 20px 40px}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:12px;margin-bottom:18px}
h1{font-size:24px;margin:0}
h2{font-size:17px;margin:28px 0 10px}
h2 small,.muted{color:var(--muted);font-weight:normal}
#updated{margin-left:auto;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(190px,1fr));gap:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .label{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted)}
.card .value{font-size:22px;font-weight:600;margin-top:2px;font-variant-numeric:tabular-nums}
.card .value.small{font-size:15px;font-weight:500;padding-top:6px}
table{width:100%;border-collapse:collapse;background:var(--card);border:1px solid var(--line);
border-radius:8px;overflow:hidden}
th,td{padding:8px 12px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--head);font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted)}
tbody tr:last-child td{border-bottom:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.name{font-weight:600}
code{font:13px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.pill{display:inline-block;padding:1px 9px;border-radius:999px;font-size:13px;font-weight:600;white-space:nowrap}
.ok{color:var(--ok)}.warn{color:var(--warn)}.bad{color:var(--bad)}.info{color:var(--info)}
.pill.ok{background:var(--ok-bg)}.pill.warn{background:var(--warn-bg)}.pill.bad{background:var(--bad-bg)}
.pill.info{background:var(--info-bg)}.pill.muted{background:var(--head)}
.banner{margin:16px 0 0;padding:10px 14px;border-radius:8px;background:var(--bad-bg);color:var(--bad)}
footer{margin-top:28px;font-size:13px;color:var(--muted)}
a{color:var(--info)}
"""

SCRIPT = """
"use strict";
const REFRESH_MS = @REFRESH_MS@;
const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}
function count(n) { return Math.round(n).toLocaleString("en-US"); }
function rate(r) {
  if (r === 0) return "0";
  if (r < 10) return r.toFixed(2);
  return r < 1000 ? r.toFixed(1) : count(r);
}
function ratio(r) {
  if (r === null) return "\\u2014";
  if (r === 0) return "0 %";
  return (r * 100).toFixed(r < 0.001 ? 2 : 1) + " %";
}
function ratioClass(r) { return r === null ? "muted" : r === 0 ? "" : r < 0.01 ? "warn" : "bad"; }
function millis(ms) {
  if (ms === null) return "\\u2014";
  if (ms < 10) return ms.toFixed(2) + " ms";
  return ms < 1000 ? ms.toFixed(1) + " ms" : (ms / 1000).toFixed(2) + " s";
}
function duration(seconds) {
  const s = Math.floor(seconds), d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
  const m = Math.floor(s % 3600 / 60), parts = [];
  if (d) parts.push(d + " d");
  if (d || h) parts.push(h + " h");
  if (d || h || m) parts.push(m + " min");
  if (!d) parts.push((s % 60) + " s");
  return parts.join(" ");
}
function utc(text) { return text.replace("T", " ").replace(/\\.\\d+Z$/, " UTC"); }
const HEALTH = {"up": "ok", "down": "bad", "in rotation (no health check)": "info"};
const BREAKER = {"closed": "ok", "half_open": "warn", "open": "bad"};
function pill(text, kind) { return el("span", {"class": "pill " + (kind || "muted")}, text); }

function renderRoutes(routes) {
  const rows = routes.map((r) => el("tr", {"data-route": r.name},
    el("td", {"class": "name"}, r.name),
    el("td", {"class": "num", "data-field": "requests"}, count(r.requests)),
    el("td", {"class": "num", "data-field": "rps"}, rate(r.rps)),
    el("td", {"class": "num " + ratioClass(r.error_ratio), "data-field": "error_ratio"}, ratio(r.error_ratio)),
    el("td", {"class": "num" + (r.p99_ms === null ? " muted" : ""), "data-field": "p99_ms"}, millis(r.p99_ms))));
  if (!rows.length) rows.push(el("tr", {}, el("td", {"colspan": "5", "class": "muted"}, "no routes")));
  $("routes").replaceChildren(...rows);
}

function renderUpstreams(upstreams) {
  const rows = [];
  for (const u of upstreams) {
    u.targets.forEach((t, i) => {
      const cells = [];
      if (i === 0) {
        cells.push(el("td", {"rowspan": String(u.targets.length), "class": "name"}, u.name,
          el("div", {"class": "muted"}, u.balance.replace("_", " "))));
      }
      cells.push(el("td", {}, el("code", {}, t.url)));
      cells.push(el("td", {"data-field": "health"}, pill(t.health, HEALTH[t.health])));
      const breaker = t.breaker === null
        ? el("span", {"class": "muted"}, "none") : pill(t.breaker.replace("_", "-"), BREAKER[t.breaker]);
      cells.push(el("td", {"data-field": "breaker"}, breaker));
      rows.push(el("tr", {"data-upstream": u.name, "data-target": t.url}, ...cells));
    });
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", {"colspan": "4", "class": "muted"}, "no upstreams")));
  $("upstreams").replaceChildren(...rows);
}

function render(s) {
  $("version").textContent = "v" + s.version;
  const ready = $("ready");
  ready.textContent = s.ready ? "ready" : "not ready";
  ready.className = "pill " + (s.ready ? "ok" : "bad");
  $("uptime").textContent = duration(s.uptime_seconds);
  $("workers").textContent = String(s.workers);
  $("total-rps").textContent = rate(s.routes.reduce((sum, r) => sum + r.rps, 0));
  const last = s.last_reload, reload = $("last-reload");
  reload.textContent = last ? last.result + " at " + utc(last.time) : "never";
  reload.className = "value small " + (last ? (last.result === "success" ? "ok" : "bad") : "muted");
  $("window").textContent = Math.round(s.window_seconds) + " s";
  renderRoutes(s.routes);
  renderUpstreams(s.upstreams);
}

let timer = 0;
async function refresh() {
  clearTimeout(timer);
  const main = document.querySelector("main"), banner = $("problem");
  try {
    const response = await fetch("status.json", {cache: "no-store", credentials: "same-origin",
                                                 headers: {"Accept": "application/json"}});
    if (!response.ok) {
      throw new Error(response.status === 401
        ? "status.json needs the admin token (Authorization: Bearer \\u2026)"
        : "status.json answered " + response.status);
    }
    render(await response.json());
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    main.dataset.state = "live";
    banner.hidden = true;
  } catch (error) {
    main.dataset.state = "stale";
    banner.textContent = error.message + " \\u2014 the numbers shown may be old; trying again.";
    banner.hidden = false;
  }
  timer = setTimeout(refresh, REFRESH_MS);
}
refresh();
""".replace("@REFRESH_MS@", str(REFRESH_SECONDS * 1000))

BODY = """<main data-state="loading">
<header><h1>gateway <span id="version" class="muted"></span></h1><span id="ready" class="pill muted">loading</span>
<span id="updated" class="muted">loading&hellip;</span></header>
<noscript><p class="banner">This page fills itself in with JavaScript.
The same numbers are at <a href="status.json">/status.json</a>.</p></noscript>
<div id="problem" class="banner" role="alert" hidden></div>
<section class="cards">
<div class="card"><div class="label">Uptime</div><div class="value" id="uptime">&mdash;</div></div>
<div class="card"><div class="label">Workers</div><div class="value" id="workers">&mdash;</div></div>
<div class="card"><div class="label">Requests/s, all routes</div><div class="value" id="total-rps">&mdash;</div></div>
<div class="card"><div class="label">Last reload</div>
<div class="value small muted" id="last-reload">&mdash;</div></div>
</section>
<h2>Routes <small>requests since start; rate, errors and p99 over the last <span id="window">60 s</span></small></h2>
<table><thead><tr><th>Route</th><th class="num">Requests</th><th class="num">Req/s</th>
<th class="num">Errors (5xx)</th><th class="num">p99</th></tr></thead><tbody id="routes"></tbody></table>
<h2>Upstreams</h2>
<table><thead><tr><th>Upstream</th><th>Target</th><th>Health</th><th>Breaker</th></tr></thead>
<tbody id="upstreams"></tbody></table>
<footer>Refreshes every @REFRESH@ s &middot; <a href="status.json">status.json</a> &middot;
<a href="metrics">metrics</a> &middot; <a href="config">config</a></footer>
</main>""".replace("@REFRESH@", str(REFRESH_SECONDS))

PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>gateway status</title>
<style>{STYLE}</style></head>
<body>{BODY}
<script>{SCRIPT}</script></body></html>
""".encode()


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # exactly the inline style and script above; fetches only to this listener; never framed
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}
