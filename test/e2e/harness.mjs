// harness.mjs drives official socket.io-client sockets for the Go end-to-end
// tests (internal/realtime, and internal/app against a running klectr): keep
// its line protocol compatible for both. It reads one JSON command per line on stdin and
// writes one JSON line per thing a socket observes on stdout:
//
//   {"op":"connect","name":"a","url":"http://127.0.0.1:1234","opts":{...}}
//       opens io(url, {forceNew: true, ...opts}) as socket "name"
//   {"op":"disconnect","name":"a"}          socket.disconnect()
//   {"op":"cut","name":"a"}                 socket.io.engine.close(): the
//       connection drops as on a network loss; the client reconnects by
//       itself after its reconnectionDelay
//   {"op":"emitWithAck","name":"a","event":"hello","args":[1]}
//   {"op":"churn","name":"c","url":...,"opts":{...},"rounds":1000,"lanes":2}
//       in each lane, rounds/lanes times: connect a new socket while the
//       lane's old one disconnects, wait for the new one's connect; then
//       prints {"ev":"churn_done","live":[names]}
//   {"op":"exit"}
//
// Output lines: {"name","ev":"open"|"connect"|"connect_error"|"disconnect"|"event"|
// "upgrade"|"reconnect"|"ack"|"error", ...}; "connect" carries "recovered"
// (socket.recovered: connection state recovery). Every line carries "t", the
// wall-clock receive time in milliseconds with sub-millisecond precision.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const sockets = new Map();
const now = () => performance.timeOrigin + performance.now();
const out = (obj) => process.stdout.write(JSON.stringify({ t: now(), ...obj }) + "\n");

function open(name, url, opts) {
  const socket = io(url, { forceNew: true, ...opts });
  sockets.set(name, socket);
  socket.io.on("open", () => {
    const engine = socket.io.engine;
    out({ name, ev: "open", transport: engine.transport.name });
    engine.on("upgrade", (t) => out({ name, ev: "upgrade", transport: t.name }));
  });
  socket.on("connect", () =>
    out({ name, ev: "connect", id: socket.id, transport: socket.io.engine.transport.name, recovered: socket.recovered === true }),
  );
  socket.on("connect_error", (err) => out({ name, ev: "connect_error", message: err.message, data: err.data ?? null }));
  socket.on("disconnect", (reason) => out({ name, ev: "disconnect", reason }));
  socket.onAny((event, ...args) => out({ name, ev: "event", event, args }));
  socket.io.on("reconnect", (attempt) => out({ name, ev: "reconnect", attempt }));
  return socket;
}

function connected(socket) {
  return new Promise((resolve, reject) => {
    if (socket.connected) return resolve();
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
}

async function churn({ name, url, opts, rounds, lanes }) {
  let seq = 0;
  const lane = async (l) => {
    let current = open(`${name}-${l}-${seq++}`, url, opts);
    await connected(current);
    for (let i = 0; i < rounds / lanes; i++) {
      const old = current;
      const oldName = [...sockets].find(([, s]) => s === old)[0];
      const next = `${name}-${l}-${seq++}`;
      current = open(next, url, opts);
      old.disconnect(); // leaves while the new one joins
      sockets.delete(oldName);
      await connected(current);
    }
  };
  await Promise.all(Array.from({ length: lanes }, (_, l) => lane(l)));
  const live = [...sockets].filter(([n, s]) => n.startsWith(`${name}-`) && s.connected).map(([n]) => n);
  out({ name, ev: "churn_done", live });
}

async function run(cmd) {
  switch (cmd.op) {
    case "connect":
      open(cmd.name, cmd.url, cmd.opts ?? {});
      break;
    case "disconnect":
      sockets.get(cmd.name)?.disconnect();
      break;
    case "cut":
      sockets.get(cmd.name)?.io.engine?.close();
      break;
    case "emitWithAck": {
      const reply = await sockets.get(cmd.name).timeout(5000).emitWithAck(cmd.event, ...(cmd.args ?? []));
      out({ name: cmd.name, ev: "ack", args: [reply] });
      break;
    }
    case "churn":
      await churn(cmd);
      break;
    case "exit":
      for (const s of sockets.values()) s.disconnect();
      process.exit(0);
      break;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  run(cmd).catch((err) => out({ name: cmd.name, ev: "error", message: String(err?.message ?? err) }));
});
lines.on("close", () => process.exit(0));
out({ ev: "ready" });
