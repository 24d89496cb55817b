// Browser test of the web UI against a running daemon with the simulator backend.
// Started by tests/it/ui.rs with ORCHARD_URL and ORCHARD_ADMIN_PASSWORD in the environment;
// SCREENSHOTS=dir saves screenshots of the main pages there. Exits non-zero on failure.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const URL = process.env.ORCHARD_URL;
const PASSWORD = process.env.ORCHARD_ADMIN_PASSWORD;
const SHOTS = process.env.SCREENSHOTS || '';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const T = 45_000; // per-step timeout (generous: CI machines are shared)

if (!URL || !PASSWORD) {
  console.error('ORCHARD_URL and ORCHARD_ADMIN_PASSWORD must be set');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  // playwright gives every launch a fresh temporary profile (--user-data-dir) of its own.
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
  timeout: 60_000,
});
const errors = [];
let step = 'start';

function check(cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`);
}

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

async function newPage(opts = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...opts });
  const page = await context.newPage();
  lastPage = page;
  page.setDefaultTimeout(T);
  page.on('pageerror', (e) => errors.push(`${step}: page error: ${e.message}`));
  page.on('console', (m) => {
    // xterm.js inserts <style> elements that the CSP refuses (js/console.js mirrors them).
    if (m.type() === 'error' && !/inline style|Content Security Policy/.test(m.text()) && !/status of 40[134]/.test(m.text())) {
      errors.push(`${step}: console error: ${m.text()}`);
    }
  });
  return page;
}

async function login(page, user, password) {
  await page.goto(URL);
  await page.fill('#username', user);
  await page.fill('#password', password);
  await page.press('#password', 'Enter');
  await page.waitForSelector('#logout');
}

const card = (page, title) => page.locator(`.machine-card[data-title="${title}"]`);

async function waitStatus(page, title, status) {
  await page.waitForSelector(`.machine-card[data-title="${title}"][data-status="${status}"]`, { timeout: T });
}

// tests/it/ui.rs restarts the daemon when asked on stdout, and answers on stdin.
async function restartDaemon() {
  const { createInterface } = await import('node:readline');
  const lines = createInterface({ input: process.stdin });
  const done = new Promise((resolve) => lines.once('line', resolve));
  console.log('ui: restart the daemon');
  await done;
  lines.close();
}

async function run() {
  const page = await newPage();

  step = 'login page';
  await page.goto(URL);
  await page.waitForSelector('#username');
  await shot(page, '01-login');

  step = 'wrong password';
  await page.fill('#username', 'admin');
  await page.fill('#password', 'not-the-password');
  await page.click('form button[type=submit]');
  await page.waitForSelector('#login-error:not([hidden])');

  step = 'log in';
  await login(page, 'admin', PASSWORD);
  await page.waitForSelector('.tile');
  await page.waitForSelector('.host');
  await shot(page, '02-overview');

  step = 'the fleet updates live';
  await page.goto(`${URL}#/machines`);
  await page.waitForSelector('.machine-card[data-status="running"]');
  const cards = await page.locator('.machine-card').count();
  check(cards >= 4, `the demo fleet shows (${cards} cards)`);
  const before = await page.locator('.machine-card[data-status="running"] .metric-value').allTextContents();
  await page.waitForFunction((b) => {
    const now = [...document.querySelectorAll('.machine-card[data-status="running"] .metric-value')].map((e) => e.textContent);
    return now.join('|') !== b.join('|');
  }, before);
  await shot(page, '03-machines');

  step = 'create, edit and delete a machine';
  const fresh = `ui-new-${Date.now().toString(36)}`;
  await page.click('#new-machine');
  let dlg = page.locator('dialog[open]');
  await dlg.locator('input[name="title"]').fill(fresh);
  await dlg.locator('input[name="tags"]').fill('ui, test');
  await dlg.locator('button[type=submit]').click();
  await page.waitForSelector(`.machine-card[data-title="${fresh}"][data-status="stopped"]`);
  await card(page, fresh).locator(`button[aria-label="Edit ${fresh}"]`).click();
  dlg = page.locator('dialog[open]');
  await dlg.locator('input[name="title"]').fill(`${fresh}-x`);
  await dlg.locator('textarea[name="description"]').fill('made by the browser test');
  await dlg.locator('button[type=submit]').click();
  await page.waitForSelector(`.machine-card[data-title="${fresh}-x"] .card-desc`);
  await card(page, `${fresh}-x`).locator(`button[aria-label="Delete ${fresh}-x"]`).click();
  await page.locator('dialog[open] button[type=submit]').click();
  await page.waitForSelector(`.machine-card[data-title="${fresh}-x"]`, { state: 'detached' });

  step = 'start and stop a machine';
  const stopped = await page.locator('.machine-card[data-status="stopped"]:not(:has(.tag:text-is("fail-boot")))').first().getAttribute('data-title');
  check(stopped, 'a stopped machine to start');
  await card(page, stopped).locator('button[data-action="start"]').click();
  await waitStatus(page, stopped, 'running');
  // By keyboard: after Start the focus stays in the card's controls.
  await card(page, stopped).locator('button[data-action="stop"]').focus();
  await page.keyboard.press('Enter');
  await waitStatus(page, stopped, 'stopped');
  check(await page.evaluate(() => !!document.activeElement.closest('.machine-card')), `focus stays in the card (${await page.evaluate(() => document.activeElement.outerHTML.slice(0, 120))})`);

  step = 'a failing start shows its error';
  const failingTitle = await page.locator('.machine-card:has(.tag:text-is("fail-boot"))[data-status="stopped"]').first().getAttribute('data-title', { timeout: 2000 }).catch(() => null);
  if (failingTitle) {
    const failing = card(page, failingTitle);
    await failing.locator('button[data-action="start"]').click();
    await failing.locator('.op-error').waitFor({ timeout: T });
    check(/Start failed/.test(await failing.locator('.op-error').textContent()), 'failure message');
  }

  step = 'star a machine and see the starred view';
  const running = await page.locator('.machine-card[data-status="running"]').first().getAttribute('data-title');
  if (await card(page, running).locator('button.star[aria-pressed="true"]').count()) {
    await card(page, running).locator('button.star').click();
    await page.waitForSelector(`.machine-card[data-title="${running}"] button.star[aria-pressed="false"]`);
  }
  await card(page, running).locator('button.star').click();
  await page.waitForSelector(`.machine-card[data-title="${running}"] button.star[aria-pressed="true"]`);
  const starred = await page.locator('.machine-card button.star[aria-pressed="true"]').count();
  await page.click('#tab-subscribed');
  // The starred view (/ws/machines/subscribed) holds exactly the starred machines.
  await page.waitForFunction(([t, n]) => {
    const c = [...document.querySelectorAll('.machine-card')];
    return c.length === n && c.some((x) => x.dataset.title === t);
  }, [running, starred]);
  await shot(page, '04-starred');
  await page.click('#tab-all');
  await page.waitForFunction(() => document.querySelectorAll('.machine-card').length > 1);

  step = 'machine page with charts and console';
  await card(page, running).locator('a.machine-link').click();
  await page.waitForSelector('.chart .uplot');
  await page.waitForSelector('.term-status[data-state="ok"]');
  const screen = page.locator('#console-screen');
  // xterm.js renders only while the terminal is in view.
  await screen.scrollIntoViewIfNeeded();
  await page.waitForFunction(() => /login:/.test(document.querySelector('#console-screen .xterm-rows')?.textContent || ''));
  await screen.scrollIntoViewIfNeeded();
  await screen.click();
  await page.keyboard.type('root\r');
  await page.waitForFunction(() => /Password:/.test(document.querySelector('#console-screen .xterm-rows')?.textContent || ''));
  await page.keyboard.type('secret\r');
  await page.waitForFunction(() => /root@.*#/.test(document.querySelector('#console-screen .xterm-rows')?.textContent || ''));
  await page.keyboard.type('echo typed-in-the-browser\r');
  // The echo of the input, then the command's output.
  await page.waitForFunction(() => (document.querySelector('#console-screen .xterm-rows')?.textContent || '').split('typed-in-the-browser').length === 3);
  await shot(page, '05-console');
  await page.evaluate(() => document.querySelector('#main').scrollIntoView());
  await page.evaluate(() => window.scrollTo(0, 0));
  await shot(page, '05-machine');

  step = 'admin creates a user and gives them one machine';
  const user = `ui${Date.now().toString(36)}`;
  await page.goto(`${URL}#/users`);
  await page.click('#new-user');
  dlg = page.locator('dialog[open]');
  await dlg.locator('input[name="username"]').fill(user);
  await dlg.locator('input[name="password"]').fill('correct horse battery');
  await dlg.locator('button[type=submit]').click();
  await page.waitForSelector(`tr[data-user="${user}"]`);
  await shot(page, '06-users');
  // A client account is not offered user-management permissions (the server refuses them).
  await page.click(`button[aria-label="Edit ${user}"]`);
  dlg = page.locator('dialog[open]');
  await dlg.locator('input[type=checkbox][value="ACCESS_CONSOLE"]').waitFor();
  for (const p of ['MANAGE_CLIENT_USERS', 'MANAGE_ADMIN_USERS', 'CHANGE_CLIENT_PASSWORD', 'CHANGE_ADMIN_PASSWORD']) {
    check(await dlg.locator(`input[type=checkbox][value="${p}"]`).count() === 0, `${p} offered for a client`);
  }
  await page.keyboard.press('Escape');
  await page.waitForSelector('dialog[open]', { state: 'detached' });
  await page.goto(`${URL}#/machines`);
  await card(page, running).locator('a.machine-link').click();
  await page.click('#assign-client');
  await page.locator('dialog[open] select').selectOption({ label: user });
  await page.locator('dialog[open] button[type=submit]').click();
  await page.waitForFunction((u) => document.querySelector('#h-props')?.parentElement.textContent.includes(u), user);

  step = 'log out';
  await page.click('#logout');
  await page.waitForSelector('#username');

  step = 'the new user sees only their machine';
  await login(page, user, 'correct horse battery');
  await page.waitForSelector('.machine-card');
  await page.waitForFunction((t) => {
    const c = [...document.querySelectorAll('.machine-card')];
    return c.length === 1 && c[0].dataset.title === t;
  }, running);
  check(await page.locator('a.nav-link[data-path="overview"]').count() === 0, 'no overview for a client');
  check(await page.locator('#new-machine').count() === 0, 'no create button for a client');
  await shot(page, '07-client');
  await page.click('#logout');
  await page.waitForSelector('#username');

  step = 'other pages render';
  await login(page, 'admin', PASSWORD);
  for (const p of ['clusters', 'alerts', 'activity', 'backends', 'servers']) {
    await page.goto(`${URL}#/${p}`);
    await page.waitForSelector('.page-title');
    await page.waitForSelector('.card, .empty');
  }
  await page.goto(`${URL}#/backends`);
  await page.waitForSelector('tr[data-backend="simulator"]');
  await shot(page, '08-backends');
  await page.goto(`${URL}#/activity`);
  await page.waitForSelector('table.table tbody tr');
  await shot(page, '09-activity');

  step = 'phone width and dark scheme';
  const phone = await newPage({ viewport: { width: 390, height: 844 }, colorScheme: 'dark', isMobile: true, hasTouch: true });
  await login(phone, 'admin', PASSWORD);
  await phone.goto(`${URL}#/machines`);
  await phone.waitForSelector('.machine-card[data-status]');
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `no horizontal scrolling at phone width (${overflow}px)`);
  await shot(phone, '10-phone-dark');
  await phone.click('.menu-btn');
  await phone.waitForFunction(() => document.querySelector('.nav-open .sidebar')?.getBoundingClientRect().left === 0);
  await shot(phone, '11-phone-menu');
  await phone.click('a.nav-link[data-path="machines"]');
  await phone.waitForFunction(() => !document.querySelector('.nav-open'));
  await phone.locator('.machine-card[data-status="running"] a.machine-link').first().click();
  await phone.waitForSelector('.chart .uplot');
  const overflowMachine = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflowMachine <= 1, `no horizontal scrolling on the machine page at phone width (${overflowMachine}px)`);
  await shot(phone, '12-phone-machine');

  step = 'reconnects after the daemon restarts';
  if (process.env.RESTART_PROTOCOL) {
    await page.goto(`${URL}#/machines`);
    await page.waitForSelector('.machine-card[data-status="running"]');
    const reopened = page.waitForEvent('websocket', { predicate: (ws) => ws.url().includes('/ws/machines/'), timeout: T });
    await restartDaemon();
    await reopened;
    await page.waitForFunction(() => document.querySelector('.live')?.dataset.state === 'live');
    const was = await page.locator('.machine-card[data-status="running"] .metric-value').allTextContents();
    await page.waitForFunction((b) => [...document.querySelectorAll('.machine-card[data-status="running"] .metric-value')]
      .map((e) => e.textContent).join('|') !== b.join('|'), was);
  }

  step = 'a revoked session returns to the login page with a message';
  await page.goto(`${URL}#/machines`);
  await page.waitForSelector('.machine-card');
  const token = await page.evaluate(() => JSON.parse(sessionStorage.getItem('orchard.session')).token);
  const r = await fetch(`${URL}api/auth/logout`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
  check(r.ok, `logout through the API (${r.status})`);
  await page.waitForSelector('#login-error:not([hidden])');
  check(/session has ended/.test(await page.textContent('#login-error')), 'the message says the session ended');

  step = 'done';
  check(errors.length === 0, `no page errors:\n${errors.join('\n')}`);
}

let failed = false;
let lastPage = null;
try {
  await run();
  console.log('ui: all browser scenarios passed');
} catch (e) {
  failed = true;
  console.error(`ui: FAILED at step "${step}": ${e.message}`);
  if (errors.length) console.error(errors.join('\n'));
  const term = await lastPage?.evaluate(() => document.querySelector('#console-screen .xterm-rows')?.textContent).catch(() => null);
  if (term) console.error(`console text: ${term}`);
  await lastPage?.screenshot({ path: join(SHOTS || '.', 'failure.png') }).catch(() => {});
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
