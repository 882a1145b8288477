// The original plan's Node.js stack, as a measurement fixture for
// test/load/compare.sh (issue 9, targets 3 and 5): Express 5 + Multer
// (memory storage) for POST /api/assets/analyze-queue, JWT auth, a Mongoose
// Asset model, a BullMQ queue "ai-processing" on Redis and Socket.IO rooms
// user:<sub> for asset_processed. Not product code; see README.md.
//
//   node server.js          API + Socket.IO (app.js of the plan)
//   node server.js worker   the BullMQ worker (ai.worker.js of the plan)
//
// Environment: JWT_SECRET, MONGODB_URI (the database is the URI's path),
// REDIS_URL, AI_SERVICE_URL (POST <url>/analyze, multipart image + assetId),
// ADDR (127.0.0.1:0), WORKER_CONCURRENCY (50).
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');
const express = require('express');
const multer = require('multer');
const jwt = require('jsonwebtoken');
const mongoose = require('mongoose');
const IORedis = require('ioredis');
const { Queue, Worker, QueueEvents } = require('bullmq');
const { Server } = require('socket.io');

const env = (k, d) => process.env[k] || d;
const SECRET = env('JWT_SECRET');
const QUEUE = 'ai-processing';
const ATTEMPTS = 4; // the plan: 3 retries with exponential backoff
const MAX_FILE_BYTES = 10 << 20; // our MAX_FILE_BYTES and MAX_FILES defaults
const MAX_FILES = 10;
if (!SECRET || SECRET.length < 32) throw new Error('JWT_SECRET (>= 32 bytes) is required');

// The Asset model of the plan: processingJobId, status, aiMetadata.
const Asset = mongoose.model('Asset', new mongoose.Schema({
  userId: { type: String, required: true, index: true },
  status: { type: String, enum: ['processing', 'draft', 'failed'], default: 'processing' },
  processingJobId: { type: String, index: true },
  filename: String,
  contentType: String,
  size: Number,
  sha256: String,
  aiMetadata: { type: mongoose.Schema.Types.Mixed, default: null },
  error: { type: mongoose.Schema.Types.Mixed, default: null },
  attempts: { type: Number, default: 0 },
  processedAt: { type: Date, default: null },
}, { timestamps: true }));

// BullMQ wants maxRetriesPerRequest: null on its connections.
const redis = () => new IORedis(env('REDIS_URL'), { maxRetriesPerRequest: null });

function eventOf(asset, jobId, attempts) {
  return {
    eventId: `${jobId}:${asset.status}`,
    assetId: String(asset._id),
    jobId,
    userId: asset.userId,
    status: asset.status === 'draft' ? 'completed' : 'failed',
    aiMetadata: asset.status === 'draft' ? asset.aiMetadata : null,
    error: asset.status === 'draft' ? null : asset.error,
    attempts,
    processedAt: asset.processedAt.toISOString(), // always milliseconds, Z
  };
}

