// A web client in miniature, run by a real browser from another origin than the API: every
// call below is a cross-origin fetch (with preflights for JSON bodies and Authorization) or a
// cross-origin WebSocket. The outcome goes to `window.result` for the driver (run.mjs).

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

main().then(
  () => { window.result = { ok: true, steps }; },
  (e) => { window.result = { ok: false, steps, error: String(e) }; },
);
