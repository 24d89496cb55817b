// One machine: properties, live charts, disks, connections, access, console.

import { api, session } from '../api.js';
import { h, icon, setChildren, bytes, mib, pct, duration, meter, emptyState, toast, formDialog } from '../dom.js';
import { ctx, subscriptions } from '../store.js';
import { liveChart, fmtPct, fmtRate } from '../charts.js';
import { mountConsole } from '../console.js';
import { statusView, powerButtons, editMachine, deleteMachine, controls } from './common.js';

export function machinePage(main, uuid) {
  const store = ctx.machines;
  const head = h('div.page-head');
  const props = h('dl.props');
  const disks = h('div');
  const conns = h('div');
  const access = h('div');
  const charts = h('div.charts');
  const consoleBox = h('div.console-box');
  const body = h('div.machine-layout',
    h('section.card.span-2', { 'aria-labelledby': 'h-usage' }, h('div.row-between', h('h2.card-title#h-usage', 'Usage'), h('span.muted.small', 'last 5 minutes · live')), charts),
    h('section.card', { 'aria-labelledby': 'h-props' }, h('h2.card-title#h-props', 'Properties'), props),
    h('section.card', { 'aria-labelledby': 'h-disks' }, h('h2.card-title#h-disks', 'Disks'), disks),
    h('section.card', { 'aria-labelledby': 'h-conn' }, h('h2.card-title#h-conn', 'Console sessions'), conns),
    session.can('MANAGE_ALL_VMS') ? h('section.card', { 'aria-labelledby': 'h-access' }, h('h2.card-title#h-access', 'Access'), access) : null,
    h('section.card.span-2.console-card', { 'aria-labelledby': 'h-console', id: 'console' }, h('h2.card-title#h-console', 'Console'), consoleBox));
  main.append(h('a.back', { href: '#/machines' }, icon('back'), 'Machines'), head, body);

  let con = null;
  let lastStatus = null;
  let headKey = '';
  const cpu = liveChart(charts, { title: 'CPU', series: [{ label: 'CPU', color: '--c1' }], yMax: 100, fmt: fmtPct });
  const mem = liveChart(charts, { title: 'Memory', series: [{ label: 'Used', color: '--c2' }], yMax: 100, fmt: fmtPct });
  const net = liveChart(charts, { title: 'Network', series: [{ label: 'Receive', color: '--c3' }, { label: 'Send', color: '--c4' }], fmt: fmtRate });
  const dio = liveChart(charts, { title: 'Disk I/O', series: [{ label: 'Read', color: '--c5' }, { label: 'Write', color: '--c6' }], fmt: fmtRate });

  function renderHead() {
    const m = store.props.get(uuid);
    if (!m) return;
    const s = store.state.get(uuid);
    const op = store.ops.get(uuid);
    const key = `${m.title}|${s?.status}|${s?.loading}|${op?.kind}${op?.phase}${op?.error}|${subscriptions.set.has(uuid)}`;
    if (key === headKey) return;
    headKey = key;
    const star = h('button.btn', { type: 'button', 'aria-pressed': String(subscriptions.set.has(uuid)), id: 'star-machine' },
      icon('star', 'star-icon'), h('span', subscriptions.set.has(uuid) ? 'Starred' : 'Star'));
    star.addEventListener('click', () => subscriptions.toggle(uuid).catch((e) => toast(e.message, 'error')));
    const edit = h('button.btn', { type: 'button' }, icon('edit'), h('span', 'Edit'));
    edit.addEventListener('click', () => editMachine(m));
    const del = h('button.btn.btn-danger-ghost', { type: 'button' }, icon('trash'), h('span', 'Delete'));
    del.addEventListener('click', async () => { if (await deleteMachine(m)) location.hash = '#/machines'; });
    const f = head.contains(document.activeElement) ? document.activeElement : null;
    setChildren(head,
      h('div', h('h1.page-title', m.title), h('div.head-status', statusView(store, uuid))),
      h('div.page-actions', powerButtons(store, m), star, controls(m) ? [edit, del] : null));
    if (f) {
      // Keep the keyboard focus in the toolbar when its buttons change.
      const same = f.dataset.action ? head.querySelector(`[data-action="${f.dataset.action}"]`) : f.id ? head.querySelector(`#${f.id}`) : null;
      (same || head.querySelector('.power button') || star).focus();
    }
  }

  function renderProps() {
    const m = store.props.get(uuid);
    if (!m) return;
    const s = store.state.get(uuid) || {};
    const up = s.boot_timestamp && s.active ? duration((Date.now() - Date.parse(s.boot_timestamp)) / 1000) : '—';
    const row = (k, v) => [h('dt', k), h('dd', v)];
    setChildren(props,
      row('Kind', m.kind === 'container' ? 'Container' : 'Virtual machine'),
      row('Backend', m.backend),
      row('CPUs', `${m.vcpu} vCPU`),
      row('Memory', `${s.active ? `${mib(s.ram_used)} used of ` : ''}${mib(m.ram_max)}`),
      row('CPU load', s.active ? pct(s.cpu_percent) : '—'),
      row('Uptime', up),
      row('Owner', m.owner ? m.owner.username : '—'),
      row('Clients', Object.values(m.assigned_clients || {}).map((c) => c.username).join(', ') || '—'),
      row('Tags', (m.tags || []).length ? h('span.tags', m.tags.map((t) => h('span.tag', t))) : '—'),
      row('Description', m.description || '—'),
      row('UUID', h('code.uuid', m.uuid)));
  }

  function renderDisks() {
    const m = store.props.get(uuid);
    const live = store.disks.get(uuid);
    const list = live || (m && m.disks) || [];
    if (!list.length) { setChildren(disks, emptyState('No disks', null)); return; }
    setChildren(disks, h('table.table',
      h('thead', h('tr', h('th', 'Disk'), h('th', 'Type'), h('th', 'Size'), h('th', 'Occupied'))),
      h('tbody', list.map((d) => {
        const p = d.occupied_bytes !== undefined && d.size_bytes ? (100 * d.occupied_bytes) / d.size_bytes : null;
        return h('tr', h('td', d.name, d.system ? h('span.tag.tag-sys', 'system') : null), h('td', d.type), h('td.nowrap', bytes(d.size_bytes)),
          h('td.occ', p === null ? '—' : [meter(p, `${d.name} occupied`), h('span.small', `${bytes(d.occupied_bytes)} · ${p.toFixed(0)} %`)]));
      }))));
  }

  function renderConns() {
    const list = store.conns.get(uuid) || [];
    if (!list.length) { setChildren(conns, h('p.muted', 'No open console sessions.')); return; }
    setChildren(conns, h('ul.conn-list', list.map((c) => h('li', typeof c === 'string' ? c
      : [h('strong', c.username || c.user || 'session'), ' ', h('span.muted', [c.ip, c.since || c.opened_at].filter(Boolean).join(' · '))]))));
  }

  async function renderAccess() {
    if (!session.can('MANAGE_ALL_VMS')) return;
    const m = store.props.get(uuid);
    if (!m) return;
    let users = [];
    try { users = await api('GET', '/api/users'); } catch { /* without user management only the names show */ }
    const clients = Object.values(m.assigned_clients || {});
    const setOwner = h('button.btn.btn-sm', { type: 'button', id: 'set-owner' }, 'Change owner');
    setOwner.addEventListener('click', () => formDialog({
      title: `Owner of ${m.title}`,
      fields: [{ name: 'user', label: 'Owner', type: 'select', value: m.owner?.uuid, options: users.map((u) => ({ value: u.uuid, label: u.username })) }],
      onSubmit: (v) => api('PUT', `/api/machines/${uuid}/owner`, { user: v.user }),
    }));
    const assign = h('button.btn.btn-sm', { type: 'button', id: 'assign-client' }, icon('plus'), h('span', 'Assign user'));
    assign.addEventListener('click', () => formDialog({
      title: `Assign a user to ${m.title}`,
      intro: 'An assigned user sees and controls this machine.',
      fields: [{ name: 'user', label: 'User', type: 'select', options: users.filter((u) => !(u.uuid in (m.assigned_clients || {}))).map((u) => ({ value: u.uuid, label: u.username })) }],
      submit: 'Assign',
      onSubmit: (v) => api('PUT', `/api/machines/${uuid}/clients/${v.user}`),
    }));
    setChildren(access,
      h('p', 'Owner: ', h('strong', m.owner ? m.owner.username : '—'), ' ', users.length ? setOwner : null),
      h('ul.conn-list', clients.length ? clients.map((c) => {
        const rm = h('button.btn.btn-sm.btn-danger-ghost', { type: 'button', 'aria-label': `Remove ${c.username}` }, 'Remove');
        rm.addEventListener('click', () => api('DELETE', `/api/machines/${uuid}/clients/${c.uuid}`).catch((e) => toast(e.message, 'error')));
        return h('li.row-between', h('span', c.username), rm);
      }) : h('li.muted', 'No assigned users.')),
      users.length ? assign : null);
  }

  function renderCharts() {
    const hist = store.hist.get(uuid);
    if (!hist) return;
    cpu.set(hist.t, hist.cpu);
    mem.set(hist.t, hist.mem);
    net.set(hist.t, hist.rx, hist.tx);
    dio.set(hist.t, hist.rd, hist.wr);
  }

  function consoleState() {
    const m = store.props.get(uuid);
    const s = store.state.get(uuid);
    if (!m || !s) return;
    const running = s.status === 'running';
    if (!con) {
      con = mountConsole(consoleBox, { uuid, title: m.title, isRunning: () => store.state.get(uuid)?.status === 'running' });
    } else if (lastStatus !== s.status) {
      con.statusChanged(running);
    }
    lastStatus = s.status;
  }

  function all() {
    if (!store.props.get(uuid)) {
      if (store.loaded) setChildren(main, emptyState('Machine not found', 'It was deleted, or you cannot see it.', h('a.btn', { href: '#/machines' }, 'Back to machines')));
      return;
    }
    renderHead(); renderProps(); renderDisks(); renderConns(); renderCharts(); consoleState();
  }

  const off = store.on((m) => {
    if (m.type === 'DATA_DYNAMIC') { renderHead(); renderProps(); renderCharts(); consoleState(); }
    else if (m.type === 'DATA_DYNAMIC_DISKS') renderDisks();
    else if (m.type === 'DATA_DYNAMIC_CONNECTIONS') renderConns();
    else if (m.type === 'DATA_STATIC' || m.type === 'CREATE') { headKey = ''; all(); renderAccess(); }
    else if (m.type === 'DELETE' && m.body.uuid === uuid) { toast('This machine was deleted.', 'info'); location.hash = '#/machines'; }
    else renderHead();
  });
  const onSubs = () => { headKey = ''; renderHead(); };
  subscriptions.listeners.add(onSubs);
  all();
  renderAccess();
  if (location.hash.endsWith('/console')) requestAnimationFrame(() => con?.focus());

  return {
    cleanup() {
      off();
      subscriptions.listeners.delete(onSubs);
      con?.dispose();
      for (const c of [cpu, mem, net, dio]) c.dispose();
    },
  };
}
