// load.mjs holds many official socket.io-client sockets for the Go load test
// (internal/realtime/load_test.go, run only when KLECTR_LOAD is set). It
// reads one JSON config line on stdin:
//   {"url":"http://127.0.0.1:1234","clients":[{"user":"u1","token":"..."}],
//    "opts":{...io options...},"connectBatch":50}
// connects every client (connectBatch at a time), prints {"ev":"ready"},
// then records every asset_processed event. The event's eventId is
// "<seq>-<send time in Unix microseconds>", so each receipt gives a lag.
// On {"op":"expect","n":N} it prints {"ev":"reached"} once N events have
// arrived since the last report; on {"op":"report"} it prints a summary and
// clears the counters; on {"op":"exit"} it closes every socket and exits.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const nowUs = () => (performance.timeOrigin + performance.now()) * 1000;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

let lags = [];
let received = 0;
let duplicates = 0;
let misdelivered = 0;
let firstAt = 0;
let lastAt = 0;
const sockets = [];

function connectOne(url, opts, client) {
  return new Promise((resolve, reject) => {
    const socket = io(url, { forceNew: true, reconnection: false, ...opts, auth: { token: client.token } });
    const seen = new Set();
    socket.on("asset_processed", (ev) => {
      const t = nowUs();
      if (ev.userId !== client.user) misdelivered++;
      if (seen.has(ev.eventId)) duplicates++;
      seen.add(ev.eventId);
      const sentUs = Number(ev.eventId.split("-")[1]);
      lags.push((t - sentUs) / 1000);
      received++;
      if (!firstAt) firstAt = t;
      lastAt = t;
      check();
    });
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", reject);
    socket.on("disconnect", (reason) => {
      if (reason !== "io client disconnect") out({ ev: "disconnect", user: client.user, reason });
    });
  });
}

function pct(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function start(cfg) {
  const t0 = nowUs();
  const batch = cfg.connectBatch ?? 50;
  for (let i = 0; i < cfg.clients.length; i += batch) {
    const part = cfg.clients.slice(i, i + batch);
    sockets.push(...(await Promise.all(part.map((c) => connectOne(cfg.url, cfg.opts ?? {}, c)))));
  }
  out({ ev: "ready", sockets: sockets.length, connectMs: (nowUs() - t0) / 1000,
        transports: [...new Set(sockets.map((s) => s.io.engine.transport.name))] });
}

function report() {
  const sorted = lags.sort((a, b) => a - b);
  out({ ev: "report", received, duplicates, misdelivered,
        p50: pct(sorted, 50), p90: pct(sorted, 90), p99: pct(sorted, 99), max: sorted.at(-1) ?? null,
        spanMs: lastAt ? (lastAt - firstAt) / 1000 : 0 });
  lags = []; received = 0; duplicates = 0; misdelivered = 0; firstAt = 0; lastAt = 0;
}

let expect = 0;
function check() {
  if (expect && received >= expect) { expect = 0; out({ ev: "reached", received }); }
}

let started = false;
createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const msg = JSON.parse(line);
  if (!started) {
    started = true;
    start(msg).catch((err) => { out({ ev: "error", message: String(err?.message ?? err) }); process.exit(1); });
    return;
  }
  if (msg.op === "report") report();
  if (msg.op === "expect") { expect = msg.n; check(); }
  if (msg.op === "exit") { for (const s of sockets) s.disconnect(); process.exit(0); }
});
