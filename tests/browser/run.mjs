// The browser test: a real headless Chromium loads page.js from one origin and calls
// signal-server on another (both 127.0.0.1, different ports). It fails on any CORS error the
// browser reports, on a failed request, and on any check of the page that does not hold.
//
//   cargo build && (cd tests/browser && npm ci && node run.mjs)
//
// The server is the debug binary (see ../support/server.mjs), started on port 0 in a temp data
// dir with rate limits on. The page also uploads an attachment with tus-js-client (served from
// this package's node_modules), interrupts and resumes it, and downloads it again.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { BOUND_MS, root, startServer } from '../support/server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/**
 * Serves the page, its scripts (tus-js-client's browser bundle too) and the libsignal key
 * vectors on 127.0.0.1:0.
 */
async function servePage() {
  const files = {
    '/': ['text/html', '<!doctype html><title>signal-server CORS</title><script src="/tus.min.js"></script><script type="module" src="/page.js"></script>'],
    '/tus.min.js': ['text/javascript', readFileSync(join(here, 'node_modules/tus-js-client/dist/tus.min.js'))],
    '/page.js': ['text/javascript', readFileSync(join(here, 'page.js'))],
    '/vectors.json': ['application/json', readFileSync(join(root, 'tests/data/libsignal_vectors.json'))],
  };
  const server = createServer((req, res) => {
    const file = files[new URL(req.url, 'http://x').pathname];
    res.writeHead(file ? 200 : 404, { 'content-type': file ? file[0] : 'text/plain' });
    res.end(file ? file[1] : 'not found');
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

/** Loads the page against `base`; answers the page's result and what the browser complained of. */
async function runPage(browser, pageOrigin, base) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => {
    // Chromium logs every answered 4xx as an error; the page checks its statuses itself. What
    // is left (a blocked request, a CORS refusal, a script error) fails the run.
    if (m.type() === 'error' && !/^Failed to load resource: the server responded with a status of \d+/.test(m.text())) {
      problems.push(`console: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e}`));
  page.on('requestfailed', (r) => {
    // The page aborts an upload on purpose (then resumes it): its cancelled PATCH is expected.
    const aborted = r.method() === 'PATCH' && r.url().startsWith(`${base}/attachments/`) && r.failure()?.errorText === 'net::ERR_ABORTED';
    if (!aborted) problems.push(`request failed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`);
  });
  try {
    await page.goto(`${pageOrigin}/?api=${encodeURIComponent(base)}`);
    await page.waitForFunction(() => window.result !== undefined, null, { timeout: BOUND_MS });
    return { result: await page.evaluate(() => window.result), problems };
  } finally {
    await context.close();
  }
}

/** The server's own count: the browser's preflights were answered 204, and nothing was a 405. */
async function preflightsCounted(log) {
  const url = log.match(/metrics on (http:\/\/\S+)/)?.[1];
  if (!url) return { preflights: 0, problems: ['no "metrics on" line in the server log'] };
  const text = await (await fetch(url)).text();
  const preflights = [...text.matchAll(/method="OPTIONS",status="204"\} (\d+)/g)]
    .reduce((n, m) => n + Number(m[1]), 0);
  const problems = [];
  if (preflights === 0) problems.push('the server counted no preflight (OPTIONS 204)');
  if (/status="405"/.test(text)) problems.push('the server answered 405');
  return { preflights, problems };
}

async function scenario(browser, pageOrigin, name, flags, expectOk) {
  const server = await startServer(flags);
  try {
    const { result, problems } = await runPage(browser, pageOrigin, server.base);
    const counted = expectOk ? await preflightsCounted(server.log()) : { preflights: 0, problems: [] };
    problems.push(...counted.problems);
    const ok = result.ok && problems.length === 0;
    const detail = [...result.steps.map((s) => `  ${s}`), ...(result.error ? [`  error: ${result.error}`] : []), ...problems.map((p) => `  ${p}`)].join('\n');
    if (ok === expectOk) {
      console.log(`ok: ${name}${ok ? ` (${result.steps.length} calls, ${counted.preflights} preflights)` : `: ${problems[0] ?? result.error}`}`);
      return true;
    }
    console.log(`FAILED: ${name} (expected ${expectOk ? 'success' : 'the browser to block it'})\n${detail}`);
    return false;
  } finally {
    server.stop();
  }
}

async function main() {
  const page = await servePage();
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
  let passed = 0;
  let failed = 0;
  try {
    const cases = [
      ['default --cors-origin * (any origin)', [], true],
      ['--cors-origin naming the page origin', ['--cors-origin', page.origin], true],
      // A control: another origin only, so the browser must block the page; proves that this
      // harness sees CORS failures at all.
      ['--cors-origin naming another origin (must be blocked)', ['--cors-origin', 'http://127.0.0.1:1'], false],
    ];
    for (const [name, flags, expectOk] of cases) {
      const ok = await scenario(browser, page.origin, name, flags, expectOk).catch((e) => {
        console.log(`FAILED: ${name}: ${e.message}`);
        return false;
      });
      if (ok) passed++; else failed++;
    }
  } finally {
    await browser.close();
    page.server.close();
  }
  console.log(`browser: ${passed} passed, ${failed} failed`);
  process.exitCode = failed === 0 ? 0 : 1;
}

const watchdog = setTimeout(() => { console.log('browser test: timed out'); process.exit(1); }, 5 * BOUND_MS);
watchdog.unref();
main().catch((e) => { console.log(`browser test: ${e.stack || e}`); process.exitCode = 1; });
