// Clusters: REST list, live updates from /ws/clusters (api-docs/D).

import { api, session, LiveSocket } from '../api.js';
import { h, icon, setChildren, badge, when, emptyState, formDialog, confirmDialog, toast } from '../dom.js';
import { ctx } from '../store.js';
import { pageHeader } from './common.js';

export function clustersPage(main) {
  const box = h('div.cluster-grid');
  const canEdit = session.can('MANAGE_ALL_VMS');
  const add = canEdit ? h('button.btn.btn-primary', { type: 'button' }, icon('plus'), h('span', 'New cluster')) : null;
  main.append(pageHeader('Clusters', 'Named groups of machines; the phase follows the members', add), box);
  let list = [];
  const machineOptions = () => (ctx.machines ? ctx.machines.list() : []).map((m) => ({ value: m.uuid, label: m.title }));
  const edit = (c) => formDialog({
    title: c ? `Edit ${c.name}` : 'New cluster',
    fields: [
      ...(c ? [] : [{ name: 'name', label: 'Name', required: true, placeholder: 'web-tier', help: 'Lower-case letters, digits and dashes' }]),
      { name: 'machines', label: 'Members', type: 'checks', value: c ? c.machines : [], options: machineOptions() },
      { name: 'addons', label: 'Add-ons', value: c ? (c.addons || []).join(', ') : '', help: 'Comma-separated' },
    ],
    submit: c ? 'Save' : 'Create',
    onSubmit: (v) => {
      const addons = (v.addons || '').split(',').map((s) => s.trim()).filter(Boolean);
      return c ? api('PATCH', `/api/clusters/${c.name}`, { machines: v.machines, addons })
        : api('POST', '/api/clusters', { name: v.name.trim(), machines: v.machines, addons });
    },
  }).then(load);
  add?.addEventListener('click', () => edit(null));

  function render() {
    if (!list.length) { setChildren(box, emptyState('No clusters', canEdit ? 'Group machines into a cluster to watch them together.' : null)); return; }
    setChildren(box, list.map((c) => {
      const tools = canEdit ? h('div.card-tools',
        h('button.icon-btn', { type: 'button', 'aria-label': `Edit ${c.name}`, onclick: () => edit(c) }, icon('edit')),
        h('button.icon-btn', { type: 'button', 'aria-label': `Delete ${c.name}`, onclick: async () => {
          if (await confirmDialog(`Delete cluster ${c.name}?`, 'The machines stay; only the group is removed.')) {
            api('DELETE', `/api/clusters/${c.name}`).then(load).catch((e) => toast(e.message, 'error'));
          }
        } }, icon('trash'))) : null;
      return h('article.card.cluster', { 'data-cluster': c.name },
        h('header.row-between', h('div', h('h2.card-title', c.name), badge(c.phase)), tools),
        h('ul.node-list', (c.nodes || []).length ? c.nodes.map((n) => h('li.row-between', h('a', { href: `#/machine/${n.uuid}` }, n.title), badge(n.status))) : h('li.muted', 'No members')),
        (c.addons || []).length ? h('div.tags', c.addons.map((a) => h('span.tag', a))) : null,
        h('p.small.muted', `updated ${when(c.updated_at)}`));
    }));
  }
  async function load() {
    try { list = await api('GET', '/api/clusters'); render(); } catch (e) { setChildren(box, emptyState('Could not load clusters', e.message)); }
  }
  let pending = null;
  const sock = new LiveSocket('/ws/clusters', {
    onopen: load,
    onmessage: () => { clearTimeout(pending); pending = setTimeout(load, 200); },
  });
  load();
  return { cleanup() { sock.close(); clearTimeout(pending); } };
}
