// KLECTR console: a client of the public API on this origin. The token lives
// in sessionStorage only; every value from the server is shown as text.
"use strict";
(() => {
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, props = {}, ...kids) => {
    const e = Object.assign(document.createElement(tag), props);
    e.append(...kids);
    return e;
  };
  const KEY = "klectr.token";
  const STATES = ["pending", "active", "retrying", "completed", "dead"];
  const EVERY = 5000, HOUR = 3600e3;
  const OPERATOR = new Set(["queues", "jobs"]);

  let token = null, claims = null;
  const say = (msg) => { $("#status").textContent = msg; };

  // --- session --------------------------------------------------------------

  function decodeClaims(t) {
    const parts = t.split(".");
    if (parts.length !== 3) throw new Error("This is not a token: it should have three parts separated by dots.");
    const bin = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
    const c = JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (ch) => ch.charCodeAt(0))));
    if (typeof c.sub !== "string" || c.sub === "") throw new Error("The token names no user (claim sub).");
    if (typeof c.exp === "number" && c.exp * 1000 <= Date.now()) throw new Error("The token has expired; make a new one.");
    return c;
  }
  const isAdmin = () => claims !== null && claims.role === "admin";

  async function signIn(t) {
    const c = decodeClaims(t);
    token = t;
    claims = c;
    // The server has the last word: a token it refuses does not sign in.
    const r = await api("GET", "/api/assets?limit=1");
    if (r.status !== 200) {
      token = claims = null;
      throw new Error(r.status === 401 ? "The server refused this token (wrong secret or expired)." : message(r));
    }
    sessionStorage.setItem(KEY, t);
    $("#who-name").textContent = `${c.sub} (${isAdmin() ? "admin" : "user"})`;
    $("#who").hidden = $("#nav").hidden = false;
    document.querySelectorAll("[data-admin]").forEach((a) => { a.hidden = !isAdmin(); });
    if (isAdmin()) startSampling();
    fillExamples();
  }

  // Signing out reloads the page: nothing of the session (uploads, their
  // thumbnails, job listings, the chart) outlives it in memory.
  function signOut(why) {
    sessionStorage.removeItem(KEY);
    sessionStorage.setItem(`${KEY}.why`, why);
    location.reload();
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${token}` };
    let res;
    try {
      res = await fetch(path, { method, headers, body, cache: "no-store" });
    } catch (e) {
      return { status: 0, data: { error: { message: `The server cannot be reached (${e.message}).` } } };
    }
    const data = (res.headers.get("Content-Type") || "").includes("json") ? await res.json().catch(() => null) : null;
    if (res.status === 401 && token && path !== "/api/assets?limit=1") signOut("The server no longer accepts your token: sign in again.");
    return { status: res.status, data };
  }
  const message = (r) => (r.data && r.data.error && r.data.error.message) || `The server answered ${r.status}.`;

  // --- views ----------------------------------------------------------------

  let current = null;
  function route() {
    let view = location.hash.slice(1) || (isAdmin() ? "queues" : "dev");
    if (!token) view = "signin";
    else if (OPERATOR.has(view) && !isAdmin()) view = "denied";
    else if (!["dev", "queues", "jobs"].includes(view)) view = "dev";
    document.querySelectorAll("main > section").forEach((s) => { s.hidden = s.id !== `view-${view}`; });
    document.querySelectorAll("#nav a").forEach((a) => {
      if (a.dataset.view === view) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
    if (view === "denied") $("#denied-who").textContent = claims.sub;
    if (view === "dev") connectSocket();
    if (view === "jobs") loadJobs();
    if (view === "queues") renderQueues();
    // Move focus to the new view's heading, so keyboard and screen reader
    // users start there; not on the first load.
    if (current !== null && current !== view) {
      say("");
      document.querySelector(`#view-${view} h2`).focus();
    }
    current = view;
    document.title = `${document.querySelector(`#view-${view} h2`).textContent} · KLECTR console`;
  }

  // --- developer view -------------------------------------------------------

  let socket = null;
  const uploads = new Map(); // assetId -> its card's parts
  const early = new Map();   // assetId -> an event that came before the upload's reply

  function connectSocket() {
    if (socket || typeof io !== "function") return;
    socket = io({ path: "/socket.io/", auth: { token } }); // this origin
    socket.on("connect", () => { $("#live").textContent = "connected"; catchUp(); });
    socket.on("disconnect", (reason) => {
      $("#live").textContent = `disconnected (${reason})`;
      // The server ends the socket when the token expires; it does not come back by itself.
      if (reason === "io server disconnect") { socket = null; }
    });
    socket.on("connect_error", (err) => { $("#live").textContent = `cannot connect: ${err.message}`; });
    socket.on("asset_processed", (ev) => {
      showEvent(ev, "(the last one you received)");
      const u = uploads.get(ev.assetId);
      if (u) settle(u, ev.status === "completed" ? "draft" : "failed", ev.aiMetadata, ev.error);
      else early.set(ev.assetId, ev);
    });
  }

  // Events sent while the socket was down are not sent again: read the
  // assets still processing, as the apps do after every (re)connect.
  async function catchUp() {
    for (const [id, u] of uploads) {
      if (u.status !== "processing") continue;
      const r = await api("GET", `/api/assets/${encodeURIComponent(id)}`);
      if (r.status === 200 && r.data.status !== "processing") settle(u, r.data.status, r.data.aiMetadata, r.data.error);
    }
  }

  function addUpload(a, file) {
    const badge = el("span", { className: "badge processing", textContent: "processing" });
    const img = el("img", { alt: `Your photo ${a.filename}`, width: 96, height: 96 });
    if (file) {
      img.src = URL.createObjectURL(file);
      img.onerror = () => { img.replaceWith(el("span", { className: "thumb-none", textContent: "no preview" })); };
    }
    const meta = el("pre", { tabIndex: 0, textContent: "analysing…" });
    const li = el("li", { className: "card" }, img, el("div", { className: "card-body" },
      el("p", {}, el("strong", { textContent: a.filename }), " ", badge),
      el("p", { className: "help" }, "asset ", el("code", { textContent: a.assetId }), " · job ", el("code", { textContent: a.jobId })),
      el("details", {}, el("summary", { textContent: "aiMetadata" }), meta)));
    li.dataset.assetId = a.assetId;
    $("#uploads").prepend(li);
    const u = { status: "processing", badge, meta, li, name: a.filename };
    uploads.set(a.assetId, u);
    const ev = early.get(a.assetId);
    if (ev) { early.delete(a.assetId); settle(u, ev.status === "completed" ? "draft" : "failed", ev.aiMetadata, ev.error); }
  }

  function settle(u, status, aiMetadata, error) {
    if (u.status === status) return; // a repeated event
    u.status = status;
    u.badge.textContent = status;
    u.badge.className = `badge ${status}`;
    u.li.dataset.status = status;
    u.meta.textContent = status === "draft" ? JSON.stringify(aiMetadata, null, 2)
      : `failed: ${error ? `${error.code}: ${error.message}` : "no reason given"}`;
    if (status === "draft") u.meta.parentElement.open = true;
    $("#dev-announce").textContent = `${u.name} is now ${status}.`;
  }

  function showEvent(ev, which) {
    $("#event-ex").textContent = JSON.stringify(ev, null, 2);
    $("#event-which").textContent = which;
  }

  $("#upload-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const files = [...$("#files").files];
    if (files.length === 0) { say("Choose one or more photos first."); $("#files").focus(); return; }
    const form = new FormData();
    for (const f of files) form.append("images", f, f.name);
    const button = e.submitter || $("#upload-form button");
    button.disabled = true;
    say(`Uploading ${files.length} photo(s)…`);
    const r = await api("POST", "/api/assets/analyze-queue", form);
    button.disabled = false;
    if (r.status !== 202) { say(`Upload refused: ${message(r)}`); return; }
    r.data.assets.forEach((a, i) => addUpload(a, files[i]));
    say(`Uploaded ${r.data.assets.length} photo(s); each is processing.`);
    $("#files").value = "";
  });

  function fillExamples() {
    $("#curl-ex").textContent = [
      `# TOKEN=$(klectr token ${claims.sub.replace(/[^\w.@-]/g, "_")})   # the token is never shown here`,
      "curl -H \"Authorization: Bearer $TOKEN\" \\",
      "     -F images=@photo.jpg -F images=@back.jpg \\",
      `     ${location.origin}/api/assets/analyze-queue`,
    ].join("\n");
    showEvent({
      eventId: "01JDQ7ZK4M8W6G3R2N5T9V0XYA", assetId: "01JDQ7Y8W2P3K4M5N6Q7R8S9TA", jobId: "01JDQ7Y8W2P3K4M5N6Q7R8S9TB",
      userId: claims.sub, status: "completed", aiMetadata: { provider: "builtin", format: "jpeg", width: 4032, height: 3024 },
      error: null, attempts: 1, processedAt: "2026-11-29T01:02:03.456Z",
    }, "(example; your next one replaces it)");
  }

  document.addEventListener("click", async (e) => {
    const id = e.target.dataset && e.target.dataset.copy;
    if (!id) return;
    const text = $(`#${id}`).textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Not a secure context (plain http on another host): select it instead.
      getSelection().selectAllChildren($(`#${id}`));
      say("Selected: press Ctrl+C (⌘C) to copy.");
      return;
    }
    say("Copied.");
  });

  // --- operator views -------------------------------------------------------

  const series = []; // {t, counts}: the server's last hour, then this page's samples
  let timer = null, last = null, sampling = false;
  const shown = new Set(["pending", "active", "retrying", "dead"]);

  function startSampling() { if (!timer) { sample(); timer = setInterval(sample, EVERY); } }
  function stopSampling() { clearInterval(timer); timer = null; }

  async function sample() {
    if (sampling) return; // the previous one is still waiting
    sampling = true;
    try {
      // The first request also takes the server's last hour for the chart.
      const r = await api("GET", series.length ? "/api/admin/queues" : "/api/admin/queues?history=1h");
      if (r.status !== 200) { $("#counts-at").textContent = `(not updated: ${message(r)})`; return; }
      const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
      for (const q of r.data.queues) for (const s of STATES) counts[s] += q.counts[s] || 0;
      for (const h of r.data.history || []) {
        series.push({ t: Date.parse(h.at), counts: Object.fromEntries(STATES.map((s) => [s, h.counts[s] || 0])) });
      }
      const now = Date.now();
      series.push({ t: now, counts });
      while (series.length && series[0].t < now - HOUR) series.shift();
      const changed = last && STATES.filter((s) => last[s] !== counts[s]);
      if (changed && changed.length) $("#changes").textContent = (`Jobs changed at ${new Date(now).toLocaleTimeString()}: ${changed.map((s) => `${s} ${last[s]} → ${counts[s]}`).join(", ")}.`);
      const refreshJobs = !last || (changed && changed.length);
      last = counts;
      if (current === "queues") renderQueues();
      for (const o of $("#job-state").options) o.textContent = `${o.value} (${counts[o.value]})`;
      if (current === "jobs" && refreshJobs) loadJobs();
    } finally {
      sampling = false;
    }
  }

  async function renderQueues() {
    if (last) {
      $("#counts tbody").replaceChildren(...STATES.map((s) => el("tr", { className: `state-${s}` },
        el("th", { scope: "row" }, el("a", { href: "#jobs", textContent: s, onclick: () => { $("#job-state").value = s; } })),
        el("td", { textContent: String(last[s]) }))));
      $("#counts-at").textContent = `(at ${new Date(series[series.length - 1].t).toLocaleTimeString()})`;
    }
    drawChart();
    health();
    if (Date.now() - sloAt > 60e3) slo();
  }

  // The SLO panel: fetched when the view opens (at most once a minute) and
  // on Refresh; the store does the work, so it is not polled.
  let sloAt = 0;
  async function slo() {
    sloAt = Date.now();
    const w = $("#slo-window").value;
    const r = await api("GET", `/api/admin/slo?window=${encodeURIComponent(w)}`);
    if (r.status !== 200) { $("#slo-at").textContent = `(not available: ${message(r)})`; return; }
    const secs = (v) => (v < 1 ? `${Math.round(v * 1000)} ms` : Number.isInteger(v) ? `${v} s` : `${v.toFixed(2)} s`);
    $("#slo-table tbody").replaceChildren(...r.data.objectives.map((o) => {
      const met = o.met === null ? "no data" : o.met ? "yes" : "no";
      return el("tr", {},
        el("th", { scope: "row", textContent: o.name, title: o.description }),
        el("td", { textContent: `p${o.percentile} < ${secs(o.targetSeconds)}` }),
        el("td", { textContent: o.valueSeconds === null ? "—" : secs(o.valueSeconds) }),
        el("td", { textContent: String(o.samples) }),
        el("td", { textContent: met, className: o.met === null ? "" : o.met ? "ok" : "bad" }));
    }));
    $("#slo-at").textContent = `(${r.data.sampled} upload(s) since ${new Date(r.data.from).toLocaleString()}${r.data.truncated ? "; capped at the newest " + r.data.sampleLimit : ""})`;
  }
  $("#slo-form").addEventListener("submit", (e) => { e.preventDefault(); slo(); });
  $("#slo-window").addEventListener("change", () => slo());

  let healthAt = 0;
  async function health() {
    if (Date.now() - healthAt < EVERY - 500) return;
    healthAt = Date.now();
    const ready = await fetch("/readyz", { cache: "no-store" }).then(async (res) => {
      if (res.ok) return "ready";
      const b = await res.json().catch(() => null);
      return `not ready: ${(b && b.error && b.error.message) || res.status}`;
    }, () => "unreachable");
    $("#ready").textContent = ready;
    $("#ready").className = ready === "ready" ? "ok" : "bad";
    // The breaker's state is exported as klectr_ai_breaker_state{state="…"} 1.
    const text = await fetch("/metrics", { cache: "no-store" }).then((res) => (res.ok ? res.text() : ""), () => "");
    const m = text.match(/^klectr_ai_breaker_state\{state="([a-z-]+)"\} 1$/m);
    $("#circuit").textContent = m ? m[1] : "not reported by this server";
    $("#circuit").className = m ? (m[1] === "closed" ? "ok" : "bad") : "";
  }

  function drawChart() {
    const svg = $("#chart");
    const NS = "http://www.w3.org/2000/svg";
    const W = 600, H = 160;
    // One sample is drawn as a level line across the chart.
    const pts = series.length === 1 ? [series[0], { t: series[0].t + EVERY, counts: series[0].counts }] : series;
    const t0 = pts.length ? pts[0].t : Date.now(), t1 = pts.length ? pts[pts.length - 1].t : t0;
    const span = Math.max(t1 - t0, EVERY);
    const max = Math.max(1, ...pts.flatMap((p) => STATES.filter((s) => shown.has(s)).map((s) => p.counts[s])));
    const lines = STATES.filter((s) => shown.has(s)).map((s) => {
      const pl = document.createElementNS(NS, "polyline");
      pl.setAttribute("class", `line state-${s}`);
      pl.setAttribute("points", pts.map((p) => `${((p.t - t0) / span) * W},${H - 4 - (p.counts[s] / max) * (H - 8)}`).join(" "));
      return pl;
    });
    svg.replaceChildren(...lines);
    $("#chart-range").textContent = series.length
      ? `${series.length} sample(s) from ${new Date(series[0].t).toLocaleTimeString()} to ${new Date(series[series.length - 1].t).toLocaleTimeString()}; top of the chart: ${max} job(s).`
      : "No sample yet.";
  }

  function buildLegend() {
    $("#legend").replaceChildren(...STATES.map((s) => {
      const box = el("input", { type: "checkbox", checked: shown.has(s), id: `show-${s}` });
      box.addEventListener("change", () => { if (box.checked) shown.add(s); else shown.delete(s); drawChart(); });
      return el("span", { className: `key state-${s}` }, box, el("label", { htmlFor: `show-${s}`, textContent: s }));
    }));
  }

  // Jobs: the listing of one state, filtered here by job, asset or user id.
  let jobs = [], listed = "";
  async function loadJobs() {
    const state = $("#job-state").value;
    const r = await api("GET", `/api/admin/jobs?state=${state}&limit=1000`);
    if (r.status !== 200) { $("#jobs-summary").textContent = `Not loaded: ${message(r)}`; return; }
    jobs = r.data.jobs;
    listed = state;
    renderJobs();
  }

  function filtered() {
    const q = $("#job-search").value.trim().toLowerCase();
    if (!q) return jobs;
    return jobs.filter((j) => [j.id, j.payload && j.payload.assetId, j.payload && j.payload.userId]
      .some((v) => typeof v === "string" && v.toLowerCase().includes(q)));
  }

  function renderJobs() {
    const list = filtered();
    $("#jobs tbody").replaceChildren(...list.map((j) => {
      const p = j.payload || {};
      const open = el("button", { type: "button", className: "link", textContent: j.id, onclick: () => openJob(j.id) });
      open.setAttribute("aria-label", `Job ${j.id}: details`);
      const cells = [["Job", open], ["Asset", el("code", { textContent: p.assetId || "" })], ["User", p.userId || ""],
        ["Attempts", `${j.attempt} / ${j.maxAttempts}`], ["Enqueued", new Date(j.enqueuedAt).toLocaleString()],
        ["Last error", j.errors.length ? j.errors[j.errors.length - 1] : ""]];
      // data-label names the cell when a phone-width screen stacks the row.
      return el("tr", {}, ...cells.map(([label, v]) => {
        const td = el("td", {}, v);
        td.dataset.label = label;
        return td;
      }));
    }));
    $("#jobs-summary").textContent = `${list.length} of ${jobs.length} ${listed} job(s) shown${jobs.length === 1000 ? " (the newest 1000)" : ""}.`;
    $("#bulk").hidden = !(listed === "dead" && list.length > 0);
    $("#replay-all").textContent = `Replay all ${list.length} shown`;
    $("#delete-all").textContent = `Delete all ${list.length} shown`;
  }

  $("#job-state").addEventListener("change", () => { $("#job-detail").hidden = true; loadJobs(); });
  $("#job-search").addEventListener("input", renderJobs);
  $("#jobs-form").addEventListener("submit", (e) => e.preventDefault());

  let detail = null;
  async function openJob(id) {
    const r = await api("GET", `/api/admin/jobs/${encodeURIComponent(id)}`);
    if (r.status !== 200) { say(`Job ${id}: ${message(r)}`); return; }
    const j = detail = r.data;
    $("#detail-h").textContent = `Job ${j.id}`;
    const facts = [["state", j.state], ["queue", j.queue], ["attempts", `${j.attempt} of at most ${j.maxAttempts}`],
      ["enqueued", new Date(j.enqueuedAt).toLocaleString()], ["finished", j.finishedAt ? new Date(j.finishedAt).toLocaleString() : "—"]];
    $("#detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { textContent: k }), el("dd", { textContent: v })]));
    $("#detail-errors").replaceChildren(...(j.errors.length ? j.errors.map((e) => el("li", { textContent: e }))
      : [el("li", { className: "help", textContent: "no error recorded" })]));
    $("#detail-payload").textContent = JSON.stringify(j.payload, null, 2);
    $("#detail-replay").hidden = j.state !== "dead";
    $("#detail-delete").hidden = j.state === "active";
    $("#job-detail").hidden = false;
    $("#detail-h").focus();
  }

  async function act(verb, ids) {
    let done = 0;
    const failed = [];
    for (const id of ids) {
      const r = verb === "replay"
        ? await api("POST", `/api/admin/jobs/${encodeURIComponent(id)}/retry`)
        : await api("DELETE", `/api/admin/jobs/${encodeURIComponent(id)}`);
      if (r.status === 200 || r.status === 204) done++;
      else failed.push(`${id}: ${message(r)}`);
    }
    say(`${verb === "replay" ? "Replayed" : "Deleted"} ${done} job(s).${failed.length ? ` Not done: ${failed.join("; ")}` : ""}`);
    $("#job-detail").hidden = true;
    await loadJobs();
    sample();
  }

  $("#detail-replay").addEventListener("click", () => {
    if (confirm(`Replay job ${detail.id}? Its asset goes back to processing.`)) act("replay", [detail.id]);
  });
  $("#detail-delete").addEventListener("click", () => {
    if (confirm(`Delete job ${detail.id}? This cannot be undone.`)) act("delete", [detail.id]);
  });
  $("#detail-close").addEventListener("click", () => { $("#job-detail").hidden = true; $("#jobs-h").focus(); });
  $("#replay-all").addEventListener("click", () => {
    const ids = filtered().map((j) => j.id);
    if (confirm(`Replay ${ids.length} dead job(s)? Their assets go back to processing.`)) act("replay", ids);
  });
  $("#delete-all").addEventListener("click", () => {
    const ids = filtered().map((j) => j.id);
    if (confirm(`Delete ${ids.length} dead job(s)? This cannot be undone.`)) act("delete", ids);
  });

  // --- start ----------------------------------------------------------------

  $("#signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("#signin-error").textContent = "";
    try {
      await signIn($("#token").value.trim());
      $("#token").value = "";
      route();
    } catch (err) {
      $("#signin-error").textContent = err.message;
    }
  });
  $("#signout").addEventListener("click", () => { signOut("Signed out."); });
  window.addEventListener("hashchange", route);

  buildLegend();
  say(sessionStorage.getItem(`${KEY}.why`) || "");
  sessionStorage.removeItem(`${KEY}.why`);
  const saved = sessionStorage.getItem(KEY);
  if (saved) signIn(saved).then(route, () => signOut("Your saved session ended: sign in again."));
  else route();
})();
