// The TUS test: tus-js-client (the TUS 1.0.0 client web and Node apps use, pinned in
// package-lock.json) uploads 20 MiB of random bytes to signal-server, is interrupted in the
// middle of a PATCH, resumes from the offset the server reports (HEAD), and the download is the
// same bytes (SHA-256). Anything of the server's answers the client does not accept (a status,
// a missing header, an offset) fails it.
//
//   cargo build && (cd tests/tus && npm ci && node run.mjs)
//
// TUS_TRACE=1 prints each answer of the resumed uploads (method, status, Upload-Offset).
//
// The server is the debug binary (see ../support/server.mjs), started on port 0 in a temp data
// dir with its default limits. The uploads go through a proxy that slows them to a phone's pace,
// so that the client's progress reports (and so its abort) come in the middle of a PATCH body,
// not only between chunks. Two uploads, resumed the two ways the client offers:
// - creation, then 4 MiB PATCHes; resumed by a new Upload that finds the unfinished one in its
//   URL storage (findPreviousUploads / resumeFromPreviousUpload), as an app after a restart;
// - creation-with-upload (the first chunk in the POST, as Signal's apps upload) and chunks of a
//   random size from 1 to 4 MiB; resumed by a new Upload given the upload's URL.

import { createHash, randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultOptions, FileUrlStorage, Upload } from 'tus-js-client';
import { BOUND_MS, register, startServer } from '../support/server.mjs';

const MIB = 1024 * 1024;
const SIZE = 20 * MIB;
/** The proxy's pace towards the server: 20 MiB take about a second and a half. */
const BYTES_PER_MS = 16 * 1024;

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

/**
 * A TCP proxy on 127.0.0.1:0 to the server at `base` that passes requests on at BYTES_PER_MS
 * (answers at full speed), as a phone's uplink. `cut(at, onCut)` makes it drop the connection
 * that carries the `at`th request byte (counted over all connections), right after that byte:
 * the server gets the request up to there and then the end of the connection. `onCut` is
 * called first (so the client can abort before its socket goes).
 */
async function slowProxy(base) {
  const { hostname, port } = new URL(base);
  const state = { forwarded: 0, cutAt: Infinity, onCut: () => {} };
  const proxy = createServer((client) => {
    const server = connect(Number(port), hostname);
    // What the proxy has read goes on to the server before its end; the client's side of a
    // closed server connection goes at once.
    client.on('error', () => server.end());
    client.on('close', () => server.end());
    server.on('error', () => client.destroy());
    server.on('close', () => client.destroy());
    server.pipe(client);
    client.on('data', (data) => {
      state.forwarded += data.length;
      if (state.forwarded >= state.cutAt) {
        state.cutAt = Infinity;
        server.end(data);
        state.onCut(state.forwarded);
        client.destroy();
        return;
      }
      server.write(data);
      client.pause();
      setTimeout(() => client.resume(), Math.ceil(data.length / BYTES_PER_MS));
    });
  });
  await new Promise((ok) => proxy.listen(0, '127.0.0.1', ok));
  state.base = `http://127.0.0.1:${proxy.address().port}`;
  state.cut = (at, onCut) => { state.cutAt = at; state.onCut = onCut; };
  state.close = () => proxy.close();
  return state;
}

/** Runs `upload` to its end: resolves on success, rejects on error. */
function finish(upload) {
  return new Promise((ok, fail) => {
    upload.options.onSuccess = ok;
    upload.options.onError = fail;
    upload.start();
  });
}

/**
 * Starts `upload` and, once `abortAt` request bytes have gone through `proxy`, aborts it as
 * the proxy drops its connection: in the middle of a PATCH body, as the proxy is slower than
 * the client. Resolves with the request bytes the server got.
 */
function interrupt(upload, proxy, abortAt) {
  return new Promise((ok, fail) => {
    proxy.cut(abortAt, (forwarded) => upload.abort().then(() => ok(forwarded), fail));
    finish(upload).then(() => fail(new Error('the upload ended before it was interrupted')), fail);
  });
}

/** Records each answer's method, status and Upload-Offset in `seen`. */
const recorder = (seen) => (req, res) => {
  seen.push({ method: req.getMethod(), status: res.getStatus(), offset: Number(res.getHeader('Upload-Offset')) });
};

