// Browser test of the chat page served by sokdo at `/` (docs/CHAT_PAGE.md).
//
// Starts the real server binary (SOKDO_BIN, default <repo>/target/debug/sokdo) on a free
// loopback port in development mode, drives two users in headless Chromium (Debian's
// /usr/bin/chromium, or CHROMIUM_PATH) with playwright-core, and saves a screenshot of each
// page under <repo>/test-output/browser/. Every wait is bounded; nothing sleeps to synchronise.
//
// Run: node --test tests/browser/    (after scripts/install-browser-deps.sh)

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const serverBin = process.env.SOKDO_BIN || path.join(repo, 'target', 'debug', 'sokdo');
const chromiumPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const outputDir = path.join(repo, 'test-output', 'browser');

const SERVER_START_TIMEOUT_MS = 30_000;
const SERVER_STOP_TIMEOUT_MS = 10_000;
const UI_TIMEOUT_MS = 10_000;
const SERVER_LOG_BYTES_MAX = 64 * 1024;

// The Korean message is typed through the IME path; the last syllable is still being
// composed when Enter is first pressed.
const KOREAN_COMMITTED = '안녕하세요 회의는 세시';
const KOREAN_LAST_SYLLABLE_STEPS = ['ㅇ', '에'];
const KOREAN_MESSAGE = `${KOREAN_COMMITTED}에`;
const HELLO_MESSAGE = 'Hello Bob, the build is green.';

// ---- The server ---------------------------------------------------------------------

