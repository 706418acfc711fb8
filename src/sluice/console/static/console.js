// The Sluice console: polls /console/api/snapshot every second for the live view; every change goes through the
// admin API (mounted under /console/admin, where the session cookie reaches it) with the session's CSRF token.
"use strict";
(function () {
  const CSRF = document.querySelector('meta[name="sluice-csrf"]').content;
  const POLL_MS = 1000;
  const HISTORY = 300; // samples of the pools' gauges kept in the page (the server keeps the traffic's)
  const admissionHistory = [];
  let snapshot = null;
  let view = "live";

  const $ = (sel) => document.querySelector(sel);
  const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = String(text); if (cls) e.className = cls; return e; };
  const row = (cells) => { const tr = document.createElement("tr"); for (const c of cells) { const td = document.createElement("td"); if (c instanceof Node) td.append(c); else td.textContent = c === null || c === undefined ? "" : String(c); tr.append(td); } return tr; };
  const fill = (sel, rows) => { const body = $(sel + " tbody"); body.replaceChildren(...rows); };
  const num = (x, digits = 1) => (x === null || x === undefined ? "-" : Number(x).toFixed(digits));
  const say = (text) => { $("#message").textContent = text || ""; };

  async function api(method, path, body) {
    const options = { method, credentials: "same-origin", headers: { "x-sluice-csrf": CSRF } };
    if (body !== undefined) { options.headers["content-type"] = "application/json"; options.body = JSON.stringify(body); }
    const response = await fetch(path, options);
    const doc = await response.json().catch(() => ({}));
    if (!response.ok) {
      if (response.status === 401) { location.reload(); }
      throw new Error((doc.error && doc.error.message) || `${response.status} ${response.statusText}`);
    }
    return doc;
  }
  const admin = (method, path, body) => api(method, "/console" + path, body);

  // -- charts: SVG polylines over the last minutes, no library ---------------------------------------------------
  function chart(sel, seriesList, classes, floor = 1) {
    const svg = $(sel);
    const max = Math.max(floor, ...seriesList.flat());
    const lines = seriesList.map((series, i) => {
      const step = 300 / Math.max(1, HISTORY - 1);
      const offset = 300 - step * (series.length - 1);
      const points = series.map((v, j) => `${(offset + j * step).toFixed(1)},${(98 - (v / max) * 90).toFixed(1)}`).join(" ");
      return `<polyline class="${classes[i] || ""}" points="${points}"></polyline>`;
    });
    svg.innerHTML = `${lines.join("")}<text x="2" y="9">${num(max, max < 1 ? 3 : max < 10 ? 1 : 0)}</text>`;
  }

  function drawLive(s) {
    const series = s.traffic.series.slice(-HISTORY);
    chart("#chart-requests", [series.map((p) => p.requests)], [""]);
    chart("#chart-tokens", [series.map((p) => p.tokens)], [""]);
    chart("#chart-refused", [series.map((p) => p.refused_429), series.map((p) => p.refused_503)], ["c429", "c503"]);
    const a = admissionHistory;
    chart("#chart-admission", [a.map((p) => p.in_flight), a.map((p) => p.window), a.map((p) => p.queued)], ["", "cwin", "c503"]);
    fill("#pools", s.pools.map((p) => {
      const a = p.admission;
      if (!a) return row([p.model, "no admission control", "", "", "", "", ""]);
      const queued = Object.entries(a.queued).filter(([, n]) => n > 0).map(([prio, n]) => `${prio}: ${n}`).join(", ") || "0";
      const protection = el("span", a.protection.engaged ? "ENGAGED" : "off", a.protection.engaged ? "engaged" : "");
      protection.title = a.protection.why;
      const cell = el("span"); cell.append(protection, " ", el("small", a.protection.why));
      return row([p.model, a.window, a.in_flight, a.tokens_in_flight, queued, num(a.saturation, 2), cell]);
    }));
    fill("#replicas", s.pools.flatMap((p) => p.replicas.map((r) => {
      const e = r.engine || {};
      const ttft = r.ttft_s ? `${num(r.ttft_s.p50, 3)} / ${num(r.ttft_s.p95, 3)} s` : "-";
      const kv = e.kv_usage === null || e.kv_usage === undefined ? "-" : `${num(e.kv_usage * 100, 0)} %`;
      const health = el("span", r.health, r.health === "up" ? "" : "engaged");
      if (e.error) health.title = e.error;
      return row([p.model, r.url, health, r.breaker, r.outstanding, num(e.running, 0), num(e.waiting, 0), kv,
        e.age_s === null || e.age_s === undefined ? "-" : `${num(e.age_s, 1)} s`, gpuUse(r.gpu_use),
        ttft, r.tpot_s ? `${num(r.tpot_s.p50 * 1000, 1)} ms` : "-", `${num(r.age_s, 0)} s`]);
    })));
    drawTtft(s);
    fill("#budgets", (s.budgets || []).map((b) => row([b.tier, b.per + (b.model ? ` (${b.model})` : ""), b.tenant || "",
      b.kind, `${b.limit} / ${num(b.period_s, 0)} s`, b.used === null ? "-" : b.used, b.remaining === null ? "-" : b.remaining])));
    fill("#groups", s.traffic.groups.map((g) => row([g.tier, g.tenant, num(g.requests_per_s), num(g.tokens_per_s),
      Object.entries(g.refused).map(([k, n]) => `${k}: ${n}`).join(", ")])));
    fill("#refusals", s.traffic.refusals.map((r) => row([`${num(r.ago_s, 0)} s`, r.request_id, r.shadow ? `${r.status} shadow` : r.status, r.reason, r.key_id, r.tenant, r.tier, r.model])));
  }

  // a replica's GPU use and framebuffer ("—": unknown, not read or stale)
  function gpuUse(g) {
    if (!g) return "\u2014";
    const mem = g.fb_used_mib === null || g.fb_free_mib === null ? ""
      : `, ${num(g.fb_used_mib / 1024, 1)} / ${num((g.fb_used_mib + g.fb_free_mib) / 1024, 1)} GiB`;
    return `${num(g.utilization * 100, 0)} %${mem}`;
  }

  // each replica's mean TTFT a second (the server keeps them), carried over the seconds without an answer
  function drawTtft(s) {
    const replicas = s.pools.flatMap((p) => p.replicas.filter((r) => r.ttft_series.length));
    const series = replicas.map((r) => {
      const points = r.ttft_series.slice(-HISTORY), dense = [];
      let at = 0, last = points[0][1];
      for (let ago = points[0][0]; ago >= 0; ago--) {
        if (at < points.length && points[at][0] === ago) { last = points[at][1]; at++; }
        dense.push(last);
      }
      return dense;
    });
    const classes = replicas.map((_, i) => `r${i % 4}`);
    chart("#chart-ttft", series, classes, 0.001);
    $("#ttft-legend").replaceChildren(...replicas.map((r, i) => el("span", new URL(r.url).host + " ", classes[i])));
  }

  function remember(s) {
    let inFlight = 0, window = 0, queued = 0;
    for (const p of s.pools) {
      if (!p.admission) continue;
      inFlight += p.admission.in_flight; window += p.admission.window;
      queued += Object.values(p.admission.queued).reduce((x, y) => x + y, 0);
    }
    admissionHistory.push({ in_flight: inFlight, window, queued });
    if (admissionHistory.length > HISTORY) admissionHistory.shift();
  }

  async function poll() {
    try {
      snapshot = await api("GET", "/console/api/snapshot");
      remember(snapshot);
      $("#status").textContent = `live · ${new Date().toLocaleTimeString()}`;
      if (view === "live") drawLive(snapshot);
      if (view === "engines" && !document.activeElement.closest("form")) drawEngines(snapshot);
    } catch (err) {
      $("#status").textContent = `snapshot failed: ${err.message}`;
    }
    setTimeout(poll, POLL_MS);
  }

  // -- keys ------------------------------------------------------------------------------------------------------
  async function loadKeys() {
    const doc = await admin("GET", "/admin/keys");
    fill("#keys", doc.data.map((k) => {
      const action = el("button", k.revoked ? "Restore" : "Revoke");
      action.type = "button";
      action.dataset.key = k.id;
      action.addEventListener("click", () => act(k.revoked ? "/admin/keys/restore" : "/admin/keys/revoke", { id: k.id }, loadKeys));
      return row([k.id, k.user, k.tenant, k.tier, k.source, k.revoked ? "revoked" : "active", action]);
    }));
  }

  async function act(path, body, then) {
    try { await admin("POST", path, body); say(""); await then(); } catch (err) { say(err.message); }
  }

  function tierOptions(select) {
    const names = snapshot ? Object.keys(snapshot.tiers) : ["default"];
    select.replaceChildren(...names.map((n) => el("option", n)));
  }

  $("#new-key").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const body = { id: form.get("id"), tenant: form.get("tenant") || "default", tier: form.get("tier") };
    if (form.get("user")) body.user = form.get("user");
    try {
      const made = await admin("POST", "/admin/keys", body);
      $("#new-key-shown code").textContent = made.key;
      $("#new-key-shown").hidden = false;
      event.target.reset();
      say("");
      await loadKeys();
    } catch (err) { say(err.message); }
  });

  // -- tiers: one form per tier, field by field --------------------------------------------------------------------
  const TIER_FIELDS = [["priority", "Priority"], ["weight", "Weight"], ["max_wait_s", "Max quota wait (s)"],
    ["max_queue_s", "Max queue wait (s)"], ["requests", "Requests"], ["tokens", "Tokens"], ["concurrent", "Concurrent"]];

  function drawTiers() {
    const box = $("#tiers");
    box.replaceChildren(...Object.entries(snapshot ? snapshot.tiers : {}).map(([name, tier]) => {
      const form = el("form", null, "tier");
      form.dataset.tier = name;
      form.append(el("h3", name));
      for (const [field, label] of TIER_FIELDS) {
        const rate = field === "requests" || field === "tokens";
        const l = el("label", rate ? `${label} per period` : label);
        const input = el("input");
        input.name = field;
        input.type = "number";
        input.step = "any";
        input.value = rate ? (tier[field] ? tier[field].amount : "") : (tier[field] ?? "");
        l.append(input);
        form.append(l);
        if (rate) {
          const p = el("label", `${label} period (s)`);
          const period = el("input");
          period.name = `${field}_period_s`; period.type = "number"; period.step = "any";
          period.value = tier[field] ? tier[field].period_s : 60;
          p.append(period);
          form.append(p);
        }
      }
      const save = el("button", "Save");
      save.type = "submit";
      form.append(save);
      if (tier.shadow) form.append(...shadowControls(name, tier.shadow));
      form.addEventListener("submit", (event) => { event.preventDefault(); saveTier(name, tier, new FormData(form)); });
      return form;
    }));
  }

  // A tier's shadow (candidate limits counted, never enforced): what it is, promote it live or drop it.
  function shadowControls(name, shadow) {
    const parts = ["requests", "tokens"].filter((f) => shadow[f]).map((f) => `${f} ${shadow[f].amount} per ${shadow[f].period_s} s`);
    if (shadow.concurrent !== null && shadow.concurrent !== undefined) parts.push(`concurrent ${shadow.concurrent}`);
    if (shadow.limits) parts.push(`${shadow.limits.length} limit(s)`);
    const buttons = [["Promote shadow", "POST", "/shadow/promote", "promoted"], ["Drop shadow", "DELETE", "/shadow", "dropped"]];
    return [el("p", `In shadow: ${parts.join(", ") || "limits removed"}`, "shadow"), ...buttons.map(([label, method, suffix, done]) => {
      const button = el("button", label);
      button.type = "button";
      button.dataset.shadow = done;
      button.addEventListener("click", async () => {
        try { await admin(method, `/admin/tiers/${encodeURIComponent(name)}${suffix}`); say(`Shadow of tier ${name} ${done}.`); } catch (err) { say(err.message); }
      });
      return button;
    })];
  }

  // Only the fields changed are sent (PATCH): the others keep their value, wherever it came from.
  async function saveTier(name, tier, form) {
    const settings = {};
    for (const [field] of TIER_FIELDS) {
      const raw = form.get(field);
      let value;
      if (field === "requests" || field === "tokens") {
        value = raw === "" ? null : { amount: Number(raw), period_s: Number(form.get(`${field}_period_s`) || 60), burst: tier[field] ? tier[field].burst : null };
      } else {
        value = raw === "" ? null : Number(raw);
      }
      if (JSON.stringify(value) !== JSON.stringify(tier[field] ?? null)) settings[field] = value;
    }
    if (Object.keys(settings).length === 0) { say("Nothing changed."); return; }
    try { await admin("PATCH", "/admin/tiers", { name, settings }); say(`Tier ${name} saved.`); } catch (err) { say(err.message); }
  }

  // -- usage -----------------------------------------------------------------------------------------------------
  $("#usage-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const query = new URLSearchParams({ scope: form.get("scope"), id: form.get("id") });
    if (form.get("day")) query.set("day", form.get("day"));
    try {
      const u = await admin("GET", `/admin/usage?${query}`);
      fill("#usage", [row([u.scope, u.id, u.day, u.requests, u.tokens_in, u.tokens_out])]);
      say("");
    } catch (err) { say(err.message); }
  });

  // -- engines ---------------------------------------------------------------------------------------------------
  function drawEngines(s) {
    $("#engine-details").replaceChildren(...s.pools.filter((p) => Object.keys(p.details).length).map((p) => {
      const box = el("details");
      box.append(el("summary", p.model), el("pre", JSON.stringify(p.details, null, 2)));
      return box;
    }));
    fill("#engine-replicas", s.pools.flatMap((p) => p.replicas.map((r) => {
      const actions = el("span");
      const cordoned = p.cordoned.includes(r.url);
      const drain = el("button", cordoned ? "Undrain" : "Drain");
      drain.type = "button";
      drain.addEventListener("click", () => act(cordoned ? "/admin/replicas/undrain" : "/admin/replicas/drain", { model: p.model, url: r.url }, refresh));
      actions.append(drain);
      if (r.sources.includes("admin")) {
        const remove = el("button", "Remove");
        remove.type = "button";
        remove.addEventListener("click", () => act("/admin/replicas/remove", { model: p.model, url: r.url }, refresh));
        actions.append(" ", remove);
      }
      return row([p.model, r.url, r.dialect, r.state, r.breaker, r.outstanding, r.sources.join(", "), actions]);
    }).concat(p.cordoned.filter((url) => !p.replicas.some((r) => r.url === url)).map((url) => {
      // drained and gone (no request left on it): kept out until undrained
      const undrain = el("button", "Undrain");
      undrain.type = "button";
      undrain.addEventListener("click", () => act("/admin/replicas/undrain", { model: p.model, url }, refresh));
      return row([p.model, url, "", "drained", "", 0, "", undrain]);
    }))));
    drawLaunched().catch((err) => say(err.message));
  }

  async function refresh() { snapshot = await api("GET", "/console/api/snapshot"); drawEngines(snapshot); }

  // launched engines (GET /admin/engines): per model its processes, scale -/+, restart, and a replica's log tail
  let shownLog = null;
  async function drawLaunched() {
    const models = (await admin("GET", "/admin/engines")).data.filter((m) => m.launched);
    if (shownLog && !models.some((m) => m.model === shownLog.model && m.fleet)) shownLog = null;  // stopped since
    if (!models.length) { $("#launched").replaceChildren(el("p", "No model's engines were launched by this gateway.")); return; }
    $("#launched").replaceChildren(...models.map((m) => {
      const box = el("div", null, "launched");
      box.dataset.model = m.model;
      box.dataset.state = m.state || "serving";
      const stop = el("button", "Stop model"); stop.type = "button"; stop.dataset.stop = m.model;
      stop.disabled = m.state === "stopping";
      stop.addEventListener("click", () => act("/admin/engines/stop", { model: m.model, drain_timeout_s: 60 }, drawLaunched));
      if (!m.fleet) {  // started at run time and not serving: starting, stopping or failed
        box.append(el("h3", `${m.model} (${m.backend}): ${m.state}`));
        if (m.error) box.append(el("p", m.error, "engaged"));
        if (m.state === "failed") stop.textContent = "Remove";  // its engines are gone already: forget it
        box.append(stop);
        return box;
      }
      const f = m.fleet, target = f.target === null ? f.replicas : f.target;
      const busy = f.scaling ? ` · scaling to ${f.target}` : f.restarting.length ? ` · restarting ${f.restarting.join(", ")}` : "";
      box.append(el("h3", `${m.model} (${m.dialect}): ${f.replicas} replica${f.replicas === 1 ? "" : "s"}${busy}${m.autoscaled ? " · autoscaled" : ""}`));
      if (f.last_error) box.append(el("p", f.last_error, "engaged"));
      const scale = (n) => { const b = el("button", n < target ? "Scale −" : "Scale +"); b.type = "button"; b.dataset.scale = n < target ? "down" : "up";
        b.disabled = m.autoscaled || n < 0; b.addEventListener("click", () => act("/admin/engines/scale", { model: m.model, replicas: n }, drawLaunched)); return b; };
      box.append(scale(target - 1), " ", scale(target + 1));
      if (m.started_at_runtime) box.append(" ", stop);
      const table = el("table");
      table.append(el("thead"), el("tbody"));
      table.tHead.append(row(["Replica", "PID", "Port", "GPUs", "State", "Restarts", ""]));
      table.tBodies[0].replaceChildren(...m.engines.map((e) => {
        const restart = el("button", "Restart"); restart.type = "button"; restart.dataset.url = e.url;
        restart.addEventListener("click", () => act("/admin/engines/restart", { model: m.model, url: e.url }, drawLaunched));
        const log = el("button", "Log"); log.type = "button"; log.dataset.log = e.url;
        log.addEventListener("click", () => { shownLog = { model: m.model, url: e.url }; drawLog().catch((err) => say(err.message)); });
        const actions = el("span"); actions.append(restart, " ", log);
        return row([e.url, e.pid, e.port, e.gpus.length ? e.gpus.join(",") : "none", e.state, e.restarts, actions]);
      }));
      box.append(table);
      return box;
    }));
    if (shownLog) await drawLog();
  }

  async function drawLog() {
    const query = new URLSearchParams({ model: shownLog.model, url: shownLog.url, lines: "200" });
    const tail = await admin("GET", `/admin/engines/logs?${query}`);
    $("#engine-log-title").textContent = `Log of ${tail.url} (${tail.model}), last ${tail.lines.length} lines`;
    $("#engine-log").textContent = tail.lines.join("\n");
  }

  // a new model: POST /admin/engines/models; its state shows under "Engines Sluice launched" (redrawn by the poll)
  $("#new-model").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const body = { name: form.get("name"), model: form.get("model"), backend: form.get("backend"), replicas: Number(form.get("replicas")) };
    for (const field of ["max_model_len", "tensor_parallel", "gpu_memory_utilization"]) if (form.get(field)) body[field] = Number(form.get(field));
    if (form.get("gpus")) body.gpus = form.get("gpus");
    act("/admin/engines/models", body, () => { document.activeElement.blur(); return drawLaunched(); });
  });

  $("#new-replica").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    act("/admin/replicas", { model: form.get("model"), url: form.get("url") }, refresh);
  });

  // -- load tests: sluice bench's engine, run by the gateway -------------------------------------------------------
  async function drawLoadTests() {
    const runs = (await api("GET", "/console/api/loadtests")).data;
    fill("#loadtests", runs.map((run) => {
      const s = run.summary, st = run.settings;
      const load = st.rate_per_s ? `${st.rate_per_s}/s` : `${st.concurrency || 8} users`;
      const stop = el("button", run.state === "running" ? "Stop" : "Show");
      stop.type = "button";
      stop.dataset.run = run.id;
      stop.addEventListener("click", async () => {
        if (run.state === "running") {
          try { await api("POST", "/console/api/loadtests/stop", { id: run.id }); } catch (err) { say(err.message); }
        }
        shownRun = run.id;
        drawLoadTests().catch((err) => say(err.message));
      });
      const pick = el("input");
      pick.type = "checkbox";
      pick.name = "compare";
      pick.value = run.id;
      pick.disabled = !s;
      pick.checked = comparing.has(run.id);
      pick.addEventListener("change", () => { if (pick.checked) comparing.add(run.id); else comparing.delete(run.id); });
      const ttft = s && s.latency_ms.ttft ? `${num(s.latency_ms.ttft.p50, 0)} / ${num(s.latency_ms.ttft.p99, 0)}` : "-";
      return row([run.id, run.state, `${load}, ${st.duration_s} s, ${st.model}`,
        `${run.progress.done} (${run.progress.ok} / ${run.progress.rejected})`,
        s ? num(s.throughput.requests_per_s) : "-", s ? num(s.throughput.output_tokens_per_s, 0) : "-", ttft,
        s ? `${num(100 * s.goodput.fraction_of_sent, 0)}%` : "-", stop, pick]);
    }));
    const shown = runs.find((run) => run.id === shownRun) || runs.find((run) => run.table);
    $("#loadtest-table").textContent = shown ? `run ${shown.id} (${shown.state})\n${shown.table}` : "";
    const plots = shown ? shown.plots.map((name) => {
      const img = el("img");
      img.src = `/console/api/loadtests/plot?${new URLSearchParams({ id: String(shown.id), name })}`;
      img.alt = `run ${shown.id}: ${name}`;
      img.dataset.plot = name;
      img.style.maxWidth = "100%";
      return img;
    }) : [];
    const plotsKey = shown ? `${shown.id}:${shown.plots.join(",")}` : "";
    if ($("#loadtest-plots").dataset.shown !== plotsKey) {  // redrawn only when they change: no reload flicker
      $("#loadtest-plots").replaceChildren(...plots);
      $("#loadtest-plots").dataset.shown = plotsKey;
    }
    if (view === "loadtests" && runs.some((run) => run.state === "running")) setTimeout(() => drawLoadTests().catch(() => {}), POLL_MS);
  }
  let shownRun = null;
  const comparing = new Set();

  $("#compare-loadtests").addEventListener("click", async () => {
    const ids = [...comparing].sort((a, b) => a - b);
    try {
      const doc = await api("GET", `/console/api/loadtests/compare?ids=${ids.join(",")}`);
      const names = Object.keys(doc.runs[0].figures);
      const table = $("#loadtest-compare");
      table.tHead.replaceChildren(row(["", ...doc.runs.map((r) => `run ${r.id}` + (r.id === doc.base ? "" : ` (x run ${doc.base})`))]));
      table.tBodies[0].replaceChildren(...names.map((name) => row([name, ...doc.runs.map((r) =>
        r.figures[name] === null ? "-" : num(r.figures[name]) + (r.id === doc.base || r.ratios[name] === null ? "" : ` (${num(r.ratios[name], 2)}x)`))])));
      table.hidden = false;
      say("");
    } catch (err) { say(err.message); }
  });

  $("#new-loadtest").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const body = { model: form.get("model"), duration_s: Number(form.get("duration_s")), stream: form.get("stream") === "on",
      input_len: form.get("input_len") || "sharegpt", output_len: form.get("output_len") || "sharegpt" };
    for (const field of ["rate_per_s", "concurrency", "slo_ttft_s", "slo_tpot_s"]) if (form.get(field)) body[field] = Number(form.get(field));
    for (const field of ["tenants", "api_key"]) if (form.get(field)) body[field] = form.get(field);
    try {
      const run = await api("POST", "/console/api/loadtests", body);
      shownRun = run.id;
      say("");
      await drawLoadTests();
    } catch (err) { say(err.message); }
  });

  // -- navigation ------------------------------------------------------------------------------------------------
  function show(name) {
    view = name;
    for (const tab of document.querySelectorAll("nav button")) tab.setAttribute("aria-selected", String(tab.dataset.view === name));
    for (const panel of document.querySelectorAll("main > section")) panel.hidden = panel.id !== `view-${name}`;
    say("");
    if (name === "keys") { tierOptions($("#new-key select[name=tier]")); loadKeys().catch((err) => say(err.message)); }
    if (name === "tiers") drawTiers();
    if (name === "engines" && snapshot) {
      $("#new-replica select[name=model]").replaceChildren(...snapshot.pools.map((p) => el("option", p.model)));
      drawEngines(snapshot);
    }
    if (name === "live" && snapshot) drawLive(snapshot);
    if (name === "loadtests") {
      if (snapshot) $("#new-loadtest select[name=model]").replaceChildren(...snapshot.pools.map((p) => el("option", p.model)));
      drawLoadTests().catch((err) => say(err.message));
    }
  }
  for (const tab of document.querySelectorAll("nav button")) tab.addEventListener("click", () => show(tab.dataset.view));
  $("#logout").addEventListener("click", async () => {
    try { await api("POST", "/console/logout"); } finally { location.assign("/console"); }
  });
  poll();
})();