/** Uploads `bytes`, interrupted at `abortAt` and resumed as `how` says; answers the upload URL. */
async function interruptedUpload(base, token, bytes, { chunkSize, creationWithUpload, abortAt, how }) {
  const dir = mkdtempSync(join(tmpdir(), 'tus-urls-'));
  const proxy = await slowProxy(base);
  const options = {
    endpoint: `${proxy.base}/attachments`,
    chunkSize,
    uploadDataDuringCreation: creationWithUpload,
    headers: { Authorization: `Bearer ${token}` },
    // Accepted and discarded by the server.
    metadata: { filename: 'holiday.mp4' },
    urlStorage: new FileUrlStorage(join(dir, 'uploads.json')),
    retryDelays: [],
  };
  try {
    const first = new Upload(bytes, options);
    const stopped = await interrupt(first, proxy, abortAt);
    check(/\/attachments\/[A-Za-z0-9_-]{22}$/.test(first.url || ''), `Location: ${first.url}`);
    const path = new URL(first.url).pathname;
    console.log(`  created ${path}; aborted once ${stopped} bytes had reached the server`);

    // With the client's own retries (as apps run it): a PATCH that comes before the server has
    // seen the cut finds the upload still held (409) and is retried after a new HEAD.
    const seen = [];
    const retried = [];
    const resumed = new Upload(bytes, {
      ...options,
      retryDelays: defaultOptions.retryDelays,
      onShouldRetry: (err, attempt, opts) => {
        retried.push(err.originalResponse?.getStatus() ?? 'no answer');
        return defaultOptions.onShouldRetry(err, attempt, opts);
      },
      onAfterResponse: recorder(seen),
      ...(how === 'url' ? { uploadUrl: first.url } : {}),
    });
    if (how === 'storage') {
      const previous = await resumed.findPreviousUploads();
      const found = previous.find((p) => p.uploadUrl === first.url);
      check(found, `the unfinished upload is in the URL storage: ${JSON.stringify(previous)}`);
      resumed.resumeFromPreviousUpload(found);
    }
    await finish(resumed);
    const head = seen.findLast((s) => s.method === 'HEAD');
    check(seen[0]?.method === 'HEAD' && head.status === 200, `resumed with HEAD: ${JSON.stringify(seen)}`);
    check(head.offset > 0 && head.offset <= stopped, `HEAD's offset ${head.offset} is within what reached the server (${stopped})`);
    check(!seen.some((s) => s.method === 'POST'), 'resumed without a new upload');
    check(seen.at(-1).offset === bytes.length, `the last PATCH completes it: ${JSON.stringify(seen.at(-1))}`);
    const patches = seen.filter((s) => s.method === 'PATCH').length;
    const within = head.offset % chunkSize === 0 ? 'at a chunk boundary' : `${head.offset % chunkSize} bytes into a chunk`;
    if (process.env.TUS_TRACE) console.log(JSON.stringify(seen));
    const retries = retried.length ? `, after ${retried.length} retried refusal(s): ${retried.join(', ')}` : '';
    console.log(`  resumed from ${head.offset} (${within}) with ${patches} PATCHes${retries}`);
    return `${base}${path}`;
  } finally {
    proxy.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The download of `url` is `bytes`: whole (SHA-256) and by range. */
async function downloadMatches(url, token, bytes) {
  const auth = { Authorization: `Bearer ${token}` };
  let res = await fetch(url, { headers: auth });
  const got = Buffer.from(await res.arrayBuffer());
  check(res.status === 200 && got.length === bytes.length, `GET: ${res.status}, ${got.length} bytes`);
  check(sha256(got) === sha256(bytes), 'the download has the SHA-256 of the upload');
  const start = bytes.length - 1000;
  res = await fetch(url, { headers: { ...auth, Range: `bytes=${start}-${bytes.length - 1}` } });
  const tail = Buffer.from(await res.arrayBuffer());
  check(res.status === 206 && tail.equals(bytes.subarray(start)), `Range: ${res.status}, ${tail.length} bytes`);
  console.log(`  GET: ${got.length} bytes, SHA-256 ${sha256(got).slice(0, 16)}… matches; Range 206`);
}

async function main() {
  const server = await startServer();
  let failed = 0;
  try {
    const token = await register(server.base, `tus${randomInt(1e9)}`);
    const options = await fetch(`${server.base}/attachments`, { method: 'OPTIONS' });
    check(options.headers.get('tus-version')?.split(',').includes('1.0.0'), 'OPTIONS: Tus-Version 1.0.0');
    const chunk = randomInt(MIB, 4 * MIB + 1);
    // Each is cut half way through a chunk past the middle of the upload.
    const cases = [
      ['creation, 4 MiB PATCHes, resumed from the URL storage', { chunkSize: 4 * MIB, creationWithUpload: false, abortAt: 10 * MIB, how: 'storage' }],
      [`creation-with-upload, ${chunk}-byte chunks, resumed from the URL`, { chunkSize: chunk, creationWithUpload: true, abortAt: (Math.floor(SIZE / 2 / chunk) + 0.5) * chunk, how: 'url' }],
    ];
    for (const [name, plan] of cases) {
      console.log(`${name}:`);
      try {
        const bytes = randomBytes(SIZE);
        const url = await interruptedUpload(server.base, token, bytes, plan);
        await downloadMatches(url, token, bytes);
        await Upload.terminate(url, { headers: { Authorization: `Bearer ${token}` } });
        const gone = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
        check(gone.status === 404 && (await gone.json()).code === 'no_such_attachment', `GET after DELETE: ${gone.status}`);
        console.log(`ok: ${name}`);
      } catch (e) {
        failed++;
        console.log(`FAILED: ${name}: ${e.stack || e}\n${server.log().split('\n').slice(-20).join('\n')}`);
      }
    }
  } finally {
    server.stop();
  }
  console.log(`tus: ${2 - failed} passed, ${failed} failed`);
  process.exitCode = failed === 0 ? 0 : 1;
}

const watchdog = setTimeout(() => { console.log('tus test: timed out'); process.exit(1); }, 5 * BOUND_MS);
watchdog.unref();
main().catch((e) => { console.log(`tus test: ${e.stack || e}`); process.exitCode = 1; });
