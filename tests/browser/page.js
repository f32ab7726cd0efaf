// A web client in miniature, run by a real browser from another origin than the API: every
// call below is a cross-origin fetch (with preflights for JSON bodies and Authorization) or a
// cross-origin WebSocket, and an attachment goes up with tus-js-client (`window.tus`, loaded by
// the page before this script), which reads the TUS answer headers the server exposes. The
// outcome goes to `window.result` for the driver (run.mjs).

const api = new URL(location.href).searchParams.get('api');
const steps = [];

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function call(method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(api + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  steps.push(`${method} ${path} -> ${res.status}`);
  return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : null };
}

/** Opens the live socket and hands each parsed frame to `onFrame` until it returns true. */
function liveSocket(regId, token) {
  const url = `${api.replace(/^http/, 'ws')}/messages/${regId}/ws?token=${token}`;
  const ws = new WebSocket(url);
  const frames = [];
  let waiter = null;
  ws.onmessage = (e) => {
    frames.push(JSON.parse(e.data));
    if (waiter) waiter();
  };
  const failed = new Promise((_, reject) => {
    ws.onerror = () => reject(new Error('WebSocket error'));
  });
  const next = async () => {
    while (frames.length === 0) {
      await Promise.race([new Promise((r) => { waiter = r; }), failed]);
    }
    return frames.shift();
  };
  const opened = Promise.race([new Promise((r) => { ws.onopen = r; }), failed]);
  return { ws, next, opened };
}

async function main() {
  const vectors = await (await fetch('/vectors.json')).json();
  const id = vectors.identities[0];
  const username = `browser${Math.floor(Math.random() * 1e9)}`;
  const password = 'tangerine-Voyage-42';
  const regId = 4242;

  let r = await call('POST', '/auth/users', { body: { username, password } });
  check(r.status === 201 && r.json.username === username, 'register');
  r = await call('POST', '/auth/jwt/create', { body: { username, password } });
  check(r.status === 200 && r.json.token, 'login');
  const token = r.json.token;
  r = await call('GET', '/auth/users/me', { token });
  check(r.status === 200 && r.json.username === username, 'me');

  // Real keys made by libsignal (tests/data/libsignal_vectors.json); the server checks the
  // XEdDSA signatures.
  r = await call('POST', '/device/', {
    token,
    body: {
      address: `${username}.1`,
      identityKey: id.identityKey,
      registrationId: regId,
      preKeys: id.preKeys,
      signedPreKey: id.signedPreKey,
      kyberPreKeys: id.kyberPreKeys,
      lastResortKyberPreKey: id.lastResortKyberPreKey,
    },
  });
  check(r.status === 201, `device: ${JSON.stringify(r.json)}`);
  r = await call('GET', `/prekeybundle/${username}/${regId}`, { token });
  check(r.status === 200 && r.json.identityKey === id.identityKey, 'bundle');

  const message = (text) => JSON.stringify({ registrationId: regId, type: 1, body: btoa(text) });
  r = await call('POST', `/messages/${regId}`, {
    token,
    body: { recipient: username, message: message('hello from a browser') },
  });
  check(r.status === 201, 'send');
  const first = r.json.id;
  r = await call('GET', `/messages/${regId}`, { token });
  check(r.status === 200 && r.json.some((m) => m.id === first), 'read');

  // The queued message, then queue_empty, then a live one; acks delete them.
  const live = liveSocket(regId, token);
  await live.opened;
  let frame = await live.next();
  check(frame.type === 'message' && frame.message.id === first, 'ws backlog');
  frame = await live.next();
  check(frame.type === 'queue_empty', 'ws queue_empty');
  r = await call('POST', `/messages/${regId}`, {
    token,
    body: { recipient: username, message: message('live') },
  });
  check(r.status === 201, 'send live');
  frame = await live.next();
  check(frame.type === 'message' && frame.message.id === r.json.id, 'ws live message');
  live.ws.send(JSON.stringify({ type: 'ack', ids: [r.json.id] }));
  live.ws.close();
  steps.push('WebSocket: backlog, queue_empty, live message');
  r = await call('DELETE', `/messages/${regId}`, { token, body: [first] });
  check(r.status === 200 && r.json[0] === 'success', 'delete');

  await attachment(token);

  // Errors are readable from JavaScript: body and exposed headers.
  r = await call('GET', '/auth/users/me');
  check(r.status === 401 && r.json.code === 'not_authenticated', '401 body');
  check(/^Bearer/.test(r.headers.get('WWW-Authenticate') || ''), '401 WWW-Authenticate');
  for (let i = 0; i < 40; i++) {
    r = await call('POST', '/auth/jwt/create', { body: { username, password: 'wrong-Password-1' } });
    if (r.status === 429) break;
    check(r.status === 400, 'bad login');
  }
  check(r.status === 429 && r.json.code === 'throttled', '429 body');
  const retry = Number(r.headers.get('Retry-After'));
  check(retry > 0, `429 Retry-After readable (got ${r.headers.get('Retry-After')})`);
  steps.push(`Retry-After: ${retry}`);
}

