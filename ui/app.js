// kpiwatch web UI: a single page with hash routing, no build step.
// Routes: #/  #/kpi/<id>  #/alerts  #/new
"use strict";

(() => {
  const TOKEN_KEY = "kpiwatch.token";
  const NAME_KEY = "kpiwatch.name";
  const app = document.getElementById("app");
  let routeSeq = 0; // increments on every navigation; stale async work checks it
  let cleanup = []; // functions to run when leaving a page

  // ---------- small helpers ----------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "style") el.style.cssText = v; // CSSOM: allowed under a strict CSP
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  // Replace an element's children, skipping null/false (like h()).
  function put(el, ...children) {
    el.replaceChildren(...children.flat().filter((c) => c != null && c !== false).map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const token = localStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ApiError(0, `kpiwatch is not reachable (${e.message})`);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (!res.ok) {
      const msg = (data && data.error) || text || res.statusText || `HTTP ${res.status}`;
      if (res.status === 401) showTokenBox(msg);
      if (res.status === 403) throw new ApiError(403, `Not allowed: ${msg}`);
      throw new ApiError(res.status, msg);
    }
    return data;
  }

  function errorText(e) {
    if (e instanceof ApiError && e.status === 401) return `API token needed: ${e.message}. Paste it in the yellow "API token" box at the top.`;
    return e && e.message ? e.message : String(e);
  }

  function flash(msg, kind = "ok") {
    const el = document.getElementById("flash");
    el.textContent = msg;
    el.className = `flash ${kind}`;
    el.hidden = false;
    clearTimeout(flash.t);
    flash.t = setTimeout(() => { el.hidden = true; }, kind === "error" ? 8000 : 4000);
  }

  function showTokenBox(msg) {
    const box = document.getElementById("token-box");
    box.hidden = false;
    document.getElementById("token-msg").textContent = msg || "";
  }

  function setupTokenBox() {
    const box = document.getElementById("token-box");
    const input = document.getElementById("token-input");
    input.value = localStorage.getItem(TOKEN_KEY) || "";
    if (input.value) box.hidden = true;
    box.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = input.value.trim();
      if (v) localStorage.setItem(TOKEN_KEY, v);
      else localStorage.removeItem(TOKEN_KEY);
      box.hidden = true;
      render();
    });
    document.getElementById("token-clear").addEventListener("click", () => {
      localStorage.removeItem(TOKEN_KEY);
      input.value = "";
      document.getElementById("token-msg").textContent = "Token forgotten.";
    });
  }

  function getName(force) {
    let name = localStorage.getItem(NAME_KEY);
    if (!name || force) {
      const v = window.prompt("Your name (recorded on acknowledgements and silences):", name || "");
      if (v && v.trim()) {
        name = v.trim();
        localStorage.setItem(NAME_KEY, name);
      }
    }
    renderWho();
    return name || null;
  }

  function renderWho() {
    const el = document.getElementById("who");
    const name = localStorage.getItem(NAME_KEY);
    put(el, 
      name ? `Signed as ${name} ` : "",
      h("button", { class: "link", type: "button", onclick: () => getName(true) }, name ? "change" : "set your name"),
      " · ",
      h("button", { class: "link", type: "button", onclick: () => showTokenBox("") }, "API token"),
    );
  }

  const pad = (n) => String(n).padStart(2, "0");
  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  function fmtAgo(iso) {
    if (!iso) return "";
    const s = (Date.now() - new Date(iso).getTime()) / 1000;
    if (!isFinite(s)) return "";
    const a = Math.abs(s);
    const v = a < 90 ? `${Math.round(a)} s` : a < 5400 ? `${Math.round(a / 60)} min` : a < 172800 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} d`;
    return s >= 0 ? `${v} ago` : `in ${v}`;
  }
  function fmtValue(v, kind, unit) {
    if (v == null || !isFinite(v)) return "—";
    if (kind === "ratio") return `${(v * 100).toFixed(2)}%`;
    const a = Math.abs(v);
    const digits = a >= 100 ? 0 : a >= 10 ? 1 : 2;
    const n = v.toLocaleString("en-US", { maximumFractionDigits: digits });
    return unit ? `${n} ${unit}` : n;
  }
  function fmtSens(s) {
    return typeof s === "number" ? s.toFixed(2) : String(s);
  }
  function dimsLabel(dims) {
    const e = Object.entries(dims || {});
    return e.length ? e.map(([k, v]) => `${k}=${v}`).join(", ") : "total";
  }
  const sameDims = (a, b) => JSON.stringify(Object.entries(a || {}).sort()) === JSON.stringify(Object.entries(b || {}).sort());
  function fmtSecs(secs) {
    if (secs % 86400 === 0) return secs === 86400 ? "day" : `${secs / 86400} days`;
    if (secs % 3600 === 0) return secs === 3600 ? "hour" : `${secs / 3600} hours`;
    return `${Math.round(secs / 60)} minutes`;
  }
  function intervalSecs(s) {
    const m = /^(\d+)\s*(s|m|min|h|d|day|days|w)$/.exec(String(s || "").trim());
    if (!m) return 300;
    const n = +m[1];
    return n * ({ s: 1, m: 60, min: 60, h: 3600, d: 86400, day: 86400, days: 86400, w: 604800 }[m[2]]);
  }

  function statusBadge(status) {
    const label = { ok: "ok", data_missing: "data missing", query_error: "query error", pending: "pending" }[status] || status || "unknown";
    return h("span", { class: `badge st-${status || "unknown"}`, title: `status: ${status}` }, label);
  }
  // One badge per KPI: a firing alert outranks "ok" (the run worked, the numbers did not);
  // data problems outrank both.
  function healthBadge(status, firing) {
    if (firing && (status === "ok" || !status)) return h("span", { class: "badge anomalous", title: "has a firing alert" }, "anomalous");
    return statusBadge(status);
  }
  function alertStateBadge(a) {
    return h("span", { class: `badge al-${a.state}` }, a.state);
  }
  function sevBadge(s) {
    return h("span", { class: `badge sev-${s}` }, s);
  }
  const isOpen = (a) => a.state === "firing" || a.state === "pending";

  function errorBox(e) {
    return h("div", { class: "error-box" }, errorText(e));
  }

  // Sum the series' points per timestamp into one line (band units). A KPI with slices has
  // its total as the series without dimensions: that one line is the KPI.
  function aggregate(series, kind) {
    const total = series.find((s) => !Object.keys(s.dims || {}).length);
    if (total && series.length > 1) series = [total];
    const by = new Map();
    for (const s of series) {
      for (const p of s.points) {
        let o = by.get(p.ts);
        if (!o) by.set(p.ts, (o = { ts: p.ts, num: 0, den: 0, exp: 0, expW: 0, n: 0, anomaly: false, own: false, hasExp: true }));
        o.n++;
        o.anomaly = o.anomaly || !!p.anomaly;
        // Flagged by its own value (outside its band) rather than by accumulated evidence.
        o.own = o.own || (!!p.anomaly && (p.flagged_by == null || p.flagged_by === "bucket"));
        if (kind === "ratio") {
          const d = p.denominator || 0;
          o.num += p.value || 0;
          o.den += d;
          if (p.expected == null) o.hasExp = false; else { o.exp += p.expected * d; o.expW += d; }
        } else {
          o.num += kind === "gauge" && series.length > 1 ? (p.band_value ?? p.value ?? 0) / series.length : (p.band_value ?? p.value ?? 0);
          if (p.expected == null) o.hasExp = false; else o.exp += kind === "gauge" && series.length > 1 ? p.expected / series.length : p.expected;
        }
      }
    }
    return [...by.values()]
      .sort((a, b) => (a.ts < b.ts ? -1 : 1))
      .map((o) => {
        if (kind === "ratio") {
          if (series.length === 1) {
            const p = series[0].points.find((q) => q.ts === o.ts);
            return { ts: o.ts, value: p.band_value, expected: p.expected, anomaly: o.anomaly, own: o.own };
          }
          return { ts: o.ts, value: o.den ? o.num / o.den : null, expected: o.hasExp && o.expW ? o.exp / o.expW : null, anomaly: o.anomaly, own: o.own };
        }
        return { ts: o.ts, value: o.num, expected: o.hasExp ? o.exp : null, anomaly: o.anomaly, own: o.own };
      });
  }

  function sparkline(points) {
    const W = 160, H = 34, P = 2;
    const vals = points.map((p) => p.value).filter((v) => v != null && isFinite(v));
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    svg.setAttribute("class", "spark");
    if (vals.length < 2) {
      const t = document.createElementNS(NS, "text");
      t.setAttribute("x", 4); t.setAttribute("y", H / 2 + 4); t.setAttribute("class", "spark-empty");
      t.textContent = vals.length ? "1 point" : "no data";
      svg.append(t);
      return svg;
    }
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (hi === lo) { hi += 1; lo -= 1; }
    const n = points.length;
    const x = (i) => P + (i * (W - 2 * P)) / (n - 1);
    const y = (v) => H - P - ((v - lo) * (H - 2 * P)) / (hi - lo);
    const pts = [];
    points.forEach((p, i) => { if (p.value != null && isFinite(p.value)) pts.push(`${x(i).toFixed(1)},${y(p.value).toFixed(1)}`); });
    const pl = document.createElementNS(NS, "polyline");
    pl.setAttribute("points", pts.join(" "));
    pl.setAttribute("class", "spark-line");
    svg.append(pl);
    points.forEach((p, i) => {
      if (p.anomaly && p.value != null) {
        const c = document.createElementNS(NS, "circle");
        c.setAttribute("cx", x(i).toFixed(1)); c.setAttribute("cy", y(p.value).toFixed(1)); c.setAttribute("r", 2);
        c.setAttribute("class", "spark-anom");
        svg.append(c);
      }
    });
    return svg;
  }

  async function ackAlert(a, onDone) {
    const by = getName(false);
    if (!by) return;
    try {
      await api("POST", `/api/alerts/${encodeURIComponent(a.id)}/ack`, { by });
      flash(`Alert ${a.id} acknowledged by ${by}.`);
      onDone && onDone();
    } catch (e) {
      flash(`Could not acknowledge: ${errorText(e)}`, "error");
    }
  }

  function ackCell(a, onDone) {
    if (a.acknowledged_by) return h("span", { class: "muted", title: fmtTime(a.acknowledged_at) }, `acked by ${a.acknowledged_by}`);
    if (!isOpen(a)) return h("span", { class: "muted" }, "—");
    return h("button", { type: "button", onclick: (ev) => { ev.target.disabled = true; ackAlert(a, onDone).finally(() => { ev.target.disabled = false; }); } }, "Acknowledge");
  }

  function alertsTable(alerts, { showKpi, onDone }) {
    if (!alerts.length) return h("p", { class: "muted" }, "No alerts.");
    return h("table", { class: "grid" },
      h("thead", {}, h("tr", {},
        h("th", {}, "State"), showKpi && h("th", {}, "KPI"), h("th", {}, "Severity"), h("th", {}, "Summary"),
        h("th", {}, "Started"), h("th", {}, "Last anomaly"), h("th", {}, "Resolved"), h("th", {}, "Acknowledge"))),
      h("tbody", {}, alerts.map((a) => h("tr", { class: isOpen(a) ? "open" : "" },
        h("td", {}, alertStateBadge(a), a.kind && a.kind !== "anomaly" ? h("div", { class: "muted small" }, a.kind.replace(/_/g, " ")) : null),
        showKpi && h("td", {}, h("a", { href: `#/kpi/${encodeURIComponent(a.kpi)}` }, a.kpi)),
        h("td", {}, sevBadge(a.severity)),
        h("td", { class: "summary" }, a.summary || ""),
        h("td", { title: a.started_at }, fmtTime(a.started_at), h("div", { class: "muted small" }, fmtAgo(a.started_at))),
        h("td", { title: a.last_anomaly_at || "" }, fmtTime(a.last_anomaly_at)),
        h("td", { title: a.resolved_at || "" }, a.resolved_at ? fmtTime(a.resolved_at) : isOpen(a) ? h("strong", {}, "open") : "—"),
        h("td", {}, ackCell(a, onDone))))));
  }

  // ---------- page: KPI list ----------

  async function pageList(seq, refresh) {
    if (!refresh) {
      // Re-read every minute while the list is shown.
      const t = setInterval(() => { if (seq === routeSeq) pageList(seq, true); }, 60000);
      cleanup.push(() => clearInterval(t));
    }
    const head = h("div", { class: "page-head" },
      h("h1", {}, "KPIs"),
      h("span", { class: "spacer" }),
      h("a", { class: "button", href: "#/new" }, "Register a KPI"));
    if (!refresh) put(app, head, h("p", { class: "muted" }, "Loading KPIs…"));
    let kpis, open;
    try {
      [kpis, open] = await Promise.all([api("GET", "/api/kpis"), api("GET", "/api/alerts?open=true").catch(() => [])]);
    } catch (e) {
      if (seq !== routeSeq) return;
      put(app, head, errorBox(e));
      return;
    }
    if (seq !== routeSeq) return;
    const firing = new Map();
    for (const a of open) if (a.state === "firing") firing.set(a.kpi, (firing.get(a.kpi) || 0) + 1);
    const nFiring = [...firing.values()].reduce((a, b) => a + b, 0);
    const summary = h("p", { class: "lead" },
      `${kpis.length} KPI${kpis.length === 1 ? "" : "s"} · `,
      nFiring ? h("a", { href: "#/alerts", class: "bad" }, `${nFiring} alert${nFiring === 1 ? "" : "s"} firing`) : h("span", { class: "good" }, "no alerts firing"),
      ` · ${kpis.filter((k) => k.status !== "ok").length} not ok · updated ${new Date().toTimeString().slice(0, 8)} (every minute)`);
    const sparks = [];
    const rows = kpis.map((k) => {
      const lastCell = h("td", { class: "num" }, h("span", { class: "muted" }, "…"));
      const sparkCell = h("td", {}, h("span", { class: "muted" }, "…"));
      const anomalous = firing.has(k.id);
      const tr = h("tr", { class: anomalous ? "anomalous" : "" },
        h("td", {}, h("a", { href: `#/kpi/${encodeURIComponent(k.id)}`, class: "kpi-title" }, k.title || k.id),
          h("div", { class: "muted small" }, `${k.id} · ${k.kind} · ${k.every || "every " + k.interval}`)),
        h("td", {}, healthBadge(k.status, anomalous),
          k.last_error ? h("div", { class: "small bad", title: k.last_error }, k.last_error.slice(0, 80)) : null),
        lastCell, sparkCell,
        h("td", {}, k.owner || "—"));
      sparks.push(loadSpark(k, lastCell, sparkCell, seq));
      return tr;
    });
    if (refresh) {
      await Promise.all(sparks); // swap in complete rows, without flicker
      if (seq !== routeSeq) return;
    }
    put(app, head, summary,
      kpis.length ? h("table", { class: "grid kpis" },
        h("thead", {}, h("tr", {}, h("th", {}, "KPI"), h("th", {}, "Status"), h("th", { class: "num" }, "Last value vs expected"),
          h("th", { title: "last 24 h; for hourly or daily KPIs the last 14 buckets" }, "Recent"), h("th", {}, "Owner"))),
        h("tbody", {}, rows)) : h("p", {}, "No KPIs yet. ", h("a", { href: "#/new" }, "Register the first one.")));
  }

  async function loadSpark(k, lastCell, sparkCell, seq) {
    // Last 24 h; for KPIs with buckets of an hour or more, the last 14 buckets at least.
    const span = Math.max(86400, 14 * intervalSecs(k.interval)) * 1000;
    const to = new Date();
    const from = new Date(to.getTime() - span);
    try {
      const series = await api("GET", `/api/kpis/${encodeURIComponent(k.id)}/series?from=${from.toISOString()}&to=${to.toISOString()}`);
      if (seq !== routeSeq) return;
      const pts = aggregate(series, k.kind);
      const last = [...pts].reverse().find((p) => p.value != null);
      if (span > 86400000) sparkCell.title = `last ${Math.round(span / 86400000)} days`;
      put(sparkCell, sparkline(pts));
      if (!last) { put(lastCell, h("span", { class: "muted" }, "no data")); return; }
      const off = last.expected != null && last.expected !== 0 ? (last.value - last.expected) / Math.abs(last.expected) : null;
      put(lastCell, 
        h("strong", { class: last.anomaly ? "bad" : "" }, fmtValue(last.value, k.kind, k.unit)),
        h("span", { class: "muted" }, " vs "), fmtValue(last.expected, k.kind, k.unit),
        off != null ? h("div", { class: `small ${last.anomaly ? "bad" : "muted"}`, title: last.anomaly ? "this bucket was anomalous" : "within the normal band" }, `${off >= 0 ? "+" : ""}${(off * 100).toFixed(1)} % · ${fmtTime(last.ts)}`) : h("div", { class: "small muted" }, fmtTime(last.ts)));
    } catch (e) {
      if (seq !== routeSeq) return;
      put(sparkCell, h("span", { class: "small bad" }, errorText(e)));
      put(lastCell, h("span", { class: "muted" }, "—"));
    }
  }

  // ---------- page: KPI ----------

  const RANGES = [["1 d", 1], ["7 d", 7], ["14 d", 14], ["28 d", 28]];

  async function pageKpi(seq, id, focus = {}) {
    put(app, h("p", { class: "muted" }, "Loading…"));
    let kpis;
    try {
      kpis = await api("GET", "/api/kpis");
    } catch (e) {
      if (seq === routeSeq) put(app, h("h1", {}, id), errorBox(e));
      return;
    }
    if (seq !== routeSeq) return;
    const k = kpis.find((x) => x.id === id);
    if (!k) {
      put(app, h("h1", {}, id), errorBox(new Error(`There is no KPI "${id}".`)), h("p", {}, h("a", { href: "#/" }, "Back to the list")));
      return;
    }
    const state = {
      // Default: 1 day of minute/5-minute buckets, 28 days of hourly or daily ones.
      days: +(sessionStorage.getItem(`kpiwatch.range.${id}`) || (intervalSecs(k.interval) >= 3600 ? 28 : 1)),
      series: null, // fetched series
      dimsIdx: 0,
      dimsChosen: false, // the user picked a series; else the total is shown
      at: null, // the bucket the breakdown is for (ISO), null = the newest judged one
      breakdown: null,
      backtest: null,
      plot: null,
    };

    const statusLine = h("span", { class: "badges" }, statusBadge(k.status));
    const head = h("div", { class: "page-head" },
      h("div", {},
        h("div", { class: "crumbs" }, h("a", { href: "#/" }, "KPIs"), " / ", k.id),
        h("h1", {}, k.title || k.id, " ", statusLine)),
      h("span", { class: "spacer" }),
      h("button", { type: "button", class: "secondary", onclick: () => silenceKpi(k) }, "Silence 2 h"));
    const desc = k.description ? h("p", { class: "lead" }, k.description) : null;
    const errLine = k.last_error ? h("div", { class: "error-box" }, `Last run failed: ${k.last_error}`) : null;

    const rangeBtns = h("div", { class: "seg" }, RANGES.map(([label, d]) =>
      h("button", { type: "button", "data-days": d, class: d === state.days ? "active" : "", onclick: () => { state.days = d; state.window = null; sessionStorage.setItem(`kpiwatch.range.${id}`, d); syncRange(); loadSeries(); } }, label)));
    function syncRange() {
      for (const b of rangeBtns.children) b.classList.toggle("active", +b.dataset.days === state.days);
    }
    const dimsSel = h("select", { hidden: true, onchange: () => { state.dimsIdx = +dimsSel.value; state.dimsChosen = true; drawChart(); } });
    const chartMsg = h("span", { class: "muted small" });
    const chartBox = h("div", { class: "chart" });
    // Events and holidays in the range: shaded on the chart, listed under it (their buckets
    // are neither learned nor alerted).
    const eventsNote = h("div", { class: "chart-events small muted" });
    const legendNote = h("div", { class: "legend-note small muted" },
      h("span", { class: "key k-actual" }), " actual ", h("span", { class: "key k-exp" }), " expected ",
      h("span", { class: "key k-band" }), " normal band ", h("span", { class: "key k-anom" }), " anomaly (recorded) ", h("span", { class: "key k-acc" }), " flagged by accumulated evidence ",
      h("span", { class: "key k-would" }), " would fire at the slider's sensitivity ",
      h("span", { class: "key k-event" }), " event (not learned, not alerted)",
      h("span", { class: "spacer" }), "Drag across the chart to zoom, double-click to zoom out. Times are local.");

    // Sensitivity / backtest panel
    const sens0 = typeof k.sensitivity === "number" ? k.sensitivity : 0.5;
    const slider = h("input", { type: "range", min: "0.05", max: "0.95", step: "0.05", value: String(Math.round(sens0 * 20) / 20) });
    const sensOut = h("output", { class: "sens-value" }, Number(slider.value).toFixed(2));
    const btSummary = h("div", { class: "bt-summary" }, h("span", { class: "muted" }, "Replaying the last 4 weeks…"));
    // Alert budget and injected incidents: the most sensitive setting within N alerts/week
    // (the slider snaps to it) and which settings catch standard drops, and how fast.
    const budgetIn = h("input", { type: "number", min: "0", step: "0.5", value: "1", class: "budget-input", "aria-label": "alerts per week" });
    const tuneOut = h("div", { class: "tune-out small" });
    const STANDARD = [5, 10, 20].flatMap((d) => ["busy", "quiet"].map((at) => ({ drop_percent: d, duration: "30m", at })));
    const fmtDelay = (s) => (s >= 3600 ? `${(s / 3600).toFixed(1)} h` : `${Math.round(s / 60)} min`);
    async function runTune() {
      put(tuneOut, h("span", { class: "muted" }, "Replaying every setting and 6 injected drops…"));
      try {
        const r = await api("POST", `/api/kpis/${encodeURIComponent(id)}/backtest`, { weeks: 4, budget: `${Number(budgetIn.value) || 0}/week`, inject: STANDARD });
        if (seq !== routeSeq) return;
        const b = r.budget || {};
        const c = b.chosen, n = b.next;
        const line = c
          ? h("div", { class: "budget-line" }, h("strong", {}, `Sensitivity ${c.sensitivity.toFixed(2)}`),
              ` fires ${c.alerts_per_week.toFixed(1)} alerts/week`,
              n ? ` · the next, ${n.sensitivity.toFixed(2)}, fires ${n.alerts_per_week.toFixed(1)}/week` : " · the most sensitive setting tried")
          : h("div", { class: "budget-line bad" }, "No setting stays within this budget.");
        if (c) { slider.value = String(c.sensitivity); slider.dispatchEvent(new Event("input")); }
        const rows = (r.replay || []);
        const incidents = rows.length ? rows[0].incidents.map((i) => i.incident) : [];
        const table = h("table", { class: "replay" },
          h("thead", {}, h("tr", {}, h("th", {}, "injected drop"), ...rows.map((x) => h("th", {}, `${x.names.join("/")} ${x.sensitivity.toFixed(2)}`)))),
          h("tbody", {}, ...incidents.map((name, i) => h("tr", {}, h("td", {}, name),
            ...rows.map((x) => { const c2 = x.incidents[i]; return h("td", { class: c2.caught ? "caught" : "missed" }, c2.caught ? `after ${fmtDelay(c2.delay_secs)}` : "missed"); })))));
        put(tuneOut, line, table);
      } catch (e) {
        if (seq === routeSeq) put(tuneOut, errorBox(e));
      }
    }
    const tunePanel = h("div", { class: "tune" },
      h("div", { class: "slider-row small" }, "At most ", budgetIn, " alerts/week ",
        h("button", { type: "button", class: "secondary", onclick: runTune }, "Find the setting")),
      tuneOut);
    const btWeeks = h("div", { class: "bt-weeks" });
    let btTimer = null, btSeq = 0;
    slider.addEventListener("input", () => {
      sensOut.textContent = Number(slider.value).toFixed(2);
      clearTimeout(btTimer);
      btSummary.classList.add("stale");
      btTimer = setTimeout(runBacktest, 300);
    });
    cleanup.push(() => clearTimeout(btTimer));
    const resetBtn = h("button", { type: "button", class: "link", onclick: () => { slider.value = String(Math.round(sens0 * 20) / 20); slider.dispatchEvent(new Event("input")); } }, "reset to model");
    const sensPanel = h("section", { class: "card" },
      h("h2", {}, "Tune sensitivity"),
      h("p", { class: "small muted" }, "Replays the last 4 weeks of stored data at another sensitivity and shows where alerts would have fired (orange triangles on the chart). Nothing is changed: to keep a setting, edit ",
        h("code", {}, `${k.origin || `models/${k.id}`}/model.toml`), "."),
      h("div", { class: "slider-row" }, h("span", { class: "small" }, "fewer alerts"), slider, h("span", { class: "small" }, "more alerts"), sensOut),
      h("div", { class: "small muted" }, `Model setting: ${fmtSens(k.sensitivity)} · `, resetBtn),
      btSummary, btWeeks, tunePanel);

    async function runBacktest() {
      const mySeq = ++btSeq;
      const s = Math.round(Number(slider.value) * 100) / 100;
      btSummary.classList.add("stale");
      try {
        const r = await api("POST", `/api/kpis/${encodeURIComponent(id)}/backtest`, { weeks: 4, sensitivity: s });
        if (mySeq !== btSeq || seq !== routeSeq) return;
        state.backtest = r;
        const n = (r.alerts || []).length;
        if (Math.abs(s - sens0) < 0.001) state.baseline = r;
        const weeks = (r.alerts_per_week || []).length || 4;
        const mean = r.mean_alerts_per_week != null ? r.mean_alerts_per_week : n / weeks;
        btSummary.classList.remove("stale");
        put(btSummary, 
          h("strong", { class: mean > 3 ? "bad" : "" }, `${n} alert${n === 1 ? "" : "s"} in ${weeks} weeks`),
          ` (${mean.toFixed(1)} per week) at sensitivity ${s.toFixed(2)}`,
          h("div", { class: "small muted" }, `${(r.flags || []).length} flagged buckets · ${fmtTime(r.from)} – ${fmtTime(r.to)}`),
          state.baseline && Math.abs(s - sens0) >= 0.001
            ? h("div", { class: "small" }, `At the model's setting (${fmtSens(sens0)}): ${(state.baseline.alerts || []).length} alerts (${(state.baseline.mean_alerts_per_week ?? 0).toFixed(1)} per week).`)
            : null);
        const per = r.alerts_per_week || [];
        const max = Math.max(1, ...per);
        put(btWeeks, ...per.map((c, i) => {
          const wkStart = new Date(new Date(r.from).getTime() + i * 7 * 86400000);
          return h("div", { class: "bt-week", title: `week from ${fmtTime(wkStart.toISOString())}: ${c} alerts` },
            h("div", { class: "bt-bar-wrap" }, h("div", { class: "bt-bar", style: `height:${Math.max(2, (c / max) * 100)}%` })),
            h("div", { class: "bt-count" }, String(c)),
            h("div", { class: "small muted" }, `wk ${i + 1}`));
        }));
        redrawMarkers();
      } catch (e) {
        if (mySeq !== btSeq || seq !== routeSeq) return;
        btSummary.classList.remove("stale");
        put(btSummary, errorBox(e));
        put(btWeeks);
        state.backtest = null;
        redrawMarkers();
      }
    }

    // Settings panel
    const settings = h("section", { class: "card" }, h("h2", {}, "Model"),
      h("dl", { class: "kv" }, [
        ["Kind", k.kind], ["Interval", k.every || k.interval], ["Unit", k.kind === "ratio" ? "%" : k.unit], ["Direction", k.direction], ["Sensitivity", fmtSens(k.sensitivity)],
        ["Severity", k.severity], ["Owner", k.owner], ["Source", k.source], ["Timezone", k.timezone],
        ["Labels", Object.entries(k.labels || {}).map(([a, b]) => `${a}=${b}`).join(", ") || "—"],
        ["Defined in", k.origin], ["Last run", k.last_run_at ? `${fmtTime(k.last_run_at)} (${fmtAgo(k.last_run_at)})` : "—"],
        ["Data until", fmtTime(k.data_until)],
      ].flatMap(([a, b]) => [h("dt", {}, a), h("dd", {}, b == null || b === "" ? "—" : String(b))])));

    const alertsBox = h("div", {}, h("p", { class: "muted" }, "Loading alerts…"));
    const alertsSec = h("section", { class: "card wide" }, h("h2", {}, "Recent alerts for this KPI"), alertsBox);
    // The incident a message linked to (`?alert=<n>`), shown first, with the chart around it.
    const incidentBox = h("div", {});
    let focused = false;
    function showIncident(a) {
      const when = [`started ${fmtTime(a.started_at)}`, a.resolved_at ? `resolved ${fmtTime(a.resolved_at)}` : "still open"];
      if (a.acknowledged_by) when.push(`acknowledged by ${a.acknowledged_by}`);
      put(incidentBox, h("section", { class: "card wide incident-focus", id: "incident" },
        h("h2", {}, `Incident #${a.id}`, " ", alertStateBadge(a), sevBadge(a.severity)),
        h("p", { class: "lead incident-summary" }, a.summary || ""),
        h("p", { class: "small muted" }, when.join(" · ")),
        a.state === "firing" || a.state === "pending" ? ackCell(a, loadAlerts) : null));
      if (!focused) {
        focused = true;
        const start = new Date(a.started_at).getTime();
        const end = new Date(a.resolved_at || a.last_anomaly_at || a.started_at).getTime();
        const pad = Math.max(6 * intervalSecs(k.interval) * 1000, 3 * 3600000);
        state.window = [start - pad, end + pad];
        // The breakdown at the incident's latest flagged bucket.
        state.at = a.last_anomaly_at || a.started_at;
        loadSeries();
      }
    }

    // Every slice at once: small multiples sorted by contribution to the total's change at the
    // selected bucket, and the breakdown table for that bucket (GET /api/kpis/{id}/breakdown).
    const slicesHead = h("span", { class: "muted small" });
    const slicesGrid = h("div", { class: "slices" });
    const breakdownBox = h("div", {});
    const slicesSec = h("section", { class: "card wide", id: "slices", hidden: true },
      h("div", { class: "chart-head" }, h("h2", {}, "Slices"), h("span", { class: "spacer" }), slicesHead),
      h("p", { class: "small muted" }, "Each slice with its own baseline; the ones that explain the total's change at the selected time first (click the chart to pick a time, a slice to chart it). Contributions add up to the total's deviation within each dimension."),
      slicesGrid, breakdownBox);

    async function loadBreakdown() {
      if (!state.series || state.series.length < 2) { slicesSec.hidden = true; return; }
      slicesSec.hidden = false;
      const q = state.at ? `?at=${encodeURIComponent(state.at)}` : "";
      try {
        const b = await api("GET", `/api/kpis/${encodeURIComponent(id)}/breakdown${q}`);
        if (seq !== routeSeq) return;
        state.breakdown = b;
      } catch (e) {
        if (seq !== routeSeq) return;
        state.breakdown = null;
        put(breakdownBox, errorBox(e));
      }
      drawSlices();
    }

    const fmtDelta = (d) => {
      if (d == null || !isFinite(d)) return "—";
      if (k.kind === "ratio") return `${d >= 0 ? "+" : ""}${(d * 100).toFixed(1)} pts`;
      return `${d >= 0 ? "+" : ""}${fmtValue(d, k.kind, k.unit)}`;
    };
    const fmtChange = (a, e) => {
      if (a == null || e == null) return "—";
      if (k.kind === "ratio") return fmtDelta(a - e);
      return e ? `${a >= e ? "+" : ""}${(((a - e) / Math.abs(e)) * 100).toFixed(1)}%` : "—";
    };

    function drawSlices() {
      const b = state.breakdown;
      const bySlice = new Map();
      if (b) for (const r of b.slices) if (!bySlice.has(dimsLabel(r.dims))) bySlice.set(dimsLabel(r.dims), r);
      const slices = (state.series || []).map((s, i) => ({ s, i, label: dimsLabel(s.dims), r: bySlice.get(dimsLabel(s.dims)) }))
        .filter((x) => Object.keys(x.s.dims || {}).length);
      // A slice is highlighted when it is a top contributor or lies inside one (a cell
      // `country=DE, payment_method=card` of the top contributor `payment_method=card`).
      const tops = b ? b.slices.filter((r) => r.top) : [];
      const topOf = (dims) => tops.find((t) => Object.entries(t.dims).every(([a, v]) => (dims || {})[a] === v));
      for (const x of slices) x.top = topOf(x.s.dims);
      const weight = (x) => (x.r ? (x.top ? 1e9 : 0) + Math.abs(x.r.contribution) : x.top ? 1e8 : -1);
      slices.sort((a, b2) => weight(b2) - weight(a) || a.label.localeCompare(b2.label));
      slicesHead.textContent = b ? `at ${fmtTime(b.at)}` + (b.dimension ? ` · explained by ${b.dimension}` : "") : "";
      put(slicesGrid, ...slices.map((x) => {
        const pts = x.s.points.map((p) => ({ value: p.band_value ?? p.value, anomaly: p.anomaly }));
        const anomalous = x.s.points.some((p) => p.anomaly);
        const cls = ["slice-tile", x.top ? "explains" : "", anomalous ? "anomalous" : "", x.i === state.dimsIdx ? "current" : ""].filter(Boolean).join(" ");
        return h("button", { type: "button", class: cls, "data-slice": x.label, title: `Chart ${x.label}`, onclick: () => { state.dimsIdx = x.i; state.dimsChosen = true; dimsSel.value = String(x.i); drawChart(); drawSlices(); } },
          h("div", { class: "slice-label" }, x.label),
          sparkline(pts),
          x.s.evaluated_every_secs > intervalSecs(k.interval)
            ? h("div", { class: "small muted slice-window", title: "Too few events per bucket to decide at the KPI's interval: judged over a longer window (see README, Dimensions and root cause)." },
              `judged every ${fmtSecs(x.s.evaluated_every_secs)}`)
            : null,
          h("div", { class: "small" }, x.r
            ? `${fmtValue(x.r.actual, k.kind, k.unit)} vs ${fmtValue(x.r.expected, k.kind, k.unit)} (${fmtChange(x.r.actual, x.r.expected)})`
            : "no baseline at this time"),
          x.top ? h("div", { class: "small slice-explains" }, x.top === x.r ? `explains ${(x.r.share * 100).toFixed(0)}%` : `in ${dimsLabel(x.top.dims)}, which explains ${(x.top.share * 100).toFixed(0)}%`) : null);
      }));
      if (!b) return;
      const t = b.total || {};
      put(breakdownBox, h("table", { class: "grid breakdown" },
        h("thead", {}, h("tr", {}, ["Slice", "Dimension", "Actual", "Expected", "Change", "Contribution", "Explains"].map((c) => h("th", {}, c)))),
        h("tbody", {},
          h("tr", { class: "total-row" }, h("td", {}, "Total"), h("td", {}, "—"),
            h("td", {}, t.actual == null ? "—" : fmtValue(t.actual, k.kind, k.unit)), h("td", {}, t.expected == null ? "—" : fmtValue(t.expected, k.kind, k.unit)),
            h("td", {}, fmtChange(t.actual, t.expected)), h("td", {}, fmtDelta(t.deviation)), h("td", {}, "100%")),
          ...b.slices.map((r) => h("tr", { class: r.top ? "top-contributor" : r.anomaly ? "anomalous" : "", "data-slice": dimsLabel(r.dims) },
            h("td", {}, dimsLabel(r.dims)), h("td", { class: "muted" }, r.dimension),
            h("td", {}, fmtValue(r.actual, k.kind, k.unit)), h("td", {}, fmtValue(r.expected, k.kind, k.unit)),
            h("td", {}, fmtChange(r.actual, r.expected)), h("td", {}, fmtDelta(r.contribution)),
            h("td", {}, `${(r.share * 100).toFixed(0)}%`))))));
    }

    put(app, ...[head, desc, errLine, incidentBox].filter(Boolean),
      h("section", { class: "card wide" },
        h("div", { class: "chart-head" }, h("h2", {}, "Actual vs expected"), rangeBtns, dimsSel, h("span", { class: "spacer" }), chartMsg),
        chartBox, eventsNote, legendNote),
      slicesSec,
      h("div", { class: "cols" }, sensPanel, settings),
      alertsSec);

    async function loadAlerts() {
      try {
        const all = await api("GET", "/api/alerts?limit=200");
        if (seq !== routeSeq) return;
        const mine = all.filter((a) => a.kpi === id);
        if (focus.alert) {
          const a = mine.find((x) => String(x.id) === String(focus.alert));
          if (a) showIncident(a);
          else put(incidentBox, h("p", { class: "muted" }, `Incident #${focus.alert} is not among this KPI's recent alerts.`));
        }
        const firing = mine.some((a) => a.state === "firing");
        const sils = await api("GET", "/api/silences").catch(() => []);
        if (seq !== routeSeq) return;
        const now = Date.now();
        const sil = sils.find((x) => x.active && new Date(x.ends_at).getTime() > now && x.matchers && x.matchers.kpi === id && Object.keys(x.matchers).length === 1);
        put(statusLine, healthBadge(k.status, firing),
          sil ? h("a", { class: "badge sil-active", href: "#/alerts", title: `${sil.author}: ${sil.comment}` }, `silenced until ${fmtTime(sil.ends_at)}`) : null);
        put(alertsBox, alertsTable(mine.slice(0, 20), { showKpi: false, onDone: loadAlerts }));
      } catch (e) {
        if (seq === routeSeq) put(alertsBox, errorBox(e));
      }
    }

    async function loadSeries() {
      const to = state.window ? new Date(state.window[1]) : new Date();
      const from = state.window ? new Date(state.window[0]) : new Date(to.getTime() - state.days * 86400000);
      chartMsg.textContent = "Loading…";
      const mySeq = (loadSeries.seq = (loadSeries.seq || 0) + 1);
      try {
        const range = `from=${from.toISOString()}&to=${to.toISOString()}`;
        const [series, events] = await Promise.all([
          api("GET", `/api/kpis/${encodeURIComponent(id)}/series?${range}`),
          api("GET", `/api/events?kpi=${encodeURIComponent(id)}&${range}`).catch(() => []),
        ]);
        if (seq !== routeSeq || mySeq !== loadSeries.seq) return;
        state.series = series;
        state.events = events.flatMap((e) => (e.occurrences || []).map((o) => ({
          name: e.name, start: new Date(o.start).getTime() / 1000, end: new Date(o.end).getTime() / 1000 })));
        put(eventsNote, ...state.events.map((e) => h("span", { class: "event-chip", title: "Buckets in it are neither learned nor alerted" },
          `${e.name}: ${fmtTime(new Date(e.start * 1000).toISOString())} – ${fmtTime(new Date(e.end * 1000).toISOString())}`)));
        state.range = [from.getTime() / 1000, to.getTime() / 1000];
        if (state.dimsIdx >= series.length || !state.dimsChosen) state.dimsIdx = Math.max(0, series.findIndex((s) => !Object.keys(s.dims || {}).length));
        put(dimsSel, ...series.map((s, i) => h("option", { value: i, selected: i === state.dimsIdx }, dimsLabel(s.dims))));
        dimsSel.hidden = series.length < 2;
        drawChart();
        drawSlices();
        loadBreakdown();
      } catch (e) {
        if (seq !== routeSeq) return;
        chartMsg.textContent = "";
        put(chartBox, errorBox(e));
      }
    }

    function currentPoints() {
      const s = state.series && state.series[state.dimsIdx];
      return s ? s.points : [];
    }

    function wouldFireData(xs, dims) {
      const out = new Array(xs.length).fill(null);
      const r = state.backtest;
      if (!r || !r.flags) return out;
      const idx = new Map(xs.map((x, i) => [x, i]));
      for (const f of r.flags) {
        if (f.series && dims && !sameDims(f.series, dims)) continue;
        const t = Math.floor(new Date(f.ts).getTime() / 1000);
        const i = idx.get(t);
        if (i != null) out[i] = f.value; // flags are in band units, like band_value
      }
      return out;
    }

    function redrawMarkers() {
      if (!state.plot) return;
      const d = state.plot.data.slice();
      const dims = state.series[state.dimsIdx] && state.series[state.dimsIdx].dims;
      d[6] = wouldFireData(d[0], dims);
      state.plot.setData(d, false);
      state.plot.redraw();
      updateChartMsg();
    }

    function updateChartMsg() {
      const pts = currentPoints();
      const anom = pts.filter((p) => p.anomaly).length;
      const would = state.plot ? state.plot.data[6].filter((v) => v != null).length : 0;
      const warm = pts.filter((p) => p.status === "warming_up");
      chartMsg.textContent = `${pts.length} buckets · ${anom} anomal${anom === 1 ? "y" : "ies"}` + (state.backtest ? ` · ${would} would fire in this range` : "") +
        (warm.length ? ` · warming up (no band) until ${fmtTime(warm[warm.length - 1].ts)}` : "");
    }

    function drawChart() {
      if (state.plot) { state.plot.destroy(); state.plot = null; }
      const pts = currentPoints();
      const kind = k.kind;
      if (!pts.length) {
        put(chartBox, h("div", { class: "empty-chart" }, state.days < 28 ? "No data in this range — try a longer one." : "No data in this range."));
        chartMsg.textContent = "";
        return;
      }
      put(chartBox);
      const xs = pts.map((p) => Math.floor(new Date(p.ts).getTime() / 1000));
      const val = pts.map((p) => (p.band_value ?? p.value ?? null));

      // No band or expected value while warming up: nothing is judged then, and early bands are huge.
      const judged = (p) => p.status !== "warming_up";
      const exp = pts.map((p) => (judged(p) ? p.expected ?? null : null));
      const lo = pts.map((p) => (judged(p) ? p.lower ?? null : null));
      const hi = pts.map((p) => (judged(p) ? p.upper ?? null : null));
      // y range: the data and expected values, plus the band where it is not far outside them.
      const core = val.concat(exp).filter((v) => v != null && isFinite(v));
      let yMin = Math.min(...core), yMax = Math.max(...core);
      const span0 = Math.max(yMax - yMin, Math.abs(yMax) * 0.01, 1e-9);
      for (const v of lo) if (v != null && v >= yMin - span0 * 0.5) yMin = Math.min(yMin, v);
      for (const v of hi) if (v != null && v <= yMax + span0 * 0.5) yMax = Math.max(yMax, v);
      if (kind === "ratio") { yMin = Math.max(0, yMin); yMax = Math.min(1, yMax); }
      const padY = (yMax - yMin || Math.abs(yMax) || 1) * 0.06;
      const yRange = [kind === "ratio" ? Math.max(0, yMin - padY) : yMin - padY, kind === "ratio" ? Math.min(1.0001, yMax + padY) : yMax + padY];
      const big = Math.max(Math.abs(yRange[0]), Math.abs(yRange[1])) >= 1e5;
      const axisFmt = (v) => (kind !== "ratio" && big ? v.toLocaleString("en-US", { notation: "compact", maximumFractionDigits: 2 }) : fmtValue(v, kind));
      // Filled: the bucket's own value is outside its band. Hollow: flagged by evidence
      // accumulated over recent buckets (or an incident still under way).
      const own = (p) => p.own ?? (p.flagged_by == null || p.flagged_by === "bucket");
      const an = pts.map((p, i) => (p.anomaly && own(p) ? val[i] : null));
      const acc = pts.map((p, i) => (p.anomaly && !own(p) ? val[i] : null));
      const dims = state.series[state.dimsIdx].dims;
      const would = wouldFireData(xs, dims);
      const fmt = (u, v) => fmtValue(v, k.kind, k.unit);
      const opts = {
        width: Math.max(300, chartBox.clientWidth || 900),
        height: 340,
        cursor: { drag: { x: true, y: false } },
        scales: { x: { time: true }, y: { auto: false, range: () => yRange } },
        axes: [
          { stroke: "#4b5563", grid: { stroke: "#eef0f3" } },
          { stroke: "#4b5563", grid: { stroke: "#eef0f3" }, size: 64, values: (u, vals) => vals.map(axisFmt) },
        ],
        series: [
          { value: (u, v) => (v == null ? "—" : fmtTime(new Date(v * 1000).toISOString())) },
          { label: "lower", stroke: "rgba(37,99,235,0.25)", width: 0.5, value: fmt },
          { label: "upper", stroke: "rgba(37,99,235,0.25)", width: 0.5, value: fmt },
          { label: "expected", stroke: "#2563eb", width: 1.5, dash: [6, 4], value: fmt },
          { label: "actual", stroke: "#111827", width: 1.5, value: fmt },
          { label: "anomaly", stroke: "#dc2626", fill: "#dc2626", width: 0, paths: () => null, points: { show: true, size: 7, width: 1, stroke: "#dc2626", fill: "#dc2626" }, value: fmt },
          { label: "would fire", stroke: "#f97316", width: 0, paths: () => null, points: { show: false }, value: (u, v) => (v == null ? "—" : fmtValue(v, kind)) },
          { label: "accumulated", stroke: "#dc2626", fill: "#ffffff", width: 0, paths: () => null, points: { show: true, size: 7, width: 1.5, stroke: "#dc2626", fill: "#ffffff" }, value: fmt },
        ],
        bands: [{ series: [2, 1], fill: "rgba(37,99,235,0.12)" }],
        hooks: {
          drawClear: [(u) => {
            // Events: grey bands behind the data.
            const ctx = u.ctx;
            ctx.save();
            ctx.fillStyle = "rgba(107,114,128,0.16)";
            for (const e of state.events || []) {
              const a = Math.max(e.start, u.scales.x.min), b = Math.min(e.end, u.scales.x.max);
              if (b <= a) continue;
              const x0 = u.valToPos(a, "x", true), x1 = u.valToPos(b, "x", true);
              ctx.fillRect(x0, u.bbox.top, Math.max(1, x1 - x0), u.bbox.height);
            }
            ctx.restore();
          }],
          draw: [(u) => {
            // Would-fire markers: orange triangles above the point.
            const ys = u.data[6];
            const ctx = u.ctx;
            ctx.save();
            ctx.fillStyle = "#f97316";
            ctx.strokeStyle = "#9a3412";
            ctx.lineWidth = 1;
            const s = 5 * devicePixelRatio;
            const [x0, x1] = [u.scales.x.min, u.scales.x.max];
            for (let i = 0; i < ys.length; i++) {
              if (ys[i] == null) continue;
              const xv = u.data[0][i];
              if (xv < x0 || xv > x1) continue;
              const cx = u.valToPos(xv, "x", true);
              const cy = u.valToPos(ys[i], "y", true) - s * 1.6;
              ctx.beginPath();
              ctx.moveTo(cx, cy + s);
              ctx.lineTo(cx - s, cy - s * 0.8);
              ctx.lineTo(cx + s, cy - s * 0.8);
              ctx.closePath();
              ctx.fill();
              ctx.stroke();
            }
            ctx.restore();
          }],
        },
      };
      state.plot = new uPlot(opts, [xs, lo, hi, exp, val, an, would, acc], chartBox);
      const plot = state.plot;
      let downX = null;
      plot.over.addEventListener("mousedown", (e) => { downX = e.clientX; });
      plot.over.addEventListener("mouseup", (e) => {
        // A click (not a drag to zoom) picks the bucket the breakdown is for.
        if (downX == null || Math.abs(e.clientX - downX) > 3 || plot.cursor.idx == null) return;
        state.at = new Date(plot.data[0][plot.cursor.idx] * 1000).toISOString();
        loadBreakdown();
      });
      updateChartMsg();
    }

    const onResize = () => { if (state.plot) state.plot.setSize({ width: Math.max(300, chartBox.clientWidth), height: 340 }); };
    window.addEventListener("resize", onResize);
    cleanup.push(() => window.removeEventListener("resize", onResize));
    cleanup.push(() => { if (state.plot) state.plot.destroy(); });

    loadSeries();
    loadAlerts();
    runBacktest();
  }

  async function silenceKpi(k) {
    const author = getName(false);
    if (!author) return;
    const comment = window.prompt(`Silence all alerts of "${k.title || k.id}" for 2 hours.\nWhy? (shown to the team)`, "");
    if (comment == null) return;
    try {
      const s = await api("POST", "/api/silences", { matchers: { kpi: k.id }, duration: "2h", author, comment: comment.trim() || "silenced from the web UI" });
      flash(`Silenced ${k.id} until ${fmtTime(s && s.ends_at)}. Expire it on the Alerts page.`);
      if (location.hash.startsWith("#/kpi/")) render();
    } catch (e) {
      flash(`Could not silence: ${errorText(e)}`, "error");
    }
  }

  // ---------- page: alerts ----------

  async function pageAlerts(seq) {
    const head = h("div", { class: "page-head" }, h("h1", {}, "Alerts"), h("span", { class: "spacer" }),
      h("button", { type: "button", class: "secondary", onclick: () => render() }, "Refresh"));
    const openBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    const recentBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    const silBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    const formMsg = h("span", { class: "form-msg" });
    const kpiSel = h("select", { name: "kpi" }, h("option", { value: "" }, "(any KPI)"));
    const extra = h("input", { name: "extra", placeholder: "e.g. country=DE, severity=critical" });
    const dur = h("select", { name: "duration" }, ["30m", "1h", "2h", "4h", "8h", "24h", "3d", "7d"].map((d) => h("option", { value: d, selected: d === "2h" }, d)));
    const comment = h("input", { name: "comment", placeholder: "why (e.g. load test, provider incident #123)", required: true });
    const form = h("form", { class: "silence-form" },
      h("label", {}, "KPI", kpiSel),
      h("label", {}, "Other matchers", extra),
      h("label", {}, "Duration", dur),
      h("label", { class: "grow" }, "Comment", comment),
      h("button", { type: "submit" }, "Create silence"), formMsg);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const matchers = {};
      if (kpiSel.value) matchers.kpi = kpiSel.value;
      for (const part of extra.value.split(",").map((s) => s.trim()).filter(Boolean)) {
        const m = /^([^=]+)=(.*)$/.exec(part);
        if (!m) { formMsg.className = "form-msg bad"; formMsg.textContent = `"${part}" is not key=value`; return; }
        matchers[m[1].trim()] = m[2].trim();
      }
      if (!Object.keys(matchers).length) { formMsg.className = "form-msg bad"; formMsg.textContent = "Choose a KPI or give at least one matcher."; return; }
      const author = getName(false);
      if (!author) return;
      formMsg.className = "form-msg muted"; formMsg.textContent = "Saving…";
      try {
        await api("POST", "/api/silences", { matchers, duration: dur.value, author, comment: comment.value.trim() });
        formMsg.className = "form-msg good"; formMsg.textContent = "Silence created.";
        comment.value = ""; extra.value = "";
        loadSilences();
      } catch (e) {
        formMsg.className = "form-msg bad"; formMsg.textContent = errorText(e);
      }
    });

    put(app, head,
      h("section", { class: "card wide" }, h("h2", {}, "Firing and pending"), openBox),
      h("section", { class: "card wide" }, h("h2", {}, "Silences"), silBox, h("h3", {}, "New silence"), form),
      h("section", { class: "card wide" }, h("h2", {}, "Recent (resolved and cancelled)"), recentBox));

    api("GET", "/api/kpis").then((ks) => {
      if (seq !== routeSeq) return;
      for (const k of ks) kpiSel.append(h("option", { value: k.id }, `${k.title || k.id} (${k.id})`));
    }).catch(() => {});

    async function loadAlerts() {
      try {
        const all = await api("GET", "/api/alerts?limit=100");
        if (seq !== routeSeq) return;
        const open = all.filter(isOpen);
        const closed = all.filter((a) => !isOpen(a));
        put(openBox, open.length ? alertsTable(open, { showKpi: true, onDone: loadAlerts }) : h("p", { class: "good" }, "Nothing firing."));
        put(recentBox, alertsTable(closed, { showKpi: true, onDone: loadAlerts }));
      } catch (e) {
        if (seq !== routeSeq) return;
        put(openBox, errorBox(e));
        put(recentBox);
      }
    }
    async function loadSilences() {
      try {
        const sil = await api("GET", "/api/silences");
        if (seq !== routeSeq) return;
        if (!sil.length) { put(silBox, h("p", { class: "muted" }, "No active, upcoming or recently ended silences.")); return; }
        const now = Date.now();
        put(silBox, h("table", { class: "grid" },
          h("thead", {}, h("tr", {}, h("th", {}, "State"), h("th", {}, "Matches"), h("th", {}, "From"), h("th", {}, "Until"), h("th", {}, "Author"), h("th", {}, "Comment"), h("th", {}, ""))),
          h("tbody", {}, sil.map((s) => {
            const ended = new Date(s.ends_at).getTime() <= now;
            const label = s.active ? "active" : ended ? "ended" : "upcoming";
            return h("tr", { class: ended ? "dim" : "" },
              h("td", {}, h("span", { class: `badge sil-${label}` }, label)),
              h("td", {}, Object.entries(s.matchers || {}).map(([a, b]) => h("code", { class: "matcher" }, `${a}=${b}`))),
              h("td", {}, fmtTime(s.starts_at)),
              h("td", {}, fmtTime(s.ends_at), h("div", { class: "muted small" }, fmtAgo(s.ends_at))),
              h("td", {}, s.author || "—"),
              h("td", { class: "summary" }, s.comment || ""),
              h("td", {}, ended ? "" : h("button", { type: "button", class: "secondary", onclick: async (ev) => {
                ev.target.disabled = true;
                try { await api("DELETE", `/api/silences/${encodeURIComponent(s.id)}`); flash(`Silence ${s.id} expired.`); loadSilences(); }
                catch (e) { flash(`Could not expire: ${errorText(e)}`, "error"); ev.target.disabled = false; }
              } }, "Expire")));
          }))));
      } catch (e) {
        if (seq === routeSeq) put(silBox, errorBox(e));
      }
    }
    loadAlerts();
    loadSilences();
  }

  // ---------- page: register ----------

  const SQL_HEAD = `-- One row per bucket (finer rows are rolled up): a \`ts\` column (bucket start, UTC)
-- and \`value\` -- or \`numerator\` and \`denominator\` for a ratio.
-- Every other column is a dimension (one series per combination).
-- :start and :end are bound by kpiwatch (half-open window); never splice dates in.
`;
  // Query templates by the source's driver (GET /api/sources says which).
  const TEMPLATES = {
    postgres: SQL_HEAD + `SELECT date_trunc('minute', created_at) AS ts,
       COUNT(*)                          AS value
FROM orders
WHERE created_at >= :start AND created_at < :end
GROUP BY 1
`,
    mysql: SQL_HEAD + `SELECT DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:00') AS ts,
       COUNT(*)                                     AS value
FROM orders
WHERE created_at >= :start AND created_at < :end
GROUP BY 1
`,
    sqlite: SQL_HEAD + `SELECT strftime('%Y-%m-%d %H:%M:00', created_at) AS ts,
       COUNT(*)                                  AS value
FROM orders
WHERE created_at >= :start AND created_at < :end
GROUP BY 1
`,
    prometheus: `# PromQL, evaluated at each bucket's end; $__interval is the bucket length.
sum(increase(shop_orders_total[$__interval]))
`,
    influxdb: `-- InfluxQL: one SELECT, the window bound as $start / $end.
SELECT count("value") AS value FROM "orders" WHERE time >= $start AND time < $end GROUP BY time($__interval)
`,
  };
  const SQL_TEMPLATE = TEMPLATES.sqlite;

  function pageNew() {
    const f = (name, label, input, hint) => h("label", { class: "field" }, h("span", { class: "lbl" }, label), input, hint ? h("span", { class: "hint" }, hint) : null);
    const sel = (name, opts, def) => h("select", { name }, opts.map(([v, l]) => h("option", { value: v, selected: v === def }, l)));
    const inp = (name, attrs) => h("input", Object.assign({ name }, attrs));
    const sql = h("textarea", { name: "query", class: "sql", spellcheck: "false", rows: 14 });
    sql.value = SQL_TEMPLATE;
    sql.addEventListener("keydown", (ev) => {
      if (ev.key === "Tab" && !ev.shiftKey && !ev.ctrlKey && !ev.altKey && !ev.metaKey) {
        ev.preventDefault();
        const s = sql.selectionStart, e = sql.selectionEnd;
        sql.setRangeText("  ", s, e, "end");
      }
    });
    const sensOut = h("output", {}, "0.50");
    const sens = inp("sensitivity", { type: "range", min: "0.05", max: "0.95", step: "0.05", value: "0.5", oninput: () => { sensOut.textContent = Number(sens.value).toFixed(2); } });
    // The source: a dropdown of the configured sources; the query template follows its driver
    // (until the query is edited).
    const sourceSel = h("select", { name: "source", required: true }, h("option", { value: "" }, "loading sources…"));
    const sourceKind = h("span", {}, "a source from the config; the query template follows its driver");
    let kinds = {};
    const isTemplate = () => Object.values(TEMPLATES).includes(sql.value);
    function onSource() {
      const kind = kinds[sourceSel.value];
      sourceKind.textContent = kind ? `${kind} — the template below is written for it` : "a source from the config";
      if (kind && TEMPLATES[kind] && isTemplate()) sql.value = TEMPLATES[kind];
    }
    sourceSel.addEventListener("change", onSource);
    api("GET", "/api/sources").then((list) => {
      kinds = Object.fromEntries(list.map((s) => [s.name, s.kind]));
      put(sourceSel, ...(list.length ? list : [{ name: "", kind: "" }]).map((s) => h("option", { value: s.name }, s.name ? `${s.name} (${s.kind})` : "no sources configured")));
      onSource();
    }).catch((e) => put(sourceSel, h("option", { value: "" }, `sources unavailable: ${errorText(e)}`)));
    const form = h("form", { class: "reg", novalidate: true },
      h("div", { class: "form-grid" },
        f("id", "Id", inp("id", { required: true, pattern: "[a-z][a-z0-9_-]*", placeholder: "orders_per_minute" }), "lowercase letters, digits, _ and -, starting with a letter; used in URLs and alerts"),
        f("title", "Title", inp("title", { required: true, placeholder: "Orders per minute" }), "how people see it in alerts and the digest"),
        f("source", "Source", sourceSel, sourceKind),
        f("kind", "Kind", sel("kind", [["count", "count (events per bucket)"], ["ratio", "ratio (numerator / denominator)"], ["gauge", "gauge (a level, e.g. revenue)"]], "count"), "decides the noise model: counts are Poisson, ratios binomial, gauges their own spread"),
        f("interval", "Interval", sel("interval", [["1m", "1 minute"], ["5m", "5 minutes"], ["15m", "15 minutes"], ["1h", "1 hour"], ["1d", "1 day"]], "5m"), "bucket length"),
        f("delay", "Delay", inp("delay", { value: "1m", placeholder: "1m" }), "wait for late rows before a bucket counts"),
        f("direction", "Direction", sel("direction", [["down", "down (alert on drops)"], ["up", "up (alert on spikes)"], ["both", "both"]], "down"), "which deviations alert"),
        f("sensitivity", "Sensitivity", h("span", { class: "inline" }, sens, sensOut), "higher = more alerts; 0.25 low, 0.50 medium, 0.75 high — try the draft backtest"),
        f("min_volume", "Minimum volume", inp("min_volume", { type: "number", min: "0", step: "any", placeholder: "0" }), "buckets with less volume (count, or denominator) are never flagged"),
        f("seasonality", "Seasonality", sel("seasonality", [["auto", "auto (chosen from the data)"], ["daily", "daily"], ["weekly", "weekly"], ["none", "none"]], "auto"), "which cycle the baseline learns"),
        f("timezone", "Timezone", inp("timezone", { placeholder: "UTC" }), "IANA name; daily and weekly slots follow its local time"),
        f("severity", "Severity", sel("severity", [["warning", "warning"], ["critical", "critical"], ["info", "info"]], "warning"), "of its alerts (a drop of 50 % or more is raised to critical)"),
        f("trigger", "Trigger", inp("trigger", { placeholder: "1 of 1", pattern: "[0-9]+ of [0-9]+" }), "fire when N of the last M judged buckets are anomalous, e.g. 2 of 3"),
        f("recover_after", "Recover after", inp("recover_after", { type: "number", min: "1", step: "1", placeholder: "3" }), "in-band buckets that resolve an alert (default: the scheduler's)"),
        f("repeat_interval", "Repeat every", inp("repeat_interval", { placeholder: "4h" }), "remind while firing and unacknowledged (empty: never)"),
        f("max_series", "Max series", inp("max_series", { type: "number", min: "1", step: "1", placeholder: "1000" }), "most dimension combinations the query may return"),
        f("owner", "Owner", inp("owner", { placeholder: "payments-team" }), "person or team; shown in alerts, usable in routing"),
        f("unit", "Unit", inp("unit", { placeholder: "orders" }), "shown beside counts and gauges (ratios are in %)"),
        f("labels", "Labels", inp("labels", { placeholder: "team=payments, tier=1" }), "key=value pairs for routing, silences and events"),
        f("recipients", "Recipients", inp("recipients", { placeholder: "oncall@example.com, lead@example.com" }), "comma-separated e-mail addresses (empty: the configured defaults)")),
      h("label", { class: "field full" }, h("span", { class: "lbl" }, "Description"), h("textarea", { name: "description", rows: 2, placeholder: "What it measures and why it matters" }), h("span", { class: "hint" }, "shown on the KPI page and in alerts")),
      h("label", { class: "field full" }, h("span", { class: "lbl" }, "Query"), sql, h("span", { class: "hint" }, "Tab inserts two spaces. Use :start and :end for the time window.")),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "secondary", id: "test-btn" }, "Test query"),
        h("button", { type: "button", class: "secondary", id: "draft-bt-btn" }, "Backtest draft"),
        h("button", { type: "submit" }, "Register"),
        h("span", { class: "form-msg", id: "reg-msg" })),
      h("div", { id: "test-out" }),
      h("div", { id: "draft-bt-out" }));

    function body() {
      const fd = new FormData(form);
      const g = (n) => String(fd.get(n) || "").trim();
      const b = {
        id: g("id"), title: g("title"), source: g("source"), kind: g("kind"), interval: g("interval"), delay: g("delay"),
        direction: g("direction"), sensitivity: Number(fd.get("sensitivity")), seasonality: g("seasonality"), severity: g("severity"),
        recipients: g("recipients").split(",").map((s) => s.trim()).filter(Boolean),
        query: sql.value,
      };
      for (const n of ["owner", "unit", "timezone", "trigger", "repeat_interval", "description"]) if (g(n)) b[n] = g(n);
      for (const n of ["min_volume", "recover_after", "max_series"]) if (g(n)) b[n] = Number(g(n));
      const labels = g("labels").split(",").map((s) => s.trim()).filter(Boolean);
      if (labels.length) b.labels = Object.fromEntries(labels.map((l) => { const i = l.indexOf("="); return i < 0 ? [l, ""] : [l.slice(0, i).trim(), l.slice(i + 1).trim()]; }));
      return b;
    }
    const msg = form.querySelector("#reg-msg");
    const out = form.querySelector("#test-out");
    const btOut = form.querySelector("#draft-bt-out");
    form.querySelector("#test-btn").addEventListener("click", async (ev) => {
      const btn = ev.target;
      btn.disabled = true;
      put(out, h("p", { class: "muted" }, "Running the query…"));
      try {
        const r = await api("POST", "/api/kpis/test-query", body());
        const rows = (r && r.rows) || [];
        const cols = [...new Set(rows.flatMap((x) => Object.keys(x)))];
        put(out, h("div", { class: "test-ok" },
          h("p", { class: "good" }, `Query OK: ${rows.length} row${rows.length === 1 ? "" : "s"}, ${r.series ?? "?"} series.` + (rows.length > 20 ? " First 20 rows:" : "")),
          rows.length ? h("table", { class: "grid compact" }, h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
            h("tbody", {}, rows.slice(0, 20).map((row) => h("tr", {}, cols.map((c) => h("td", {}, row[c] == null ? "" : String(row[c]))))))) : null));
      } catch (e) {
        put(out, h("div", { class: "error-box" }, h("strong", {}, "Query failed: "), errorText(e)));
      } finally {
        btn.disabled = false;
      }
    });
    // The draft backtest: what this setting would have fired over the last 4 weeks, the most
    // sensitive setting within 1 alert/week, and which settings catch injected drops.
    form.querySelector("#draft-bt-btn").addEventListener("click", async (ev) => {
      const btn = ev.target;
      btn.disabled = true;
      put(btOut, h("p", { class: "muted" }, "Querying 8 weeks of history and replaying it…"));
      try {
        const kpi = body();
        const r = await api("POST", "/api/kpis/backtest", { kpi, weeks: 4, budget: "1/week", inject: [{ drop_percent: 20, duration: "30m", at: "busy" }, { drop_percent: 20, duration: "30m", at: "quiet" }] });
        const n = (r.alerts || []).length;
        const c = r.budget && r.budget.chosen;
        const rows = r.replay || [];
        put(btOut, h("div", { class: "draft-bt" },
          h("p", {}, h("strong", {}, `${n} alert${n === 1 ? "" : "s"} in 4 weeks`), ` at sensitivity ${Number(r.sensitivity).toFixed(2)} (${(r.mean_alerts_per_week || 0).toFixed(1)} per week).`),
          h("p", { class: "small" }, c ? `Within 1 alert/week: sensitivity ${c.sensitivity.toFixed(2)} (${c.alerts_per_week.toFixed(1)}/week).` : "No setting stays within 1 alert/week."),
          rows.length ? h("table", { class: "replay" },
            h("thead", {}, h("tr", {}, h("th", {}, "injected drop"), ...rows.map((x) => h("th", {}, `${x.names.join("/")} ${x.sensitivity.toFixed(2)}`)))),
            h("tbody", {}, ...rows[0].incidents.map((inc, i) => h("tr", {}, h("td", {}, inc.incident),
              ...rows.map((x) => h("td", { class: x.incidents[i].caught ? "caught" : "missed" }, x.incidents[i].caught ? `after ${Math.round(x.incidents[i].delay_secs / 60)} min` : "missed")))))) : null));
      } catch (e) {
        put(btOut, h("div", { class: "error-box" }, h("strong", {}, "Backtest failed: "), errorText(e)));
      } finally {
        btn.disabled = false;
      }
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const b = body();
      const missing = ["id", "title", "source"].filter((n) => !b[n]);
      if (missing.length) { msg.className = "form-msg bad"; msg.textContent = `Please fill in: ${missing.join(", ")}`; return; }
      msg.className = "form-msg muted"; msg.textContent = "Registering…";
      try {
        await api("POST", "/api/kpis", b);
        msg.className = "form-msg good"; msg.textContent = "Registered.";
        location.hash = `#/kpi/${encodeURIComponent(b.id)}`;
      } catch (e) {
        msg.className = "form-msg bad"; msg.textContent = errorText(e);
      }
    });
    put(app, h("div", { class: "page-head" }, h("h1", {}, "Register a KPI")),
      h("p", { class: "lead" }, "Describe the metric and the query that computes it. Test the query and backtest the draft first; once registered, kpiwatch backfills its history and starts watching."),
      h("section", { class: "card wide" }, form));
  }

  // ---------- router ----------

  function render() {
    for (const f of cleanup) { try { f(); } catch { /* ignore */ } }
    cleanup = [];
    const seq = ++routeSeq;
    const [hash, query] = (location.hash.replace(/^#/, "") || "/").split("?");
    const params = new URLSearchParams(query || "");
    const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
    let nav = "list";
    // `#/kpi/<id>?alert=<n>`: the link in every alert message, focused on that incident.
    if (parts[0] === "kpi" && parts[1]) { nav = ""; pageKpi(seq, parts[1], { alert: params.get("alert") }); }
    else if (parts[0] === "alerts") { nav = "alerts"; pageAlerts(seq); }
    else if (parts[0] === "new") { nav = "new"; pageNew(seq); }
    else pageList(seq);
    for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === nav);
    document.title = `kpiwatch${parts.length ? " · " + parts.join(" ") : ""}`;
    window.scrollTo(0, 0);
  }

  setupTokenBox();
  renderWho();
  window.addEventListener("hashchange", render);
  render();
})();