/** Starts sokdo and resolves once it printed `listening on 127.0.0.1:PORT`. */
function startServer() {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sokdo-browser-'));
  const env = { ...process.env };
  delete env.SOKDO_JWT_SECRET; // development mode: `?user=` sign-in
  const child = spawn(
    serverBin,
    ['--listen', '127.0.0.1:0', '--shards', '2', '--data-dir', dataDir],
    { stdio: ['ignore', 'pipe', 'pipe'], env },
  );
  let log = '';
  const keep = (chunk) => {
    log = (log + chunk).slice(-SERVER_LOG_BYTES_MAX);
  };
  child.stderr.on('data', keep);
  const server = { child, dataDir, base: null, log: () => log };
  const exited = new Promise((resolve) => child.once('exit', resolve));
  server.exited = exited;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`sokdo printed no 'listening on' line within ${SERVER_START_TIMEOUT_MS} ms\n${log}`));
    }, SERVER_START_TIMEOUT_MS);
    let stdout = '';
    child.stdout.on('data', (chunk) => {
      keep(chunk);
      if (server.base) return;
      stdout += chunk;
      const found = /listening on (127\.0\.0\.1:\d+)/.exec(stdout);
      if (found) {
        clearTimeout(timer);
        server.base = `http://${found[1]}`;
        resolve(server);
      }
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${serverBin}: ${e.message}`));
    });
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`sokdo exited (${code}) before listening\n${log}`));
    });
  });
}

async function stopServer(server) {
  if (!server) return;
  if (server.child.exitCode === null && server.child.signalCode === null) {
    server.child.kill('SIGTERM');
    const timer = setTimeout(() => server.child.kill('SIGKILL'), SERVER_STOP_TIMEOUT_MS);
    await server.exited;
    clearTimeout(timer);
  }
  fs.rmSync(server.dataDir, { recursive: true, force: true });
}

// ---- Page helpers -------------------------------------------------------------------

async function signIn(page, base, user) {
  await page.goto(`${base}/`);
  await page.getByTestId('login-user').fill(user);
  await page.getByTestId('login-submit').click();
  await page.getByTestId('me').filter({ hasText: user }).waitFor({ timeout: UI_TIMEOUT_MS });
  await page.getByTestId('conn-status').filter({ hasText: 'online' }).waitFor({ timeout: UI_TIMEOUT_MS });
}

async function joinRoom(page, room) {
  await page.getByTestId('join-room-input').fill(room);
  await page.getByTestId('join-room-button').click();
  await page.getByTestId('room-title').filter({ hasText: room }).waitFor({ timeout: UI_TIMEOUT_MS });
  await page.locator(`[data-testid="room-item"][data-room="${room}"]`).waitFor({ timeout: UI_TIMEOUT_MS });
}

/** A delivered (sequenced) message whose body is exactly `body`. */
function sentMessage(page, body) {
  return page.locator('[data-testid="msg"][data-state="sent"]')
    .filter({ has: page.getByTestId('msg-body').getByText(body, { exact: true }) });
}

/** Every rendered message (sent or still pending) whose body is exactly `body`. */
function anyMessage(page, body) {
  return page.getByTestId('msg')
    .filter({ has: page.getByTestId('msg-body').getByText(body, { exact: true }) });
}

async function sendPlain(page, body) {
  const composer = page.getByTestId('composer-input');
  await composer.fill(body);
  await composer.press('Enter');
  await sentMessage(page, body).waitFor({ timeout: UI_TIMEOUT_MS });
}

/** Records the composer's composition and Enter key events, to show the IME path ran. */
async function recordImeEvents(page) {
  await page.getByTestId('composer-input').evaluate((input) => {
    window.imeEvents = [];
    for (const type of ['compositionstart', 'compositionend']) {
      input.addEventListener(type, () => window.imeEvents.push({ type }));
    }
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') window.imeEvents.push({ type: 'enter', composing: e.isComposing, keyCode: e.keyCode });
    });
  });
}

// ---- The scenario -------------------------------------------------------------------

describe('chat page in headless Chromium', () => {
  let server;
  let browser;
  const pages = {};
  const pageErrors = [];
  const passed = new Set();

  /** A step that needs earlier ones: skipped (not failed again) when one of them failed. */
  function step(name, needs, fn) {
    it(name, async (t) => {
      const missing = needs.filter((n) => !passed.has(n));
      if (missing.length) {
        t.skip(`needs: ${missing.join(', ')}`);
        return;
      }
      await fn(t);
      passed.add(name);
    });
  }

  async function screenshots() {
    fs.mkdirSync(outputDir, { recursive: true });
    const saved = [];
    for (const [user, page] of Object.entries(pages)) {
      const file = path.join(outputDir, `${user}.png`);
      await page.screenshot({ path: file });
      saved.push(file);
    }
    return saved;
  }

  before(async () => {
    server = await startServer();
    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    });
    for (const user of ['alice', 'bob']) {
      // One context per user: separate storage, as two people on two machines.
      const context = await browser.newContext({ viewport: { width: 1100, height: 720 }, locale: 'en-US' });
      const page = await context.newPage();
      page.setDefaultTimeout(UI_TIMEOUT_MS);
      page.on('pageerror', (e) => pageErrors.push(`${user}: ${e.message}`));
      pages[user] = page;
    }
  });

  after(async () => {
    try {
      if (!passed.has('saves a screenshot of each page') && Object.keys(pages).length) {
        await screenshots().catch(() => {});
      }
      await browser?.close();
    } finally {
      await stopServer(server);
    }
  });

  step('alice and bob sign in (development mode)', [], async () => {
    await signIn(pages.alice, server.base, 'alice');
    await signIn(pages.bob, server.base, 'bob');
  });

  step('both join the room lobby', ['alice and bob sign in (development mode)'], async () => {
    await joinRoom(pages.alice, 'lobby');
    await joinRoom(pages.bob, 'lobby');
  });

  step('a message from alice arrives at bob', ['both join the room lobby'], async () => {
    await sendPlain(pages.alice, HELLO_MESSAGE);
    const atBob = sentMessage(pages.bob, HELLO_MESSAGE);
    await atBob.waitFor({ timeout: UI_TIMEOUT_MS });
    assert.equal(await atBob.getAttribute('data-from'), 'alice');
    assert.equal(await anyMessage(pages.alice, HELLO_MESSAGE).count(), 1);
  });

  step('a room bob is not viewing shows an unread count', ['both join the room lobby'], async () => {
    await joinRoom(pages.bob, 'random');
    await joinRoom(pages.alice, 'random');
    await pages.bob.locator('[data-testid="room-item"][data-room="lobby"]').click();
    await pages.bob.getByTestId('room-title').filter({ hasText: 'lobby' }).waitFor();
    await sendPlain(pages.alice, 'one for the random room');
    const badge = pages.bob.locator('[data-testid="room-item"][data-room="random"] [data-testid="room-unread"]');
    await badge.filter({ hasText: /^1$/ }).waitFor({ timeout: UI_TIMEOUT_MS });
    await pages.bob.locator('[data-testid="room-item"][data-room="random"]').click();
    await sentMessage(pages.bob, 'one for the random room').waitFor();
    await badge.waitFor({ state: 'detached', timeout: UI_TIMEOUT_MS });
    // Back to the lobby for the rest of the scenario.
    await pages.alice.locator('[data-testid="room-item"][data-room="lobby"]').click();
    await pages.bob.locator('[data-testid="room-item"][data-room="lobby"]').click();
    await pages.bob.getByTestId('room-title').filter({ hasText: 'lobby' }).waitFor();
  });

  step('a Korean message typed with the IME is sent exactly once', ['both join the room lobby'], async () => {
    const page = pages.alice;
    const composer = page.getByTestId('composer-input');
    await recordImeEvents(page);
    await composer.focus();
    const cdp = await page.context().newCDPSession(page);
    // Committed syllables, then the last one still in composition when Enter comes: the
    // IME reports that Enter as keyCode 229 while composing, then commits the syllable,
    // then (Chrome on macOS) delivers a second, ordinary Enter. Only that one may send.
    await cdp.send('Input.insertText', { text: KOREAN_COMMITTED });
    for (const text of KOREAN_LAST_SYLLABLE_STEPS) {
      await cdp.send('Input.imeSetComposition', { text, selectionStart: 1, selectionEnd: 1 });
    }
    const imeEnter = { key: 'Enter', code: 'Enter', windowsVirtualKeyCode: 229, nativeVirtualKeyCode: 229 };
    await cdp.send('Input.dispatchKeyEvent', { type: 'rawKeyDown', ...imeEnter });
    await cdp.send('Input.dispatchKeyEvent', { type: 'keyUp', ...imeEnter });
    assert.equal(await composer.inputValue(), KOREAN_MESSAGE, 'Enter during composition must not send');
    await cdp.send('Input.insertText', { text: KOREAN_LAST_SYLLABLE_STEPS.at(-1) });
    await composer.press('Enter');
    await cdp.detach();

    await sentMessage(page, KOREAN_MESSAGE).waitFor({ timeout: UI_TIMEOUT_MS });
    await sentMessage(pages.bob, KOREAN_MESSAGE).waitFor({ timeout: UI_TIMEOUT_MS });
    assert.equal(await composer.inputValue(), '', 'the composer is cleared after sending');

    const events = await page.evaluate(() => window.imeEvents);
    const types = events.map((e) => e.type);
    assert.ok(types.includes('compositionstart') && types.includes('compositionend'),
      `the IME path ran: ${JSON.stringify(events)}`);
    assert.ok(events.some((e) => e.type === 'enter' && (e.composing || e.keyCode === 229)),
      `an Enter arrived during composition: ${JSON.stringify(events)}`);

    // Messages arrive in seq order, so once a later message is seen, a duplicate of the
    // Korean one would already be on screen.
    const marker = 'marker after the Korean message';
    await sendPlain(page, marker);
    await sentMessage(pages.bob, marker).waitFor({ timeout: UI_TIMEOUT_MS });
    for (const user of ['alice', 'bob']) {
      assert.equal(await anyMessage(pages[user], KOREAN_MESSAGE).count(), 1, `${user} sees it once`);
      assert.equal(await anyMessage(pages[user], KOREAN_COMMITTED).count(), 0, `${user} sees no partial copy`);
    }
  });

  step('bob reads the messages and alice sees the read mark', ['a message from alice arrives at bob'], async () => {
    // Bob's page shows the lobby, so it reports the newest visible message with `read`,
    // and alice's messages up to it show bob's mark.
    const aliceSent = pages.alice.locator('[data-testid="msg"][data-state="sent"][data-from="alice"]');
    const newest = aliceSent.last().getByTestId('msg-read');
    await newest.waitFor({ timeout: UI_TIMEOUT_MS });
    assert.match(await newest.textContent(), /✓ read by bob/);
    // Earlier messages read by the same people carry the ✓, naming them in its title.
    const mark = sentMessage(pages.alice, HELLO_MESSAGE).getByTestId('msg-read');
    assert.match(await mark.textContent(), /^✓/);
    assert.equal(await mark.getAttribute('title'), 'read by bob');
    assert.equal(await aliceSent.getByTestId('msg-read').count(), await aliceSent.count());
    // Bob's own view shows no read mark from himself.
    assert.equal(await sentMessage(pages.bob, HELLO_MESSAGE).getByTestId('msg-read').count(), 0);
  });

  step('the pages raised no script errors', ['alice and bob sign in (development mode)'], async () => {
    assert.deepEqual(pageErrors, []);
  });

  step('saves a screenshot of each page', ['alice and bob sign in (development mode)'], async () => {
    const saved = await screenshots();
    for (const file of saved) assert.ok(fs.statSync(file).size > 10_000, `${file} holds a picture`);
    assert.equal(saved.length, 2);
  });
});
