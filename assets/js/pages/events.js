// Alerts (history + live system_alerts) and user activity (audit + live user_activity).

import { api } from '../api.js';
import { h, setChildren, badge, when, fullTime, emptyState } from '../dom.js';
import { channelSocket } from './overview.js';
import { pageHeader } from './common.js';
import { ctx } from '../store.js';

/** A machine uuid as its title, when this session sees the machine. */
function target(t) {
  const m = t && ctx.machines && ctx.machines.props.get(t);
  return m ? h('a', { href: `#/machine/${m.uuid}`, title: t }, m.title) : (t || '—');
}

export function alertsPage(main) {
  const active = h('div');
  const history = h('div');
  main.append(pageHeader('Alerts', 'Threshold rules on host metrics and machine boots'),
    h('section.card', { 'aria-labelledby': 'h-act' }, h('h2.card-title#h-act', 'Raised now'), active),
    h('section.card', { 'aria-labelledby': 'h-hist' }, h('h2.card-title#h-hist', 'History'), history));
  const now = new Map();
  let hist = [];
  const row = (a) => h('tr', h('td', badge(a.severity)), h('td', h('strong', a.title), h('div.small.muted', a.message)),
    h('td', a.machine_uuid && ctx.machines?.props.get(a.machine_uuid) ? target(a.machine_uuid) : (a.hostname || a.host_id || '—')), h('td', badge(a.state)), h('td', { title: fullTime(a.timestamp) }, when(a.timestamp)));
  const table = (rows) => h('div.table-wrap', h('table.table', h('thead', h('tr', h('th', 'Severity'), h('th', 'Alert'), h('th', 'Where'), h('th', 'State'), h('th', 'When'))), h('tbody', rows)));
  function render() {
    setChildren(active, now.size ? table([...now.values()].map(row)) : emptyState('All clear', 'No alert is raised right now.'));
    setChildren(history, hist.length ? table(hist.slice(0, 200).map(row)) : emptyState('No alerts yet', 'Raised and cleared alerts are listed here.'));
  }
  api('GET', '/api/alerts').then((r) => {
    for (const a of r.active || []) now.set(a.alert_id, a);
    hist = r.history || [];
    render();
  }).catch((e) => setChildren(history, emptyState('Could not load alerts', e.message)));
  const sock = channelSocket([['system_alerts']], (ch, d) => {
    if (d.state === 'cleared') now.delete(d.alert_id); else now.set(d.alert_id, d);
    hist = [d, ...hist];
    render();
  });
  render();
  return { cleanup() { sock.close(); } };
}

const ACTION_LABEL = {
  login: 'signed in', logout: 'signed out', login_failed: 'failed to sign in',
};

export function activityPage(main) {
  const box = h('div');
  main.append(pageHeader('Activity', 'Sign-ins, account changes, machine operations and consoles'),
    h('section.card', box));
  let entries = [];
  function render() {
    if (!entries.length) { setChildren(box, emptyState('No activity yet', null)); return; }
    setChildren(box, h('div.table-wrap', h('table.table', h('thead', h('tr', h('th', 'When'), h('th', 'Who'), h('th', 'What'), h('th', 'Target'), h('th', 'From'))),
      h('tbody', entries.slice(0, 300).map((e) => h('tr', h('td.nowrap', { title: fullTime(e.timestamp) }, when(e.timestamp)), h('td', h('strong', e.actor || e.username || '—')),
        h('td', h('code', ACTION_LABEL[e.action] || e.action), e.detail ? h('div.small.muted', e.detail) : null), h('td.mono.small', target(e.target)), h('td.small', e.ip || e.ip_address || '—')))))));
  }
  api('GET', '/api/activity').then((r) => { entries = r; render(); })
    .catch((e) => setChildren(box, emptyState('Could not load activity', e.message)));
  const sock = channelSocket([['user_activity']], (ch, d) => {
    entries = [{ timestamp: d.timestamp, actor: d.username, action: d.action, target: d.target, ip: d.ip_address, detail: d.detail }, ...entries];
    render();
  });
  return { cleanup() { sock.close(); } };
}