// Magic bytes of JPEG, PNG, WebP and HEIC/HEIF (the client's type is not trusted).
function imageType(b) {
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'image/jpeg';
  if (b.length >= 8 && b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return 'image/png';
  if (b.length >= 12 && b.toString('latin1', 0, 4) === 'RIFF' && b.toString('latin1', 8, 12) === 'WEBP') return 'image/webp';
  if (b.length >= 12 && b.toString('latin1', 4, 8) === 'ftyp' && /^(heic|heix|mif1|msf1|heif)$/.test(b.toString('latin1', 8, 12))) return 'image/heic';
  return null;
}

const fail = (res, status, code, message) => res.status(status).json({ error: { code, message } });

// One KeyObject: given the string, jsonwebtoken 9 tries createPublicKey on
// every verify and falls back after its exception (~9 % of the API's
// profile samples under the bench).
const KEY = crypto.createSecretKey(Buffer.from(SECRET));
function userOf(token) {
  return jwt.verify(token, KEY, { algorithms: ['HS256'] }).sub;
}

async function api() {
  await mongoose.connect(env('MONGODB_URI'));
  const queue = new Queue(QUEUE, { connection: redis() });
  const app = express();
  const upload = multer({ storage: multer.memoryStorage(), limits: { fileSize: MAX_FILE_BYTES, files: MAX_FILES } });

  const auth = (req, res, next) => {
    const m = /^Bearer (.+)$/.exec(req.get('authorization') || '');
    try {
      req.userId = m && userOf(m[1]);
    } catch { /* below */ }
    if (!req.userId) return fail(res, 401, 'unauthorized', 'missing or invalid token');
    next();
  };
  const files = (req, res, next) => upload.array('images', MAX_FILES)(req, res, (err) => {
    if (!err) return next();
    if (err.code === 'LIMIT_FILE_SIZE') return fail(res, 413, 'file_too_large', 'a file is over 10 MiB');
    if (err.code === 'LIMIT_FILE_COUNT') return fail(res, 400, 'too_many_files', 'more than 10 files');
    return fail(res, 400, 'bad_request', 'broken multipart or unknown field');
  });

  app.post('/api/assets/analyze-queue', auth, files, async (req, res) => {
    if (!req.files || req.files.length === 0) return fail(res, 400, 'no_files', 'no file in field images');
    const types = req.files.map((f) => imageType(f.buffer));
    if (types.includes(null)) return fail(res, 415, 'unsupported_media_type', 'not JPEG, PNG, WebP or HEIC');
    try {
      const out = await Promise.all(req.files.map(async (f, i) => {
        const jobId = new mongoose.Types.ObjectId().toString();
        const asset = await Asset.create({
          userId: req.userId, processingJobId: jobId, filename: f.originalname, contentType: types[i],
          size: f.size, sha256: crypto.createHash('sha256').update(f.buffer).digest('hex'),
        });
        // Multer keeps the file in memory and the worker is another process:
        // the image travels in the job (Redis), as the plan leaves it.
        await queue.add('analyze', {
          assetId: String(asset._id), userId: req.userId, filename: f.originalname,
          contentType: types[i], image: f.buffer.toString('base64'),
        }, {
          jobId, attempts: ATTEMPTS, backoff: { type: 'exponential', delay: 1000 },
          removeOnComplete: true, removeOnFail: false, // failed jobs stay: the dead letters
        });
        return { assetId: String(asset._id), jobId, status: 'processing', filename: f.originalname };
      }));
      res.status(202).json({ assets: out });
    } catch (err) {
      console.error('analyze-queue:', err.message);
      fail(res, 503, 'unavailable', 'store or queue down');
    }
  });

  const server = http.createServer(app);
  const io = new Server(server);
  io.use((socket, next) => {
    try {
      socket.data.userId = userOf(socket.handshake.auth && socket.handshake.auth.token);
      if (socket.data.userId) return next();
    } catch { /* below */ }
    next(new Error('unauthorized'));
  });
  io.on('connection', (socket) => socket.join(`user:${socket.data.userId}`));

  // The worker is another process: the API hears the final states through
  // BullMQ's QueueEvents (a Redis stream) and emits to the owner's room.
  const events = new QueueEvents(QUEUE, { connection: redis() });
  const emit = (ev) => io.to(`user:${ev.userId}`).emit('asset_processed', ev);
  events.on('completed', ({ returnvalue }) => {
    emit(typeof returnvalue === 'string' ? JSON.parse(returnvalue) : returnvalue);
  });
  events.on('failed', async ({ jobId }) => {
    const asset = await Asset.findOne({ processingJobId: jobId }).lean();
    if (asset && asset.status === 'failed') emit(eventOf(asset, jobId, asset.attempts));
  });

  const [host, port] = env('ADDR', '127.0.0.1:0').split(':');
  server.listen(Number(port), host, () => {
    console.log(`listening http://${host}:${server.address().port}`);
  });
}

async function worker() {
  await mongoose.connect(env('MONGODB_URI'));
  const ai = `${env('AI_SERVICE_URL')}/analyze`;
  const w = new Worker(QUEUE, async (job) => {
    const { assetId, filename, contentType, image } = job.data;
    const attempts = job.attemptsMade + 1;
    let aiMetadata;
    try {
      const form = new FormData();
      form.append('image', new Blob([Buffer.from(image, 'base64')], { type: contentType }), filename);
      form.append('assetId', assetId);
      const res = await fetch(ai, { method: 'POST', body: form, signal: AbortSignal.timeout(30000) });
      if (!res.ok) throw new Error(`the AI service answered ${res.status}`);
      aiMetadata = await res.json();
    } catch (err) {
      if (attempts >= ATTEMPTS) {
        await Asset.updateOne({ _id: assetId }, {
          status: 'failed', attempts, processedAt: new Date(),
          error: { code: 'ai_unavailable', message: err.message },
        });
      }
      throw err;
    }
    const asset = await Asset.findByIdAndUpdate(assetId, {
      status: 'draft', aiMetadata, error: null, attempts, processedAt: new Date(),
    }, { returnDocument: 'after' }).lean();
    return eventOf(asset, job.id, attempts);
  }, { connection: redis(), concurrency: Number(env('WORKER_CONCURRENCY', '50')) });
  w.on('error', (err) => console.error('worker:', err.message));
  console.log(`worker started, concurrency ${w.opts.concurrency}`);
}

// Exit on SIGTERM through process.exit, so that `node --cpu-prof` writes its profile.
process.on('SIGTERM', () => process.exit(0));
(process.argv[2] === 'worker' ? worker : api)().catch((err) => {
  console.error(err);
  process.exit(1);
});
