// Entry point: the session, the application shell (sidebar, header), hash routing.

import { api, session, logout, liveState } from './api.js';
import { h, icon, setChildren, toast } from './dom.js';
import { MachineStore, subscriptions, ctx } from './store.js';
import { loginPage } from './pages/login.js';
import { machinesPage } from './pages/machines.js';
import { machinePage } from './pages/machine.js';
import { overviewPage } from './pages/overview.js';
import { alertsPage, activityPage } from './pages/events.js';
import { clustersPage } from './pages/clusters.js';
import { backendsPage, serversPage } from './pages/system.js';
import { usersPage } from './pages/users.js';

const app = document.getElementById('app');

// ---- theme: system preference unless the user picked one ----
const THEME_KEY = 'orchard.theme';
function applyTheme() {
  const t = localStorage.getItem(THEME_KEY);
  if (t) document.documentElement.dataset.theme = t;
  else delete document.documentElement.dataset.theme;
}
function currentTheme() {
  return document.documentElement.dataset.theme
    || (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light');
}
applyTheme();

// ---- routes ----
const NAV = [
  { path: 'overview', label: 'Overview', icon: 'overview', page: overviewPage, perm: 'VIEW_ALL_VMS' },
  { path: 'machines', label: 'Machines', icon: 'machines', page: machinesPage },
  { path: 'clusters', label: 'Clusters', icon: 'clusters', page: clustersPage, perm: 'VIEW_ALL_VMS' },
  { path: 'alerts', label: 'Alerts', icon: 'alerts', page: alertsPage, perm: 'VIEW_ALL_VMS' },
  { path: 'activity', label: 'Activity', icon: 'activity', page: activityPage, perm: 'MANAGE_ADMIN_USERS' },
  { path: 'users', label: 'Users', icon: 'users', page: usersPage, perm: ['MANAGE_CLIENT_USERS', 'MANAGE_ADMIN_USERS'] },
  { path: 'backends', label: 'Backends', icon: 'backends', page: backendsPage, perm: 'VIEW_ALL_VMS' },
  { path: 'servers', label: 'Servers', icon: 'servers', page: serversPage, perm: 'VIEW_ALL_VMS' },
];

const allowed = (r) => !r.perm || [].concat(r.perm).some((p) => session.can(p));


let current = null; // { cleanup }
let shell = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, ...rest] = raw.split('/');
  return { path: path || '', args: rest.map(decodeURIComponent) };
}

function go(hash) { location.hash = hash; }

function unmount() {
  if (current && current.cleanup) {
    try { current.cleanup(); } catch (e) { console.error(e); }
  }
  current = null;
}

