// Backends (loaded plugins) and agent servers.

import { api, session } from '../api.js';
import { h, icon, setChildren, badge, when, emptyState, formDialog, confirmDialog, infoDialog, toast } from '../dom.js';
import { pageHeader } from './common.js';

export function backendsPage(main) {
  const box = h('section.card');
  main.append(pageHeader('Backends', 'Plugins that drive machines on this host'), box);
  api('GET', '/api/backends').then((list) => {
    if (!list.length) { setChildren(box, emptyState('No backends loaded', 'Put plugins in the plugin directory and restart.')); return; }
    setChildren(box, h('div.table-wrap', h('table.table',
      h('thead', h('tr', h('th', 'Name'), h('th', 'Status'), h('th', 'Version'), h('th', 'ABI'), h('th', 'Capabilities'), h('th', 'Last error'))),
      h('tbody', list.map((b) => h('tr', { 'data-backend': b.name }, h('td', h('strong', b.name)), h('td', badge(b.status)), h('td', b.version || '—'), h('td', String(b.abi_version ?? '—')),
        h('td', h('div.tags', (b.capabilities || []).map((c) => h('span.tag', c)))), h('td.small', b.last_error ? h('span.text-bad', b.last_error) : '—')))))));
  }).catch((e) => setChildren(box, emptyState('Could not load backends', e.message)));
  return null;
}

export function serversPage(main) {
  const box = h('section.card');
  const canAdd = session.can('MANAGE_SYSTEM_RESOURCES');
  const add = canAdd ? h('button.btn.btn-primary', { type: 'button', id: 'add-server' }, icon('plus'), h('span', 'Add server')) : null;
  main.append(pageHeader('Servers', 'Remote hosts reporting through orchard agent', add), box);
  const load = async () => {
    let list;
    try {
      list = await api('GET', '/api/v1/servers');
    } catch (e) {
      if (e.status === 404) {
        add?.setAttribute('disabled', '');
        setChildren(box, emptyState('Agent servers are not available', 'This daemon does not serve /api/v1/servers yet. The local host is on the Overview page.'));
        box.dataset.state = 'unavailable';
      } else setChildren(box, emptyState('Could not load servers', e.message));
      return;
    }
    if (!Array.isArray(list)) list = list.servers || [];
    if (!list.length) { setChildren(box, emptyState('No servers', canAdd ? 'Add a server to get an API key for its agent.' : null)); return; }
    setChildren(box, h('div.table-wrap', h('table.table',
      h('thead', h('tr', h('th', 'Name'), h('th', 'Status'), h('th', 'Server ID'), h('th', 'Last seen'), h('th', ''))),
      h('tbody', list.map((s) => {
        const del = canAdd && !s.local ? h('button.btn.btn-sm.btn-danger-ghost', { type: 'button', onclick: async () => {
          if (await confirmDialog(`Remove ${s.name || s.hostname}?`, 'Its API key stops working at once.', 'Remove')) {
            api('DELETE', `/api/v1/servers/${s.server_id}`).then(load).catch((e) => toast(e.message, 'error'));
          }
        } }, 'Remove') : null;
        return h('tr', h('td', h('strong', s.name || s.hostname || s.server_id)), h('td', badge(s.status || 'offline')), h('td.mono.small', s.server_id),
          h('td', when(s.last_seen)), h('td', del));
      })))));
  };
  add?.addEventListener('click', async () => {
    const r = await formDialog({
      title: 'Add server', submit: 'Add',
      fields: [{ name: 'name', label: 'Name', required: true, placeholder: 'rack-2-node-4' }],
      onSubmit: (v) => api('POST', '/api/v1/servers', { name: v.name.trim() }),
    });
    if (r && r.api_key) {
      const key = h('code.secret', { id: 'api-key' }, r.api_key);
      const copy = h('button.btn.btn-sm', { type: 'button' }, icon('copy'), h('span', 'Copy'));
      copy.addEventListener('click', () => navigator.clipboard?.writeText(r.api_key).then(() => toast('API key copied.', 'ok')));
      infoDialog('API key for the new server',
        h('p', 'This key is shown only once. Store it in the agent\'s key file:'), h('div.secret-row', key, copy),
        h('pre.snippet', `orchard agent --server ${location.origin} --api-key-file /etc/orchard/agent.key`),
        h('p.small.muted', `Server ID ${r.server_id}`));
      load();
    }
  });
  load();
  return null;
}
