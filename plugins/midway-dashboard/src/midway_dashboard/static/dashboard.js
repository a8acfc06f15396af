/* midway dashboard: renders each page from the JSON endpoints under /_midway/api/.
 * No framework and no build step; charts are uPlot (vendored). Data is always inserted as text
 * (never as HTML): audit records hold prompts and answers written by anyone. */
(() => {
  "use strict";

  const PREFIX = "/_midway";
  const body = document.body;
  const page = body.dataset.page;
  const refreshMs = Math.max(500, Number(body.dataset.refresh) || 2000);
  const content = document.getElementById("content");
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777",
                  "#65a30d", "#4b5563", "#ea580c"];

  // -- small helpers ----------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function pick(obj, ...names) {
    for (const name of names) {
      if (obj && obj[name] !== undefined && obj[name] !== null) return obj[name];
    }
    return undefined;
  }

  const fmt = {
    num(v, digits = 0) {
      if (v === undefined || v === null || Number.isNaN(Number(v))) return "–";
      return Number(v).toLocaleString("en-US", {maximumFractionDigits: digits,
                                                minimumFractionDigits: digits});
    },
    ms(v) {
      if (v === undefined || v === null) return "–";
      return v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms";
    },
    usd(v) {
      if (v === undefined || v === null || v === "") return "–";
      const n = Number(v);
      return "$" + (Math.abs(n) < 1 && n !== 0 ? n.toFixed(4) : n.toFixed(2));
    },
    pct(v) {
      return v === undefined || v === null ? "–" : (v * 100).toFixed(1) + " %";
    },
    bytes(v) {
      if (v === undefined || v === null) return "–";
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let n = Number(v), i = 0;
      while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
      return n.toFixed(i ? 1 : 0) + " " + units[i];
    },
    time(v) {
      const t = toEpoch(v);
      return t === null ? "–" : new Date(t * 1000).toLocaleString("sv-SE");
    },
  };

  // Seconds since the epoch from a number (s or ms) or an ISO date string.
  function toEpoch(v) {
    if (v === undefined || v === null || v === "") return null;
    if (typeof v === "number") return v > 1e12 ? v / 1000 : v;
    const n = Number(v);
    if (!Number.isNaN(n)) return n > 1e12 ? n / 1000 : n;
    const parsed = Date.parse(v);
    return Number.isNaN(parsed) ? null : parsed / 1000;
  }

  async function getJSON(path) {
    const response = await fetch(PREFIX + path, {credentials: "same-origin",
                                                 headers: {accept: "application/json"}});
    if (response.status === 401) {
      window.location.assign(PREFIX + "/login?next=" + encodeURIComponent(location.pathname));
      throw new Error("not logged in");
    }
    const data = await response.json();
    if (!response.ok && !("installed" in data)) {
      throw new Error((data.error && data.error.message) || response.statusText);
    }
    return data;
  }

  function section(title, id, ...children) {
    return el("section", {class: "panel", id}, el("h2", {text: title}), ...children);
  }

  function card(label, value, id, extra) {
    return el("div", {class: "card", id, dataset: {metric: id}},
              el("div", {class: "label", text: label}),
              el("div", {class: "value", text: value}),
              extra ? el("div", {class: "extra", text: extra}) : null);
  }

  function table(columns, rows, options = {}) {
    const head = el("tr", {}, columns.map((c) => el("th", {text: c.label, class: c.num ? "num" : ""})));
    const bodyRows = rows.map((row) => el("tr", {class: options.rowClass ? options.rowClass(row) : ""},
      columns.map((c) => {
        const value = c.value(row);
        return el("td", {class: c.num ? "num" : ""}, value instanceof Node ? value : String(value ?? "–"));
      })));
    if (!rows.length) {
      bodyRows.push(el("tr", {}, el("td", {colspan: String(columns.length), class: "empty",
                                           text: options.empty || "Nothing yet."})));
    }
    return el("table", {class: options.class || ""}, el("thead", {}, head), el("tbody", {}, bodyRows));
  }

  function notInstalled(data, what) {
    // The server words the notice: not installed, installed but not loaded, failed to load.
    const lines = [el("strong", {text: data.notice || `${data.package} is not available.`}),
                   el("div", {class: "extra", text: `${what} appears here once it is on.`})];
    return el("div", {class: "notice not-installed", role: "status", dataset: {state: data.state || ""}},
              lines);
  }

  function failure(message) {
    return el("div", {class: "notice error", role: "alert", text: message});
  }

  function replace(node, ...children) {
    node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  }

  // -- charts ---------------------------------------------------------------------------------

  const charts = new Map();

  // Draw or update a time chart in `holder`; series = [{label, color, values, dash, axis}].
  function timeChart(holder, key, xs, series, options = {}) {
    const width = Math.max(300, holder.clientWidth || 600);
    const signature = series.map((s) => s.label).join("|") + "|" + width;
    let entry = charts.get(key);
    const data = [xs, ...series.map((s) => s.values)];
    if (entry && entry.signature === signature && entry.holder === holder) {
      entry.plot.setData(data);
      return entry.plot;
    }
    if (entry) entry.plot.destroy();
    const plot = new uPlot({
      width, height: options.height || 220,
      scales: {x: {time: true}, y: {range: (u, min, max) => [Math.min(0, min), Math.max(max * 1.1, options.minMax || 1)]}},
      axes: [{}, {label: options.yLabel || "", size: 60, values: options.yFormat
        ? (u, vals) => vals.map(options.yFormat) : undefined}],
      legend: {show: true},
      series: [{}, ...series.map((s, i) => ({
        label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: s.width || 2,
        dash: s.dash, spanGaps: s.spanGaps !== false, points: {show: s.points || xs.length < 3, size: 7},
        value: options.yFormat ? (u, v) => (v === null || v === undefined ? "–" : options.yFormat(v)) : undefined,
      }))],
    }, data, holder);
    charts.set(key, {plot, signature, holder});
    return plot;
  }

  function chartBox(id) {
    return el("div", {class: "chart", id});
  }

  // -- pages ----------------------------------------------------------------------------------

  function poll(fn, every) {
    let timer = null;
    const run = async () => {
      try { await fn(); } catch (err) { console.error(err); }
      timer = setTimeout(run, every);
    };
    run();
    return () => clearTimeout(timer);
  }

  const pages = {};

  const PLUGIN_STATES = {"not-installed": "not installed", "not-loaded": "installed, not loaded",
                         "failed": "failed to load", "no-service": "loaded, no service"};

  pages.traffic = () => {
    const cards = el("div", {class: "cards", id: "traffic-cards"});
    const rate = chartBox("chart-rate");
    const latency = chartBox("chart-latency");
    const breakdown = el("div", {class: "columns", id: "traffic-breakdown"});
    const errors = el("div", {id: "recent-errors"});
    const plugins = el("div", {class: "plugins", id: "plugin-status"});
    const updated = el("p", {class: "updated", id: "updated"});
    replace(content, cards, updated,
            section("Requests per second", "panel-rate", rate),
            section("Latency", "panel-latency", latency),
            breakdown, section("Recent errors", "panel-errors", errors),
            section("Plugins", "panel-plugins", plugins));

    getJSON("/api/status").then((status) => {
      replace(plugins, Object.entries(status.panels).map(([name, info]) =>
        el("div", {class: "plugin " + (info.installed ? "on" : "off"), dataset: {plugin: name}},
           el("strong", {text: info.package}), " ",
           info.installed ? "on" : (PLUGIN_STATES[info.state] || "not available"))));
    }).catch((err) => replace(plugins, failure(err.message)));

    return poll(async () => {
      const d = await getJSON("/api/traffic");
      const lat = d.latency_ms, ttfb = d.ttfb_ms;
      replace(cards,
        card("Requests/s (1 min)", fmt.num(d.rps, 2), "rps", `${fmt.num(d.requests)} requests · ${fmt.num(d.total)} since start` +
             (d.workers > 1 ? ` · ${fmt.num(d.total_all_workers)} on all workers` : "")),
        card("Latency p50", fmt.ms(lat.p50), "p50", `TTFB p50 ${fmt.ms(ttfb.p50)}`),
        card("Latency p95", fmt.ms(lat.p95), "p95", `TTFB p95 ${fmt.ms(ttfb.p95)}`),
        card("Latency p99", fmt.ms(lat.p99), "p99", `max ${fmt.ms(lat.max)}`),
        card("Errors (1 min)", fmt.num(d.errors), "errors",
             d.requests ? fmt.pct(d.errors / d.requests) + " of requests" : "no requests"),
        card("Streams open", fmt.num(d.open_streams), "open-streams", `${fmt.num(d.in_flight)} requests in flight` +
             (d.workers > 1 ? ` · all ${d.workers} workers` : "")),
        card("Tokens (1 min)", fmt.num(d.tokens.input + d.tokens.output), "tokens",
             `${fmt.num(d.tokens.input)} in · ${fmt.num(d.tokens.output)} out`),
        card("Cost (1 min)", fmt.usd(d.cost_usd), "cost", "from midway-billing"));
      updated.textContent = `Updated ${new Date(d.now * 1000).toLocaleTimeString("sv-SE")} · ` +
        `rates and latency of worker ${d.worker} · ${d.bucket_seconds} s buckets`;
      const s = d.series;
      timeChart(rate, "rate", s.t, [
        {label: "requests/s", values: s.rps, color: COLORS[0]},
        {label: "errors/s", values: s.errors_per_s, color: COLORS[1]}],
        {yFormat: (v) => v.toFixed(2)});
      timeChart(latency, "latency", s.t, [
        {label: "p50", values: s.p50_ms, color: COLORS[2], points: true},
        {label: "p95", values: s.p95_ms, color: COLORS[3], points: true},
        {label: "p99", values: s.p99_ms, color: COLORS[1], points: true}],
        {yFormat: (v) => fmt.ms(v), minMax: 10});
      replace(breakdown,
        section("By status (1 min)", "panel-status", table(
          [{label: "status", value: (r) => r[0]}, {label: "requests", num: true, value: (r) => fmt.num(r[1])}],
          Object.entries(d.by_status))),
        section("By model (1 min)", "panel-models", table(
          [{label: "model", value: (r) => r[0]}, {label: "requests", num: true, value: (r) => fmt.num(r[1])}],
          Object.entries(d.by_model))));
      replace(errors, table([
        {label: "time", value: (r) => fmt.time(r.t)},
        {label: "status", value: (r) => r.status},
        {label: "error", value: (r) => r.error_type || ""},
        {label: "model", value: (r) => r.model || ""},
        {label: "principal", value: (r) => r.principal},
        {label: "request", value: (r) => requestLink(r.id)}],
        d.recent_errors, {empty: "No errors in the window."}));
    }, refreshMs);
  };

  function requestLink(id) {
    return el("a", {href: `${PREFIX}/requests/${encodeURIComponent(id)}`, text: id});
  }

  pages.spend = () => {
    const state = {by: "team", bucket: "hour", mode: "cumulative"};
    const select = (name, options) => el("label", {}, name + " ",
      el("select", {name, onchange: (e) => { state[name] = e.target.value; refresh(); }},
         options.map((o) => el("option", {value: o, text: o, selected: state[name] === o}))));
    const controls = el("form", {class: "controls", onsubmit: (e) => e.preventDefault()},
      select("by", ["team", "project", "model", "principal"]), select("bucket", ["hour", "day"]),
      select("mode", ["cumulative", "per bucket"]));
    const holder = el("div", {id: "spend-body"});
    replace(content, controls, holder);
    let last = null;

    async function refresh() {
      const d = await getJSON(`/api/spend?by=${state.by}&bucket=${state.bucket}`);
      d.sessions = await getJSON(`/api/sessions?bucket=${state.bucket}`);
      last = d;
      render(d);
    }

    // Cost per Claude Code session, each with its subagent tree (own and subtree cost).
    function sessionsPanel(s) {
      if (!s || !s.installed || s.error) return null;
      const rows = [];
      for (const session of s.sessions) {
        for (const a of session.agents) rows.push({...a, session: session.session_id});
      }
      const more = s.more_sessions ? " (cheaper sessions not shown)" : "";
      return section(`Cost per session and subagent tree since ${fmt.time(s.since)}${more}`,
        "panel-sessions", table([
          {label: "session", value: (r) => r.depth !== 0 ? "" :
            (r.session === null || r.session === undefined ? "(no session)" : sessionLink(r.session))},
          {label: "agent", value: (r) => "\u00a0\u00a0".repeat(r.depth) + r.agent_id},
          {label: "requests", num: true, value: (r) => fmt.num(r.requests)},
          {label: "own cost", num: true, value: (r) => fmt.usd(r.own_cost_usd)},
          {label: "subtree cost", num: true, value: (r) => fmt.usd(r.subtree_cost_usd)}],
          rows, {empty: "No session named by x-claude-code-session-id in this range."}));
    }

    function render(d) {
      if (!d.installed) return replace(holder, notInstalled(d, "Spend over time"));
      if (d.error) return replace(holder, failure(d.error));
      const chart = chartBox("chart-spend");
      const keys = [...new Set(d.series.map((r) => String(pick(r, "key") ?? "-")))];
      // Every bucket from `since` to now, so quiet hours show as zero instead of vanishing.
      const step = d.bucket === "day" ? 86400 : 3600;
      const grid = [];
      for (let t = Math.floor(toEpoch(d.since) / step) * step; t <= Date.now() / 1000; t += step) grid.push(t);
      const times = [...new Set([...grid, ...d.series.map((r) => toEpoch(r.t))])].sort((a, b) => a - b);
      const index = new Map(times.map((t, i) => [t, i]));
      const series = keys.map((key, i) => {
        const values = times.map(() => 0);
        for (const row of d.series) {
          if (String(pick(row, "key") ?? "-") === key) values[index.get(toEpoch(row.t))] += Number(row.cost_usd) || 0;
        }
        if (state.mode === "cumulative") {
          for (let j = 1; j < values.length; j++) values[j] += values[j - 1];
        }
        return {label: key, values, color: COLORS[i % COLORS.length]};
      });
      // Budgets as horizontal lines: those set on the dimension shown, or a global one.
      const budgets = d.budgets.filter((b) => {
        const scope = pick(b, "scope");
        return scope === undefined || scope === state.by || scope === "all";
      });
      budgets.forEach((b, i) => {
        const limit = Number(pick(b, "limit_usd", "limit", "amount_usd", "usd"));
        if (!Number.isFinite(limit)) return;
        series.push({label: `budget ${pick(b, "value", "name") ?? ""} (${pick(b, "period") ?? ""})`,
                     values: times.map(() => limit), dash: [6, 4], width: 1.5,
                     color: COLORS[(keys.length + i) % COLORS.length]});
      });
      const report = section(`Spend by ${d.by} since ${fmt.time(d.since)}`, "panel-spend-report", table([
        {label: d.by, value: (r) => pick(r, "key", d.by, "name") ?? "-"},
        {label: "requests", num: true, value: (r) => fmt.num(pick(r, "requests", "count"))},
        {label: "input tokens", num: true, value: (r) => fmt.num(pick(r, "input_tokens"))},
        {label: "output tokens", num: true, value: (r) => fmt.num(pick(r, "output_tokens"))},
        {label: "cache hits", num: true, value: (r) => fmt.num(pick(r, "cache_hits"))},
        {label: "saved", num: true, value: (r) => fmt.usd(pick(r, "saved_usd"))},
        {label: "cost", num: true, value: (r) => fmt.usd(pick(r, "cost_usd"))},
        {label: "unpriced", num: true, value: (r) => fmt.num(pick(r, "unpriced"))}],
        d.report, {empty: "No spend recorded in this range."}));
      // Requests on models the price catalogue does not list: billed by its unknown-model rule.
      const unpriced = d.report.reduce((n, r) => n + (Number(pick(r, "unpriced")) || 0), 0);
      if (unpriced && d.pricing) {
        const models = (d.pricing.unknown_models || []).join(", ");
        report.children[0].after(el("div", {class: "notice unpriced", role: "status", text:
          `${unpriced} request(s) used models price catalogue ${d.pricing.version} does not list` +
          `${models ? ` (${models})` : ""}: billed at the unknown-model rate ` +
          `(${d.pricing.unknown_rule}), not their real price.`}));
      }
      const budgetTable = section("Budgets", "panel-budgets", table([
        {label: "budget", value: (b) => pick(b, "name") ?? "-"},
        {label: "scope", value: (b) => `${pick(b, "scope") ?? "-"} = ${pick(b, "value") ?? "*"}`},
        {label: "period", value: (b) => pick(b, "period") ?? "-"},
        {label: "mode", value: (b) => pick(b, "mode") ?? "-"},
        {label: "limit", num: true, value: (b) => fmt.usd(pick(b, "limit_usd"))},
        {label: "spent", num: true, value: (b) => fmt.usd(pick(b, "spent_usd"))},
        {label: "reserved", num: true, value: (b) => fmt.usd(pick(b, "reserved_usd"))},
        {label: "used", num: true, value: (b) => {
          const limit = Number(pick(b, "limit_usd")), spent = Number(pick(b, "spent_usd"));
          return limit > 0 && Number.isFinite(spent) ? fmt.pct(spent / limit) : "–";
        }},
        {label: "resets", value: (b) => fmt.time(pick(b, "resets_at"))}], d.budgets, {empty: "No budgets configured.",
          rowClass: (b) => Number(pick(b, "spent_usd")) >= Number(pick(b, "limit_usd")) ? "over" : ""}));
      // Message Batches whose estimate is still reserved on the budgets above.
      const batchTable = d.batches && d.batches.length ? section(
        "Batches holding budget (priced as their results are fetched through midway)", "panel-batches",
        table([
          {label: "batch", value: (b) => b.batch_id},
          {label: "submitted", value: (b) => fmt.time(b.submitted_at)},
          {label: "by", value: (b) => b.principal_name ?? b.principal ?? "-"},
          {label: "team", value: (b) => b.team ?? "-"},
          {label: "held", num: true, value: (b) => fmt.usd(b.held_usd)},
          {label: "charged", num: true, value: (b) => fmt.usd(b.charged_usd)},
          {label: "results", num: true, value: (b) => fmt.num(b.results)}], d.batches),
        el("p", {class: "hint", text: "A batch whose results are read elsewhere keeps its hold: " +
          "release it with `midway billing release-batch BATCH_ID`."})) : null;
      replace(holder, section(`Spend per ${d.bucket} by ${d.by} (${state.mode}, USD)`, "panel-spend-chart", chart),
              report, budgetTable, ...[batchTable, sessionsPanel(d.sessions)].filter(Boolean));
      if (times.length) {
        timeChart(chart, "spend", times, series, {yFormat: (v) => fmt.usd(v), minMax: 0.01});
      } else {
        charts.delete("spend");
        chart.append(el("p", {class: "empty", text: "No spend recorded in this range."}));
      }
    }
    return poll(refresh, Math.max(refreshMs, 15000));
  };

  pages.cache = () => {
    const holder = el("div", {id: "cache-body"});
    replace(content, holder);
    const chart = chartBox("chart-cache");
    let built = false;
    return poll(async () => {
      const d = await getJSON("/api/cache");
      if (!d.installed) return replace(holder, notInstalled(d, "Cache hit rate and saved cost"));
      if (d.error) return replace(holder, failure(d.error));
      const s = d.stats;
      const cards = el("div", {class: "cards", id: "cache-cards"},
        card("Hit rate", fmt.pct(d.hit_rate), "hit-rate", `${fmt.num(s.hits)} hits · ${fmt.num(s.misses)} misses` +
             (s.semantic_hits ? ` · ${fmt.num(s.semantic_hits)} semantic` : "")),
        card("Saved", fmt.usd(s.saved_usd), "saved-usd", `${fmt.num(s.saved_tokens)} tokens not sent upstream`),
        card("Entries", fmt.num(s.entries), "entries", fmt.bytes(s.bytes)));
      const outcomes = section("Outcomes in the window", "panel-cache-outcomes", table(
        [{label: "outcome", value: (r) => r[0]}, {label: "requests", num: true, value: (r) => fmt.num(r[1])}],
        Object.entries(d.window.outcomes)));
      if (!built) {
        replace(holder, cards, section("Hit rate over time (this process)", "panel-cache-chart", chart), outcomes);
        built = true;
      } else {
        holder.replaceChild(cards, holder.querySelector("#cache-cards"));
        holder.replaceChild(outcomes, holder.querySelector("#panel-cache-outcomes"));
      }
      timeChart(chart, "cache", d.window.t, [{label: "hit rate", values: d.window.hit_rate, color: COLORS[2], points: true}],
                {yFormat: (v) => fmt.pct(v), minMax: 1});
    }, Math.max(refreshMs, 5000));
  };

  pages.upstreams = () => {
    const router = el("div", {id: "router-status"});
    const seen = el("div", {id: "upstream-window"});
    replace(content, section("Upstreams and keys (midway-router)", "panel-router", router),
            section("What this process saw (5 min)", "panel-upstream-window", seen));
    return poll(async () => {
      const d = await getJSON("/api/upstreams");
      if (!d.installed) replace(router, notInstalled(d, "Upstream and key health"));
      else if (d.error) replace(router, failure(d.error));
      else replace(router, genericTable(d.status, {empty: "No upstreams reported.",
        rowClass: (r) => healthClass(pick(r, "health", "healthy", "state", "status"))}));
      replace(seen, table([
        {label: "upstream", value: (r) => r.upstream},
        {label: "key", value: (r) => r.key_id || "client's own"},
        {label: "requests", num: true, value: (r) => fmt.num(r.requests)},
        {label: "errors", num: true, value: (r) => fmt.num(r.errors)},
        {label: "p50", num: true, value: (r) => fmt.ms(r.latency_ms.p50)},
        {label: "p95", num: true, value: (r) => fmt.ms(r.latency_ms.p95)},
        {label: "last status", num: true, value: (r) => r.last_status},
        {label: "last seen", value: (r) => fmt.time(r.last_t)}], d.window,
        {empty: "No upstream traffic in the last 5 minutes."}));
    }, Math.max(refreshMs, 5000));
  };

  function healthClass(value) {
    if (value === true || value === "healthy" || value === "ok" || value === "up") return "healthy";
    if (value === false || value === "unhealthy" || value === "down" || value === "resting" ||
        value === "rate_limited" || value === "failing") return "unhealthy";
    return "";
  }

  // A table of whatever keys the rows carry (for services whose rows may grow new fields).
  function genericTable(rows, options) {
    const columns = [];
    for (const row of rows) {
      for (const key of Object.keys(row)) if (!columns.includes(key)) columns.push(key);
    }
    return table(columns.map((key) => ({
      label: key.replaceAll("_", " "),
      value: (r) => cell(key, r[key]),
    })), rows, options);
  }

  function cell(key, value) {
    if (value === undefined || value === null) return "–";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (Array.isArray(value)) return value.length ? el("code", {text: JSON.stringify(value)}) : "–";
    if (typeof value === "object") {
      const entries = Object.entries(value);
      return entries.length ? entries.map(([k, v]) => `${k}: ${v}`).join(" · ") : "–";
    }
    if (/(_until|_at|^t|time|^last_)/.test(key) && toEpoch(value) > 1e9) return fmt.time(value);
    if (/usd|cost/.test(key)) return fmt.usd(value);
    return String(value);
  }

  pages.requests = () => {
    const params = new URLSearchParams(location.search);
    const field = (name, label, extra) => el("label", {}, label + " ",
      el("input", {name, value: params.get(name) || "", ...extra}));
    const form = el("form", {class: "controls", id: "search", method: "get"},
      field("text", "Text", {type: "search", placeholder: "words in prompts and answers"}),
      field("principal", "Principal"), field("model", "Model"),
      field("status", "Status", {size: "5", placeholder: "200, 4xx, error"}),
      el("label", {}, "Since ", el("select", {name: "since"},
        ["", "15m", "1h", "24h", "7d", "30d"].map((v) => el("option", {value: v, text: v || "any time",
                                                                        selected: params.get("since") === v})))),
      el("button", {type: "submit", text: "Search"}));
    const results = el("div", {id: "results"});
    replace(content, form, results);
    const query = new URLSearchParams();
    for (const [k, v] of params) if (v) query.set(k, v);
    getJSON("/api/requests?" + query.toString()).then((d) => {
      if (!d.installed) {
        return replace(results, notInstalled(d, "The searchable request list with each audit record"),
          section("Recent requests seen by this process (no bodies without audit)", "panel-recent",
            table(recentColumns(), d.recent || [])));
      }
      if (d.error) return replace(results, failure(d.error));
      replace(results, section(`${d.rows.length} request(s), newest first`, "panel-requests", table([
        {label: "time", value: (r) => fmt.time(pick(r, "ts", "time"))},
        {label: "request", value: (r) => requestLink(pick(r, "id", "request_id"))},
        {label: "principal", value: (r) => pick(r, "principal_name", "principal") ?? "–"},
        {label: "team", value: (r) => pick(r, "team") ?? ""},
        {label: "model", value: (r) => pick(r, "model") ?? "–"},
        {label: "status", num: true, value: (r) => pick(r, "status") ?? "–"},
        {label: "stream", value: (r) => (r.streaming ? "yes" : "")},
        {label: "duration", num: true, value: (r) => fmt.ms(pick(r, "total_ms", "duration_ms"))},
        {label: "tokens in/out", num: true, value: (r) => `${fmt.num(pick(r.usage, "input_tokens"))} / ${fmt.num(pick(r.usage, "output_tokens"))}`},
        {label: "cache", value: (r) => pick(r, "cache") ?? ""},
        {label: "cost", num: true, value: (r) => fmt.usd(pick(r, "cost_usd"))}],
        d.rows, {empty: "No request matches.", class: "requests"})));
    }).catch((err) => replace(results, failure(err.message)));
  };

  function recentColumns() {
    return [
      {label: "time", value: (r) => fmt.time(r.t)}, {label: "request", value: (r) => r.id},
      {label: "principal", value: (r) => r.principal}, {label: "model", value: (r) => r.model || "–"},
      {label: "status", num: true, value: (r) => r.status},
      {label: "duration", num: true, value: (r) => fmt.ms(r.duration_ms)}];
  }

  pages.request = () => {
    const id = body.dataset.requestId;
    replace(content, el("p", {}, el("a", {href: `${PREFIX}/requests`, text: "← all requests"})),
            el("div", {id: "record"}, "Loading…"));
    const holder = document.getElementById("record");
    getJSON("/api/requests/" + encodeURIComponent(id)).then((d) => {
      if (!d.installed) return replace(holder, notInstalled(d, "The audit record of a request"));
      if (d.error) return replace(holder, failure(d.error));
      replace(holder, renderRecord(d.record));
    }).catch((err) => replace(holder, failure(err.message)));
  };

  // Audit keeps bodies as (redacted) text; the response body of a stream is the message that
  // audit reassembled from its events.
  function parseBody(text) {
    if (text === null || text === undefined) return null;
    if (typeof text !== "string") return text;
    try { return JSON.parse(text); } catch (err) { return text; }
  }

  function answerText(message) {
    if (!message || typeof message !== "object" || !Array.isArray(message.content)) {
      return typeof message === "string" ? message : null;
    }
    return message.content.map((block) => {
      if (block.type === "text") return block.text;
      if (block.type === "thinking") return `[thinking]\n${block.thinking}`;
      if (block.type === "tool_use") return `[tool_use ${block.name}] ${JSON.stringify(block.input)}`;
      return `[${block.type}]`;
    }).join("\n\n");
  }

  function promptLines(request) {
    if (!request || typeof request !== "object" || !Array.isArray(request.messages)) return [];
    return request.messages.map((m) => {
      const text = typeof m.content === "string" ? m.content
        : (m.content || []).map((b) => b.text ?? `[${b.type}]`).join("\n");
      return el("div", {class: "message"}, el("strong", {text: m.role + ": "}), text);
    });
  }

  const SECTION_KEYS = ["request_body", "response_body", "request_headers", "attempts",
                        "annotations", "usage"];

  function renderRecord(record) {
    const request = parseBody(record.request_body);
    const response = parseBody(record.response_body);
    const answer = answerText(response);
    const facts = Object.entries(record).filter(([k, v]) =>
      !SECTION_KEYS.includes(k) && (v === null || typeof v !== "object"));
    const usage = record.usage || {};
    return [
      section("Answer", "panel-answer", el("pre", {class: "answer", id: "answer",
        text: answer ?? (record.bodies === false ? "(bodies are not recorded)" : "(no answer recorded)")})),
      section("Prompt", "panel-prompt", el("div", {id: "prompt"}, promptLines(request))),
      section("Details", "panel-facts", el("dl", {class: "facts"},
        facts.map(([k, v]) => [el("dt", {text: k.replaceAll("_", " ")}), el("dd", {}, cell(k, v))]))),
      section("Usage", "panel-usage", el("dl", {class: "facts"},
        Object.entries(usage).map(([k, v]) => [el("dt", {text: k.replaceAll("_", " ")}), el("dd", {text: fmt.num(v)})]))),
      ...["attempts", "annotations", "request_headers"].filter((k) => record[k]).map((k) =>
        section(k.replaceAll("_", " "), "panel-" + k,
                el("pre", {class: "json", text: JSON.stringify(record[k], null, 2)}))),
      el("details", {class: "panel"}, el("summary", {text: "Raw request body"}),
         el("pre", {class: "json", text: typeof request === "string" ? request : JSON.stringify(request, null, 2)})),
      el("details", {class: "panel"}, el("summary", {text: "Raw response body"}),
         el("pre", {class: "json", text: typeof response === "string" ? response : JSON.stringify(response, null, 2)})),
    ];
  }

  // -- Claude Code sessions (midway-billing) ------------------------------------------------

  function sessionLink(id) {
    return el("a", {href: `${PREFIX}/sessions/${encodeURIComponent(id)}`, text: id});
  }

  function tokensOf(r) {
    return (Number(r.input_tokens) || 0) + (Number(r.output_tokens) || 0) +
      (Number(r.cache_read_tokens) || 0) + (Number(r.cache_write_5m_tokens) || 0) +
      (Number(r.cache_write_1h_tokens) || 0);
  }

  function seconds(v) {
    if (v === undefined || v === null) return "–";
    return v >= 120 ? `${(v / 60).toFixed(1)} min` : `${Number(v).toFixed(1)} s`;
  }

  pages.sessions = () => {
    const params = new URLSearchParams(location.search);
    const field = (name, label) => el("label", {}, label + " ",
      el("input", {name, value: params.get(name) || ""}));
    const since = params.get("since") || "7d";
    const form = el("form", {class: "controls", id: "session-search", method: "get"},
      field("principal", "Principal"), field("team", "Team"),
      el("label", {}, "Begun within ", el("select", {name: "since"},
        ["1h", "24h", "7d", "30d"].map((v) => el("option", {value: v, text: v, selected: since === v})))),
      el("button", {type: "submit", text: "Show"}));
    const results = el("div", {id: "sessions"});
    replace(content, form, results);
    const query = new URLSearchParams({since});
    for (const k of ["principal", "team"]) if (params.get(k)) query.set(k, params.get(k));
    return poll(async () => {
      const d = await getJSON("/api/claude-sessions?" + query.toString());
      if (!d.installed) return replace(results, notInstalled(d, "Claude Code sessions"));
      if (d.error) return replace(results, failure(d.error));
      replace(results, section(`${d.sessions.length}${d.more ? "+" : ""} session(s) begun since ${fmt.time(d.since)}, latest first`,
        "panel-session-list", table([
          {label: "session", value: (r) => sessionLink(r.session_id)},
          {label: "user", value: (r) => (r.principal_name || r.principal) + (r.principals > 1 ? ` (+${r.principals - 1})` : "")},
          {label: "team", value: (r) => r.team ?? ""},
          {label: "start", value: (r) => fmt.time(r.started_at)},
          {label: "duration", num: true, value: (r) => seconds(r.duration_s)},
          {label: "turns", num: true, value: (r) => fmt.num(r.turns)},
          {label: "subagents", num: true, value: (r) => fmt.num(r.agents)},
          {label: "tokens", num: true, value: (r) => fmt.num(tokensOf(r))},
          {label: "cost", num: true, value: (r) => fmt.usd(r.cost_usd)},
          {label: "cache read", num: true, value: (r) => fmt.pct(r.cache_read_share)},
          {label: "errors", num: true, value: (r) => fmt.num(r.errors)}],
          d.sessions, {class: "sessions", empty: "No request named a session (x-claude-code-session-id) in this range.",
                       rowClass: (r) => (r.errors ? "turn-error" : "")})));
    }, Math.max(refreshMs, 15000));
  };

  pages.session = () => {
    const id = body.dataset.sessionId;
    replace(content, el("p", {}, el("a", {href: `${PREFIX}/sessions`, text: "← all sessions"})),
            el("div", {id: "session"}, "Loading…"));
    const holder = document.getElementById("session");
    getJSON("/api/claude-sessions/" + encodeURIComponent(id)).then((d) => {
      if (!d.installed) return replace(holder, notInstalled(d, "A Claude Code session"));
      if (d.error) return replace(holder, failure(d.error));
      replace(holder, renderSession(d.session, d.audit));
    }).catch((err) => replace(holder, failure(err.message)));
  };

  function renderSession(s, audit) {
    const breaks = s.timeline.filter((t) => t.cache_break);
    const cards = el("div", {class: "cards", id: "session-cards"},
      card("Session", s.session_id, "session-id", `${s.principal_name || s.principal}` +
           (s.team ? ` · team ${s.team}` : "") + (s.principals > 1 ? ` · ${s.principals} principals` : "")),
      card("Turns", fmt.num(s.turns), "turns", `${fmt.num(s.agents)} subagent(s)`),
      card("Cost", fmt.usd(s.cost_usd), "cost", `${fmt.num(tokensOf(s))} tokens`),
      card("Duration", seconds(s.duration_s), "duration", `from ${fmt.time(s.started_at)}`),
      card("Cache read", fmt.pct(s.cache_read_share), "cache-read", "share of the prompt read from the cache"),
      card("Cache breaks", fmt.num(s.cache_breaks), "cache-breaks", `${fmt.num(s.errors)} error(s)`));
    const agentIds = s.subagents.filter((a) => a.depth > 0);
    const agents = section("Subagents", "panel-subagents", table([
      {label: "agent", value: (a) => "\u00a0\u00a0".repeat(a.depth) + a.agent_id},
      {label: "requests", num: true, value: (a) => fmt.num(a.requests)},
      {label: "own cost", num: true, value: (a) => fmt.usd(a.own_cost_usd)},
      {label: "with its subagents", num: true, value: (a) => fmt.usd(a.subtree_cost_usd)}],
      s.subagents, {class: "subagents", empty: "No subagent."}));
    if (!agentIds.length) agents.append(el("p", {class: "empty", text: "This session spawned no subagent."}));
    const breakList = section("Where prompt caching broke", "panel-cache-breaks", table([
      {label: "turn", num: true, value: (t) => t.turn},
      {label: "agent", value: (t) => t.agent_id || "(main)"},
      {label: "cause", value: (t) => el("span", {class: "cause", text: t.cache_break.cause})},
      {label: "what changed", value: (t) => t.cache_break.detail},
      {label: "tokens not read", num: true, value: (t) => fmt.num(t.cache_break.lost_tokens)}],
      breaks, {class: "cache-breaks", empty: "Caching held: no turn read less from the cache than the one before left there."}));
    const turns = section("Turns in order", "panel-turns", table([
      {label: "#", num: true, value: (t) => t.turn},
      {label: "at", num: true, value: (t) => "+" + seconds(t.offset_s)},
      {label: "agent", value: (t) => t.agent_id || "(main)"},
      {label: "model", value: (t) => t.model ?? "–"},
      {label: "status", num: true, value: (t) => t.status ?? (t.pending ? "…" : "–")},
      {label: "input", num: true, value: (t) => fmt.num(t.input_tokens)},
      {label: "cache read", num: true, value: (t) => fmt.num(t.cache_read_tokens)},
      {label: "cache write", num: true, value: (t) => fmt.num(t.cache_write_5m_tokens + t.cache_write_1h_tokens)},
      {label: "output", num: true, value: (t) => fmt.num(t.output_tokens)},
      {label: "cost", num: true, value: (t) => fmt.usd(t.cost_usd)},
      {label: "cache", value: (t) => t.cache_break ? el("span", {class: "cause", text: `broke: ${t.cache_break.cause}`})
        : fmt.pct(t.cache_read_share)},
      {label: "request", value: (t) => audit ? requestLink(t.exchange_id) : t.exchange_id}],
      s.timeline, {class: "turns", rowClass: (t) => (t.cache_break ? "cache-break" : !t.ok ? "turn-error" : "")}));
    const more = s.truncated ? el("div", {class: "notice", role: "status", text: "The session is longer: its first turns are shown."}) : null;
    return [cards, breakList, agents, turns, more].filter(Boolean);
  }

  if (pages[page]) pages[page]();
})();
