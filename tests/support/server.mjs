// What the Node tests (tests/browser, tests/tus) share: the built signal-server binary, started
// on port 0 in a temp data dir, and an account on it.
//
// The binary is `$SIGNAL_SERVER_BIN`, else `$CARGO_TARGET_DIR/debug/signal-server`, else
// `target/debug/signal-server` (so `cargo build` first).

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.SIGNAL_SERVER_BIN
  || join(resolve(root, process.env.CARGO_TARGET_DIR || 'target'), 'debug/signal-server');
/** Upper bound for anything to happen (a start, a page run); never a timing check. */
export const BOUND_MS = 60_000;
export const PASSWORD = 'tangerine-Voyage-42';

/**
 * Starts signal-server with `flags` (rate limits on unless a flag lifts them); resolves once it
 * logs `listening on http://ADDR`, with `base`, `stop()` and `log()`.
 */
export function startServer(flags = []) {
  const dir = mkdtempSync(join(tmpdir(), 'signal-server-node-'));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SIGNAL_SERVER_')));
  const child = spawn(BIN, ['--data-dir', dir, '--listen', '127.0.0.1:0', '--pbkdf2-iterations', '1000', '--metrics-listen', '127.0.0.1:0', ...flags], {
    env: { ...env, RUST_LOG: 'info', RUST_LOG_STYLE: 'never' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  const stop = () => { child.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }); };
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`no "listening on" line:\n${log}`)), BOUND_MS);
    child.on('error', (e) => { clearTimeout(timer); fail(e); });
    child.on('exit', (code) => { clearTimeout(timer); fail(new Error(`signal-server exited (${code}):\n${log}`)); });
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const m = log.match(/listening on (http:\/\/\S+)/);
      if (m) { clearTimeout(timer); ok({ base: m[1], stop, log: () => log }); }
    });
  });
}

/** Registers `username` on the server at `base` and logs in: the token. */
export async function register(base, username) {
  const post = (path, body) => fetch(base + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  let res = await post('/auth/users', { username, password: PASSWORD });
  if (res.status !== 201) throw new Error(`register ${username}: ${res.status} ${await res.text()}`);
  res = await post('/auth/jwt/create', { username, password: PASSWORD });
  if (res.status !== 200) throw new Error(`login ${username}: ${res.status} ${await res.text()}`);
  return (await res.json()).token;
}
