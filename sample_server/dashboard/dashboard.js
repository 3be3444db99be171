// The usage dashboard: asks for a key, keeps it in sessionStorage (this tab only), and draws what
// GET /v1/usage/dashboard and GET /v1/usage answer for the chosen period, team and model.
"use strict";
(() => {
  const storageKey = "chatkit.dashboard.key";
  const $ = (id) => document.getElementById(id);
  const palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f"];
  const maxGroups = 7; // more groups than this are drawn as one "other"
  let charts = [];
  let lastData = null;
  let loading = 0;

  const integer = (n) => Number(n).toLocaleString("en-US");
  const usd = (n) => {
    if (n === 0) return "0";
    if (Math.abs(n) >= 1) return n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    return String(Number(n.toPrecision(4)));
  };
  const percent = (r) => (r === null || r === undefined ? "n/a" : (r * 100).toFixed(1) + " %");
  const ms = (v) => (v === null || v === undefined ? "n/a" : Number(v.toPrecision(4)).toString());
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  // An API error's message, never the key: the server's envelope says what was wrong.
  class ApiError extends Error {
    constructor(status, body) {
      const e = body && body.error ? body.error : {};
      super(e.message || "the server answered " + status);
      this.status = status;
      this.code = e.code || "";
    }
  }

  async function getJson(path, key) {
    const res = await fetch(path, { headers: { Authorization: "Bearer " + key }, cache: "no-store" });
    let body = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    if (!res.ok) throw new ApiError(res.status, body);
    return body;
  }

  function showSignIn(message) {
    $("dashboard").hidden = true;
    $("sign-out").hidden = true;
    $("who").textContent = "";
    $("sign-in").hidden = false;
    const err = $("sign-in-error");
    err.textContent = message || "";
    err.hidden = !message;
    $("key").focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(storageKey);
    destroyCharts();
    lastData = null;
    $("team").replaceChildren(new Option("All teams", ""));
    $("model").replaceChildren(new Option("All models", ""));
    showSignIn(message);
  }

  function filters() {
    const days = document.querySelector('input[name="days"]:checked').value;
    return { days, team: $("team").value, model: $("model").value, stack: $("stack").value };
  }

  async function load(key) {
    const f = filters();
    const q = new URLSearchParams({ days: f.days });
    if (f.team) q.set("team", f.team);
    if (f.model) q.set("model", f.model);
    const ticket = ++loading;
    $("status").textContent = "Loading…";
    $("load-error").hidden = true;
    try {
      const data = await getJson("/v1/usage/dashboard?" + q, key);
      // /v1/usage covers one team: the caller's, or the one chosen. Read it for the table by day.
      let usage = null;
      if (!data.all_teams && !f.model) {
        const uq = new URLSearchParams({ days: f.days });
        if (f.team) uq.set("team", f.team);
        usage = await getJson("/v1/usage?" + uq, key);
      }
      if (ticket !== loading) return; // a newer request has been made meanwhile
      sessionStorage.setItem(storageKey, key);
      lastData = data;
      render(data, usage, f);
      const range = data.period.start === data.period.end ? data.period.end : data.period.start + " to " + data.period.end;
      $("status").textContent = "Showing " + range + " (UTC)" + (data.team_id ? ", team " + (data.team_name || data.team_id) : ", every team") +
        (data.model ? ", model " + data.model : "") + ".";
    } catch (e) {
      if (ticket !== loading) return;
      $("status").textContent = "";
      if (e instanceof ApiError && e.status === 401) {
        signOut("The server refused this key (401): " + e.message);
        return;
      }
      const err = $("load-error");
      err.textContent = "Could not load the usage" + (e.status ? " (" + e.status + ")" : "") + ": " + e.message;
      err.hidden = false;
    }
  }

  // Keeps the options already known and adds new ones, so a filter does not empty its own list.
  function mergeOptions(select, values, label) {
    const known = new Set(Array.from(select.options, (o) => o.value));
    for (const v of values) {
      if (v === null || known.has(v)) continue;
      select.add(new Option(label(v), v));
      known.add(v);
    }
  }

  function render(data, usage, f) {
    $("sign-in").hidden = true;
    $("dashboard").hidden = false;
    $("sign-out").hidden = false;
    $("who").textContent = data.all_teams || f.team ? "Admin view" : "Team " + (data.team_name || data.team_id || "(no team)");
    // Only the admin key (or a server without keys) sees every team and may choose one.
    const teamChoice = data.all_teams || !!f.team;
    $("team-filter").hidden = !teamChoice;
    if (data.all_teams) mergeOptions($("team"), data.by_team.map((t) => t.team_id), (id) => id);
    mergeOptions($("model"), data.by_model.map((m) => m.model || null), (m) => m);
    const stackTeam = $("stack").querySelector('option[value="team"]');
    stackTeam.disabled = !data.all_teams;
    if (!data.all_teams && f.stack === "team") $("stack").value = "model";

    const s = data.summary;
    setCard("card-requests", s.total_requests, integer(s.total_requests));
    setCard("card-tokens", s.total_tokens, integer(s.total_tokens));
    setCard("card-cost", s.total_cost_usd, usd(s.total_cost_usd));
    setCard("card-avg", s.avg_daily_cost_usd, usd(s.avg_daily_cost_usd));
    setCard("card-unpriced", s.unpriced_requests, integer(s.unpriced_requests));
    setCard("card-errors", s.error_rate, percent(s.error_rate) + " (" + integer(s.errors) + ")");
    setCard("card-429", s.rate_limited_rate, percent(s.rate_limited_rate) + " (" + integer(s.rate_limited) + ")");
    setCard("card-cache", s.cache_hit_ratio, percent(s.cache_hit_ratio));
    $("unpriced-card").classList.toggle("flagged", s.unpriced_requests > 0);
    $("unpriced-note").hidden = s.unpriced_requests === 0;

    fillTable("table-models", data.by_model, (m) => [m.model || "(none: refused first)", integer(m.requests), integer(m.tokens), usd(m.cost_usd),
      { text: integer(m.unpriced_requests), cls: m.unpriced_requests > 0 ? "unpriced" : "" }]);
    fillTable("table-teams", data.by_team, (t) => [t.team_name ? t.team_name + " (" + t.team_id + ")" : t.team_id || "(no team)",
      integer(t.requests), integer(t.tokens), usd(t.cost_usd)]);
    fillTable("table-keys", data.top_keys, (k) => [k.key_id, k.team_id || "(no team)", integer(k.requests), usd(k.cost_usd)]);
    fillTable("table-latency", [["Total", data.latency_ms], ["Time to first token", data.ttft_ms]],
      ([name, p]) => [name, ms(p.p50), ms(p.p90), ms(p.p99)]);
    $("days-section").hidden = !usage;
    if (usage) fillTable("table-days", usage.by_day, (d) => [d.date, integer(d.requests), integer(d.tokens), usd(d.cost_usd)]);

    drawCharts(data, $("stack").value);
  }

  function setCard(id, value, text) {
    const el = $(id);
    el.textContent = text;
    el.dataset.value = value === null ? "" : String(value);
  }

  function fillTable(id, rows, cells) {
    const body = $(id).tBodies[0];
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = body.insertRow();
      const td = tr.insertCell();
      td.colSpan = $(id).tHead.rows[0].cells.length;
      td.textContent = "No requests in this period.";
      return;
    }
    for (const row of rows) {
      const tr = body.insertRow();
      for (const c of cells(row)) {
        const td = tr.insertCell();
        if (typeof c === "object") {
          td.textContent = c.text;
          if (c.cls) td.className = c.cls;
        } else {
          td.textContent = c;
        }
      }
    }
  }

  function destroyCharts() {
    for (const c of charts) c.destroy();
    charts = [];
  }

  // The groups of a stacked chart, largest cost first, the smallest summed into "other".
  function groups(data, stack) {
    const list = stack === "team" ? data.series.by_team.map((g) => ({ ...g, name: g.team_id || "(no team)" }))
                                  : data.series.by_model.map((g) => ({ ...g, name: g.model || "(none)" }));
    if (list.length <= maxGroups + 1) return list;
    const rest = list.slice(maxGroups);
    const sum = (field) => rest[0][field].map((_, i) => rest.reduce((a, g) => a + g[field][i], 0));
    return list.slice(0, maxGroups).concat([{ name: "other", requests: sum("requests"), tokens: sum("tokens"), cost_usd: sum("cost_usd") }]);
  }

  // uPlot draws no stacks: each series is drawn as the sum of its group and the ones below it,
  // largest sum first, so each bar shows through above the next; the legend shows a group's own value.
  function drawCharts(data, stack) {
    destroyCharts();
    const gs = groups(data, stack);
    const fg = cssVar("--fg");
    const grid = cssVar("--line");
    const hourly = data.series.bucket === "hour";
    for (const [field, id, fmt] of [["requests", "chart-requests", integer], ["tokens", "chart-tokens", integer], ["cost_usd", "chart-cost", usd]]) {
      const el = $(id);
      const raw = gs.map((g) => g[field]);
      const stacked = [];
      let running = data.series.time.map(() => 0);
      for (const r of raw) {
        running = running.map((v, i) => v + r[i]);
        stacked.push(running);
      }
      const order = gs.map((_, i) => i).reverse(); // the top of the stack first
      const series = [{ label: hourly ? "Hour (UTC)" : "Day (UTC)" }].concat(order.map((gi) => ({
        label: gs[gi].name,
        stroke: palette[gi % palette.length],
        fill: palette[gi % palette.length],
        width: 0,
        paths: uPlot.paths.bars({ size: [0.7, 60] }),
        points: { show: false },
        value: (u, v, si, idx) => (idx === null || idx === undefined ? "" : fmt(raw[gi][idx])),
      })));
      const opts = {
        width: Math.max(200, el.clientWidth),
        height: 220,
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
        series,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
        axes: [
          { stroke: fg, grid: { stroke: grid }, ticks: { stroke: grid } },
          { stroke: fg, grid: { stroke: grid }, ticks: { stroke: grid }, values: (u, vals) => vals.map(fmt), size: axisWidth },
        ],
        legend: { live: true },
        cursor: { points: { show: false } },
      };
      const columns = [data.series.time].concat(order.map((gi) => stacked[gi]));
      charts.push(new uPlot(opts, columns, el));
      el.setAttribute("aria-label", el.parentElement.querySelector("figcaption").textContent + " per " + (hourly ? "hour" : "day") +
        ", stacked by " + stack + ": " + gs.map((g, i) => g.name + " " + fmt(raw[i].reduce((a, b) => a + b, 0))).join(", "));
    }
  }

  // Wide enough for the longest tick label (small costs have many digits), measured in the axis font.
  function axisWidth(u, values) {
    if (!values) return 40;
    const ctx = u.ctx;
    ctx.save();
    ctx.font = u.axes[1].font[0];
    const widest = Math.max(...values.map((v) => ctx.measureText(v).width));
    ctx.restore();
    return Math.ceil(widest / devicePixelRatio) + 18;
  }

  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const c of charts) c.setSize({ width: Math.max(200, c.root.parentElement.clientWidth), height: 220 });
    }, 100);
  });
  // The chart colours follow the scheme: draw again when it changes.
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    if (lastData) drawCharts(lastData, $("stack").value);
  });

  $("sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key").value.trim();
    $("key").value = "";
    if (!key) return;
    $("sign-in-error").hidden = true;
    load(key);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("filters").addEventListener("change", (e) => {
    const key = sessionStorage.getItem(storageKey);
    if (!key) return;
    if (e.target.id === "stack" && lastData) {
      drawCharts(lastData, $("stack").value);
      return;
    }
    load(key);
  });

  const saved = sessionStorage.getItem(storageKey);
  if (saved) load(saved);
  else showSignIn("");
})();