async function route() {
  unmount();
  if (!session.token) {
    shell = null;
    ctx.machines?.close();
    ctx.machines = null;
    current = loginPage(app, { onLogin: start, message: pendingMessage });
    pendingMessage = null;
    return;
  }
  if (!shell) buildShell();
  const { path, args } = parseHash();
  let r = NAV.find((n) => n.path === path);
  if (path === 'machine' && args[0]) {
    r = { path: 'machines', page: (el) => machinePage(el, args[0]) };
  }
  if (!r || !allowed(r)) {
    const first = NAV.find((n) => n.path === (session.can('VIEW_ALL_VMS') ? 'overview' : 'machines'));
    if (path !== first.path) { go(`#/${first.path}`); return; }
    r = first;
  }
  for (const a of shell.nav.querySelectorAll('a')) {
    if (a.dataset.path === r.path) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  shell.root.classList.remove('nav-open');
  const main = setChildren(shell.main);
  main.scrollTop = 0;
  current = r.page(main, args) || null;
  shell.main.focus({ preventScroll: true });
}

function buildShell() {
  const u = session.user;
  const navLinks = NAV.filter(allowed).map((n) =>
    h('a.nav-link', { href: `#/${n.path}`, dataset: { path: n.path } }, icon(n.icon), h('span', n.label)));
  const live = h('span.live', { title: 'Live updates', role: 'status' }, h('span.dot'), h('span.live-text', 'Live'));
  const setLive = (s) => {
    live.dataset.state = s;
    live.querySelector('.live-text').textContent = s === 'live' ? 'Live' : 'Reconnecting…';
  };
  liveState.listeners.clear();
  liveState.listeners.add(setLive);
  setLive('live');
  const themeBtn = h('button.icon-btn', { type: 'button', 'aria-label': 'Switch between light and dark', title: 'Light / dark' }, icon('moon'));
  const setThemeIcon = () => setChildren(themeBtn, icon(currentTheme() === 'dark' ? 'sun' : 'moon'));
  setThemeIcon();
  themeBtn.addEventListener('click', () => {
    localStorage.setItem(THEME_KEY, currentTheme() === 'dark' ? 'light' : 'dark');
    applyTheme();
    setThemeIcon();
    window.dispatchEvent(new Event('orchard-theme'));
  });
  const menuBtn = h('button.icon-btn.menu-btn', { type: 'button', 'aria-label': 'Menu', 'aria-expanded': 'false' }, icon('menu'));
  const logoutBtn = h('button.btn.btn-ghost', { type: 'button', id: 'logout' }, icon('logout'), h('span', 'Log out'));
  logoutBtn.addEventListener('click', async () => { await logout(); });
  const root = h('div.shell');
  const nav = h('nav.sidebar', { 'aria-label': 'Main' },
    h('a.brand', { href: '#/' }, h('img', { src: '/favicon.svg', alt: '', width: 28, height: 28 }), h('span', 'Orchard')),
    h('div.nav-links', navLinks),
    h('div.sidebar-foot', h('span.version', 'host console'),
      // The machine-readable API reference (served by the daemon, kept true by its tests).
      h('span.api-links', 'API: ',
        h('a', { href: '/api/openapi.yaml', target: '_blank', rel: 'noopener' }, 'REST'), ' · ',
        h('a', { href: '/api/asyncapi.yaml', target: '_blank', rel: 'noopener' }, 'WebSocket'))));
  const main = h('main.main', { id: 'main', tabindex: '-1' });
  const header = h('header.topbar',
    menuBtn,
    h('div.topbar-title', location.hostname),
    h('div.topbar-right', live, themeBtn,
      h('span.user', { title: u.account_type }, h('span.avatar', u.username.slice(0, 1).toUpperCase()), h('span.user-name', u.username)),
      logoutBtn));
  menuBtn.addEventListener('click', () => {
    const open = root.classList.toggle('nav-open');
    menuBtn.setAttribute('aria-expanded', String(open));
  });
  const scrim = h('div.scrim', { 'aria-hidden': 'true' });
  const closeNav = () => { root.classList.remove('nav-open'); menuBtn.setAttribute('aria-expanded', 'false'); };
  scrim.addEventListener('click', closeNav);
  nav.addEventListener('click', (e) => { if (e.target.closest('a')) closeNav(); });
  root.addEventListener('keydown', (e) => { if (e.key === 'Escape' && root.classList.contains('nav-open')) { closeNav(); menuBtn.focus(); } });
  root.append(scrim, h('a.skip', { href: '#main', onclick: (e) => { e.preventDefault(); main.focus(); } }, 'Skip to content'), nav, h('div.body', header, main));
  setChildren(app, root);
  app.classList.remove('boot');
  shell = { root, nav, main };
}

let pendingMessage = null;

session.on((what, message) => {
  if (what === 'ended') {
    pendingMessage = message || null;
    shell = null;
    ctx.machines?.close();
    ctx.machines = null;
    if (location.hash !== '#/login') location.hash = '#/login';
    else route();
  }
});

async function start() {
  try {
    if (!session.user) session.user = await api('GET', '/api/auth/me');
  } catch {
    session.end();
    return;
  }
  session.schedule();
  ctx.machines = new MachineStore(session.can('VIEW_ALL_VMS') ? 'global' : 'account');
  subscriptions.load().catch(() => toast('Could not load your starred machines.', 'error'));
  shell = null;
  const { path } = parseHash();
  if (!path || path === 'login') go(session.can('VIEW_ALL_VMS') ? '#/overview' : '#/machines');
  else route();
}

window.addEventListener('hashchange', route);

if (session.load()) start();
else route();