const MIB = 1024 * 1024;

async function sha256(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Runs a tus-js-client upload to its end: resolves on success, rejects on error. */
function finish(upload) {
  return new Promise((ok, fail) => {
    upload.options.onSuccess = ok;
    upload.options.onError = fail;
    upload.start();
  });
}

/**
 * An attachment as a web app uploads one: tus-js-client in 1 MiB chunks, aborted in the middle
 * (as when the tab loses its network), found again in localStorage and resumed from the
 * server's offset (HEAD), then downloaded (whole and by range) and deleted.
 */
async function attachment(token) {
  const size = 20 * MIB + 123;
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  const file = new File([bytes], 'picture.jpg', { type: 'image/jpeg' });
  const options = {
    endpoint: `${api}/attachments`,
    chunkSize: MIB,
    headers: { Authorization: `Bearer ${token}` },
    // Accepted and discarded by the server (it may hold a file name).
    metadata: { filename: file.name, filetype: file.type },
    retryDelays: [],
  };

  // The first try stops once 2.5 MiB went out: in the middle of the third PATCH.
  const first = new tus.Upload(file, options);
  const stopped = await new Promise((ok, fail) => {
    first.options.onProgress = (sent) => {
      if (sent >= 2.5 * MIB && !first.stopped) {
        first.stopped = true;
        first.abort().then(() => ok(sent), fail);
      }
    };
    finish(first).then(() => fail(new Error('the upload ended before it was interrupted')), fail);
  });
  check(/\/attachments\/[A-Za-z0-9_-]{22}$/.test(first.url || ''), `Location read: ${first.url}`);
  steps.push(`tus: created ${first.url.slice(api.length)}, aborted after ${stopped} bytes sent`);

  // A new Upload finds the unfinished one and asks where it stands before sending the rest.
  const seen = [];
  const resumed = new tus.Upload(file, {
    ...options,
    onAfterResponse: (req, res) => {
      seen.push(`${req.getMethod()} -> ${res.getStatus()} offset ${res.getHeader('Upload-Offset')}`);
    },
  });
  const previous = await resumed.findPreviousUploads();
  check(previous.some((p) => p.uploadUrl === first.url), 'the unfinished upload is in localStorage');
  resumed.resumeFromPreviousUpload(previous.find((p) => p.uploadUrl === first.url));
  await finish(resumed);
  const head = seen[0] || '';
  const held = Number((head.match(/offset (\d+)/) || [])[1]);
  check(/^HEAD -> 200/.test(head) && held >= 2 * MIB && held <= stopped, `resumed from HEAD: ${seen.join(', ')}`);
  check(!seen.some((s) => s.startsWith('POST')), 'resumed without a new upload');
  steps.push(`tus: resumed from ${held} (${seen.length} requests)`);

  const auth = { Authorization: `Bearer ${token}` };
  let res = await fetch(first.url, { headers: auth });
  const got = new Uint8Array(await res.arrayBuffer());
  check(res.status === 200 && got.length === size, `download: ${res.status}, ${got.length} bytes`);
  check(await sha256(got) === await sha256(bytes), 'the download is the file');
  res = await fetch(first.url, { headers: { ...auth, Range: 'bytes=100-199' } });
  const part = new Uint8Array(await res.arrayBuffer());
  check(res.status === 206 && res.headers.get('Content-Range') === `bytes 100-199/${size}`, `range: ${res.status} ${res.headers.get('Content-Range')}`);
  check(part.every((b, i) => b === bytes[100 + i]), 'the range is the file\'s bytes 100-199');
  steps.push(`GET ${first.url.slice(api.length)}: SHA-256 matches, Range answered 206`);

  await tus.Upload.terminate(first.url, options);
  res = await fetch(first.url, { headers: auth });
  const body = await res.json();
  check(res.status === 404 && body.code === 'no_such_attachment', `after DELETE: ${res.status} ${body.code}`);
  steps.push('tus: terminated; GET -> 404');
}

main().then(
  () => { window.result = { ok: true, steps }; },
  (e) => { window.result = { ok: false, steps, error: String(e) }; },
);
