// The machines grid: live from the session's machines stream, or from
// /ws/machines/subscribed in the "Starred" view.

import { h, icon, setChildren, sparkline, drawSpark, pct, mib, emptyState, toast } from '../dom.js';
import { ctx, MachineStore, subscriptions } from '../store.js';
import { statusView, powerButtons, canManage, controls, createMachine, editMachine, deleteMachine, pageHeader } from './common.js';

const VIEW_KEY = 'orchard.machines.view';

export function machinesPage(main) {
  let view = sessionStorage.getItem(VIEW_KEY) || 'all';
  let store = null;
  let ownStore = null;
  let off = null;
  let filter = '';

  const tabs = h('div.tabs', { role: 'tablist', 'aria-label': 'Which machines' });
  const search = h('input.search', { type: 'search', placeholder: 'Filter by name or tag', 'aria-label': 'Filter machines' });
  const newBtn = canManage() ? h('button.btn.btn-primary', { type: 'button', id: 'new-machine' }, icon('plus'), h('span', 'New machine')) : null;
  newBtn?.addEventListener('click', async () => {
    const m = await createMachine();
    if (m && m.uuid) { toast(`${m.title} created.`, 'ok'); }
  });
  const grid = h('div.machine-grid', { id: 'machine-grid', 'aria-live': 'off' });
  const summary = h('span.page-sub');
  main.append(
    pageHeader('Machines', null, newBtn),
    h('div.toolbar', tabs, search, summary),
    grid);
  search.addEventListener('input', () => { filter = search.value.trim().toLowerCase(); render(); });

  function setTabs() {
    setChildren(tabs,
      ['all', 'subscribed'].map((v) => {
        const b = h('button.tab', { type: 'button', role: 'tab', id: `tab-${v}`, 'aria-selected': String(view === v) },
          v === 'all' ? 'All machines' : [icon('star', 'star-icon'), h('span', 'Starred')]);
        b.tabIndex = view === v ? 0 : -1;
        b.addEventListener('click', () => { if (view !== v) { view = v; sessionStorage.setItem(VIEW_KEY, v); attach(); tabs.querySelector(`#tab-${v}`)?.focus(); } });
        b.addEventListener('keydown', (e) => {
          if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') { e.preventDefault(); tabs.querySelector(`#tab-${v === 'all' ? 'subscribed' : 'all'}`).click(); }
        });
        return b;
      }));
  }

  function attach() {
    off?.();
    ownStore?.close();
    ownStore = null;
    if (view === 'subscribed') {
      ownStore = new MachineStore('subscribed');
      store = ownStore;
    } else {
      store = ctx.machines;
    }
    setTabs();
    off = store.on((m) => {
      // Only a change of the set of machines or their properties rebuilds the cards.
      if (m.type === 'DATA_STATIC' || m.type === 'CREATE' || m.type === 'DELETE' || m.type === 'FORBIDDEN') render(); else update();
    });
    render();
  }

  const cards = new Map();

  function visible() {
    return store.list().filter((m) => !filter
      || m.title.toLowerCase().includes(filter)
      || (m.tags || []).some((t) => t.toLowerCase().includes(filter)));
  }

  function render() {
    cards.clear();
    const list = visible();
    const running = list.filter((m) => store.state.get(m.uuid)?.status === 'running').length;
    summary.textContent = store.loaded ? `${list.length} machine${list.length === 1 ? '' : 's'} · ${running} running` : '';
    if (store.forbidden) { setChildren(grid, emptyState('No access', 'Your permissions changed; sign in again to see machines.')); return; }
    if (!store.loaded) { setChildren(grid, h('div.loading', h('span.spinner'), 'Connecting to the machines stream…')); return; }
    if (!list.length) {
      setChildren(grid, view === 'subscribed'
        ? emptyState('No starred machines', 'Star a machine in "All machines" to follow it here.')
        : filter ? emptyState('No match', `No machine matches “${filter}”.`)
          : emptyState('No machines yet', canManage() ? 'Create the first one.' : 'No machine is shared with you yet. Ask an administrator.'));
      return;
    }
    // Rebuilding keeps the keyboard focus on the same control of the same machine.
    const f = document.activeElement;
    const fCard = f && grid.contains(f) ? f.closest('.machine-card') : null;
    const fSel = !fCard ? null : f.dataset.action ? `[data-action="${f.dataset.action}"]`
      : f.classList.contains('star') ? 'button.star' : f.getAttribute('aria-label') ? `[aria-label="${f.getAttribute('aria-label')}"]` : 'a.machine-link';
    setChildren(grid, list.map((m) => card(m)));
    if (fCard) {
      const again = cards.get(fCard.dataset.uuid)?.el;
      if (again) (again.querySelector(fSel) || again.querySelector('.card-power button') || again.querySelector('a.machine-link')).focus();
    }
  }

  function card(m) {
    const star = h('button.star', { type: 'button', 'aria-pressed': String(subscriptions.set.has(m.uuid)), 'aria-label': `Star ${m.title}`, title: 'Star: follow in the Starred view' }, icon('star'));
    star.addEventListener('click', async () => {
      try {
        await subscriptions.toggle(m.uuid);
        star.setAttribute('aria-pressed', String(subscriptions.set.has(m.uuid)));
      } catch (e) { toast(`Star ${m.title}: ${e.message}`, 'error'); }
    });
    const cpuSpark = sparkline([], { cls: 'spark-cpu', label: `CPU of ${m.title}` });
    const memSpark = sparkline([], { cls: 'spark-mem', label: `Memory of ${m.title}` });
    const cpuVal = h('span.metric-value');
    const memVal = h('span.metric-value');
    const status = h('div.card-status');
    const power = h('div.card-power');
    const tools = h('div.card-tools');
    if (controls(m)) {
      const edit = h('button.icon-btn', { type: 'button', 'aria-label': `Edit ${m.title}`, title: 'Edit' }, icon('edit'));
      edit.addEventListener('click', () => editMachine(m));
      const del = h('button.icon-btn', { type: 'button', 'aria-label': `Delete ${m.title}`, title: 'Delete' }, icon('trash'));
      del.addEventListener('click', () => deleteMachine(m));
      tools.append(edit, del);
    }
    const el = h('article.machine-card', { 'data-uuid': m.uuid, 'data-title': m.title },
      h('header.card-head', star,
        h('div.card-title', h('a.machine-link', { href: `#/machine/${m.uuid}` }, m.title),
          h('span.card-meta', { title: `backend ${m.backend}` }, `${m.kind === 'container' ? 'Container' : 'VM'} · ${m.vcpu} vCPU · ${mib(m.ram_max)}`)),
        tools),
      status,
      m.description ? h('p.card-desc', m.description) : null,
      (m.tags || []).length ? h('div.tags', m.tags.map((t) => h('span.tag', t))) : null,
      h('div.metrics',
        h('div.metric', h('span.metric-label', 'CPU'), cpuVal, cpuSpark),
        h('div.metric', h('span.metric-label', 'Memory'), memVal, memSpark)),
      power);
    const entry = { m, el, cpuSpark, memSpark, cpuVal, memVal, status, power, key: '' };
    cards.set(m.uuid, entry);
    fill(entry);
    return el;
  }

  function fill(c) {
    const s = store.state.get(c.m.uuid);
    // The starred view's own socket starts with no history; the session's stream has it.
    const hist = (store !== ctx.machines && ctx.machines?.hist.get(c.m.uuid)) || store.hist.get(c.m.uuid);
    const op = store.ops.get(c.m.uuid);
    c.cpuVal.textContent = s && s.active ? pct(s.cpu_percent) : '—';
    c.memVal.textContent = s && s.active ? mib(s.ram_used) : '—';
    if (hist) { drawSpark(c.cpuSpark, hist.cpu); drawSpark(c.memSpark, hist.mem); }
    const key = `${s ? s.status : ''}|${s && s.loading}|${op ? `${op.kind}${op.phase}${op.error}` : ''}`;
    if (key !== c.key) {
      c.key = key;
      c.el.dataset.status = s ? s.status : 'unknown';
      const hadFocus = c.power.contains(document.activeElement);
      setChildren(c.status, statusView(store, c.m.uuid));
      setChildren(c.power, powerButtons(store, c.m));
      // Keyboard users keep their place when Start turns into Stop.
      if (hadFocus) (c.power.querySelector('button') || c.el.querySelector('a.machine-link')).focus();
    }
  }

  function update() {
    if (cards.size !== visible().length) { render(); return; }
    for (const c of cards.values()) fill(c);
    const list = visible();
    const running = list.filter((m) => store.state.get(m.uuid)?.status === 'running').length;
    summary.textContent = `${list.length} machine${list.length === 1 ? '' : 's'} · ${running} running`;
  }

  const offSubs = subscriptions.listeners.add(render) && (() => subscriptions.listeners.delete(render));
  attach();
  return {
    cleanup() { off?.(); ownStore?.close(); offSubs(); },
  };
}
