// Pieces shared by the machine pages: power actions, progress, the edit and create dialogs.

import { api, session } from '../api.js';
import { h, icon, badge, toast, formDialog, confirmDialog } from '../dom.js';

export const ACTIONS = {
  start: { label: 'Start', icon: 'play' },
  stop: { label: 'Stop', icon: 'stop' },
  restart: { label: 'Restart', icon: 'restart' },
  suspend: { label: 'Suspend', icon: 'pause' },
  resume: { label: 'Resume', icon: 'play' },
};

export function actionsFor(status) {
  switch (status) {
    case 'stopped': case 'error': return ['start'];
    case 'running': return ['stop', 'restart', 'suspend'];
    case 'paused': case 'suspended': return ['resume', 'stop'];
    default: return [];
  }
}

export async function power(m, action) {
  try {
    await api('POST', `/api/machines/${m.uuid}/${action}`);
  } catch (e) {
    toast(`${ACTIONS[action].label} ${m.title}: ${e.message}`, 'error');
  }
}

/** Status badge plus the progress of a power operation or its failure. */
export function statusView(store, uuid) {
  const s = store.state.get(uuid);
  const op = store.ops.get(uuid);
  const status = s ? s.status : 'unknown';
  const wrap = h('div.status-line');
  if (op && op.phase === 'start') {
    wrap.append(badge(op.kind === 'boot' ? 'booting' : 'shutting_down', op.kind === 'boot' ? 'starting' : 'stopping'), h('span.spinner', { 'aria-hidden': 'true' }));
  } else {
    wrap.append(badge(status));
  }
  if (op && op.phase === 'fail') {
    wrap.append(h('p.op-error', { role: 'alert' }, `${op.kind === 'boot' ? 'Start' : 'Stop'} failed: ${op.error || 'unknown error'}`));
  }
  return wrap;
}

export function powerButtons(store, m, { compact = false } = {}) {
  if (!controls(m)) return h('div.power', h('span.muted.small', 'view only'));
  const s = store.state.get(m.uuid);
  const op = store.ops.get(m.uuid);
  const busy = !s || (op && op.phase === 'start') || s.loading;
  const list = busy ? [] : actionsFor(s.status);
  const box = h('div.power');
  for (const a of list) {
    const b = h(`button.btn.btn-sm${a === 'start' || a === 'resume' ? '.btn-primary' : ''}`, {
      type: 'button', 'data-action': a, title: `${ACTIONS[a].label} ${m.title}`,
      'aria-label': `${ACTIONS[a].label} ${m.title}`,
    }, icon(ACTIONS[a].icon), compact ? null : h('span', ACTIONS[a].label));
    b.addEventListener('click', async (ev) => {
      ev.stopPropagation();
      // aria-disabled, not disabled: a disabled button would drop the keyboard focus.
      if (b.getAttribute('aria-disabled') === 'true') return;
      b.setAttribute('aria-disabled', 'true');
      await power(m, a);
      b.removeAttribute('aria-disabled');
    });
    box.append(b);
  }
  if (busy && s) box.append(h('span.muted.small', 'working…'));
  return box;
}

export function canManage() { return session.can('MANAGE_ALL_VMS'); }

/** Contract 2: a user controls a machine they own or are assigned to, or with MANAGE_ALL_VMS. */
export function controls(m) {
  const me = session.user && session.user.uuid;
  return canManage() || (m.owner && m.owner.uuid === me) || !!(m.assigned_clients && me in m.assigned_clients);
}

export async function editMachine(m) {
  await formDialog({
    title: `Edit ${m.title}`,
    fields: [
      { name: 'title', label: 'Name', value: m.title, required: true },
      { name: 'description', label: 'Description', type: 'textarea', value: m.description },
      { name: 'tags', label: 'Tags', value: (m.tags || []).join(', '), help: 'Comma-separated' },
    ],
    onSubmit: (v) => api('PATCH', `/api/machines/${m.uuid}`, {
      title: v.title.trim(), description: v.description, tags: splitTags(v.tags),
    }),
  });
}

export async function deleteMachine(m) {
  if (!(await confirmDialog(`Delete ${m.title}?`, 'The machine and its disks are removed from the backend. This cannot be undone.'))) return false;
  try {
    await api('DELETE', `/api/machines/${m.uuid}`);
    toast(`${m.title} deleted.`, 'ok');
    return true;
  } catch (e) {
    toast(`Delete ${m.title}: ${e.message}`, 'error');
    return false;
  }
}

export async function createMachine() {
  let backends = [];
  try { backends = (await api('GET', '/api/backends')).filter((b) => b.status === 'loaded'); } catch { /* default backend */ }
  const fields = [
    { name: 'title', label: 'Name', required: true, placeholder: 'web-01' },
    { name: 'vcpu', label: 'Virtual CPUs', type: 'number', value: 2, min: 1, max: 128 },
    { name: 'ram_mib', label: 'Memory (MiB)', type: 'number', value: 2048, min: 64 },
    { name: 'description', label: 'Description', type: 'textarea' },
    { name: 'tags', label: 'Tags', help: 'Comma-separated' },
  ];
  if (backends.length > 1) {
    fields.splice(1, 0, { name: 'backend', label: 'Backend', type: 'select', options: backends.map((b) => ({ value: b.name, label: b.name })) });
  }
  return formDialog({
    title: 'New machine',
    fields,
    submit: 'Create',
    onSubmit: (v) => api('POST', '/api/machines', {
      title: v.title.trim(), vcpu: v.vcpu, ram_mib: v.ram_mib, description: v.description || undefined,
      tags: splitTags(v.tags), backend: v.backend || undefined,
    }),
  });
}

export function splitTags(s) {
  return (s || '').split(',').map((t) => t.trim()).filter(Boolean);
}

export function pageHeader(title, subtitle, ...actions) {
  return h('div.page-head', h('div', h('h1.page-title', title), subtitle ? h('p.page-sub', subtitle) : null), h('div.page-actions', actions));
}
